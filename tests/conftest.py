"""Shared pytest configuration: the Pub/Sub harness lives in tests/pubsub_fixture.py."""

pytest_plugins = ["tests.pubsub_fixture"]
