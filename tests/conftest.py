"""Shared fixtures. Observability helpers: see tests/prometheus_server.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.prometheus_server import MetricsEndpoint, PrometheusServer, Pushgateway


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """`prometheus_factory(targets, **kwargs)` starts a real Prometheus (stopped at teardown).

    Keyword arguments are PrometheusServer's: jobs, rule_files, scrape_interval, ...
    """
    servers: list[PrometheusServer] = []

    def start(targets: list[str] | tuple[str, ...] = (), **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", targets, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    """A real Pushgateway on a free loopback port."""
    with Pushgateway(tmp_path / "pushgateway") as gateway:
        yield gateway


@pytest.fixture
def metrics_endpoint_factory() -> Iterator[Callable[[CollectorRegistry], MetricsEndpoint]]:
    """`metrics_endpoint_factory(registry)` serves a registry on /metrics (a fake worker)."""
    endpoints: list[MetricsEndpoint] = []

    def start(registry: CollectorRegistry) -> MetricsEndpoint:
        endpoint = MetricsEndpoint(registry)
        endpoints.append(endpoint)
        return endpoint

    yield start
    for endpoint in endpoints:
        endpoint.stop()
