"""Send one job through Pub/Sub to a running worker and wait for its result.

Used by docker/image-test.sh against the Pub/Sub emulator (PUBSUB_EMULATOR_HOST). Creates the
topics and subscriptions it needs when they are missing, publishes an `embed` job with a fresh
job_id, and exits 0 when a result with that job_id and status "ok" arrives within --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

from google.api_core import exceptions
from google.cloud import pubsub_v1


def _ensure(
    publisher: Any, subscriber: Any, project: str, topic: str, sub: str | None
) -> tuple[str, str | None]:
    topic_path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(request={"name": topic_path})
    except exceptions.AlreadyExists:
        pass
    if sub is None:
        return topic_path, None
    sub_path = subscriber.subscription_path(project, sub)
    try:
        subscriber.create_subscription(request={"name": sub_path, "topic": topic_path})
    except exceptions.AlreadyExists:
        pass
    return topic_path, sub_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("job_check: PUBSUB_EMULATOR_HOST is not set", file=sys.stderr)
        return 2
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "tabular-image-test"
    jobs_topic = os.environ.get("TABULAR_JOBS_TOPIC", "tabular-jobs")
    jobs_sub = os.environ.get("TABULAR_JOBS_SUBSCRIPTION", "tabular-jobs-sub")
    results_topic = os.environ.get("TABULAR_RESULTS_TOPIC", "tabular-results")

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    jobs_path, _ = _ensure(publisher, subscriber, project, jobs_topic, jobs_sub)
    _, results_sub = _ensure(
        publisher, subscriber, project, results_topic, f"{results_topic}-image-test"
    )
    assert results_sub is not None

    job_id = f"image-test-{uuid.uuid4().hex[:12]}"
    job = {
        "job_id": job_id,
        "type": "embed",
        "table": {"columns": ["name", "city"], "rows": [["Ada Lovelace", "London"]]},
    }
    publisher.publish(jobs_path, json.dumps(job).encode(), job_id=job_id).result(timeout=30)
    print(f"job_check: published {job_id} to {jobs_path}", file=sys.stderr)

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": results_sub, "max_messages": 10}, timeout=10
        )
        acks = [m.ack_id for m in response.received_messages]
        found: dict[str, Any] | None = None
        for received in response.received_messages:
            try:
                result = json.loads(received.message.data)
            except ValueError:
                continue
            if isinstance(result, dict) and result.get("job_id") == job_id:
                found = result
        if acks:
            subscriber.acknowledge(request={"subscription": results_sub, "ack_ids": acks})
        if found is not None:
            if found.get("status") != "ok":
                print(f"job_check: job failed: {found.get('error')}", file=sys.stderr)
                return 1
            print(f"job_check: result for {job_id}: status ok", file=sys.stderr)
            return 0
    print(f"job_check: no result for {job_id} within {args.timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
