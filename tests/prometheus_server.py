"""Real Prometheus, Pushgateway and metrics endpoints for tests, on free loopback ports.

    with PrometheusServer(tmp_path, targets=["127.0.0.1:8000"]) as prom:
        prom.wait_for_targets_up()
        wait_for(lambda: prom.firing("TabularWorkerNotReady"), timeout=15)

Binaries come from the Debian packages `prometheus` and `prometheus-pushgateway` (the Makefile's
`apt-deps` target installs them); a missing binary raises `ToolMissing`, never a skip.
The fixtures `prometheus_factory`, `pushgateway` and `metrics_endpoint_factory` in
`tests/conftest.py` wrap these classes and stop everything at teardown.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REPO = Path(__file__).resolve().parent.parent
ALERTS_YML = REPO / "infra" / "prometheus" / "alerts.yml"
WORKER_JOB = "tabular-worker"
SYNC_JOB = "tabular-sync"
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class ToolMissing(RuntimeError):
    """A binary the observability tests need is not installed."""


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(
            f"{name!r} is not on PATH: install the Debian packages prometheus and "
            "prometheus-pushgateway (`make apt-deps`)"
        )
    return path


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 15.0,
    interval: float = 0.1,
    message: str = "",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Exceptions raised by the predicate count as "not yet"; the last one (or the last falsy
    value) is named in the `TimeoutError` raised after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"not true within {timeout} s: {message or predicate!r}; last: {last!r}"
            )
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def http_post(url: str, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


class _Process:
    """A server binary on a free loopback port, its output in `log_path`."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port, as a scrape target or push_to_gateway's `gateway`."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Self:
        """Start on a free port and wait for /-/ready; retried if the port was taken meanwhile."""
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                process = subprocess.Popen(
                    self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
                )
            self._process = process
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    http_get(f"{self.url}/-/ready", timeout=1.0)
                    return self
                except OSError:
                    time.sleep(0.1)
            self.stop()
            if "address already in use" not in self.log_tail().lower():
                break
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class ScrapeJob:
    """One `scrape_configs` entry with static targets (host:port)."""

    name: str
    targets: Sequence[str]
    honor_labels: bool = False
    metrics_path: str = "/metrics"

    def config(self) -> dict[str, Any]:
        return {
            "job_name": self.name,
            "honor_labels": self.honor_labels,
            "metrics_path": self.metrics_path,
            "static_configs": [{"targets": list(self.targets)}],
        }


class PrometheusServer(_Process):
    """A real `prometheus` with a generated config: 1 s scrape and rule evaluation intervals.

    `targets` are scraped as job="tabular-worker"; `jobs` adds more scrape jobs (e.g.
    `pushgateway.scrape_job()`). `rule_files` defaults to infra/prometheus/alerts.yml.
    """

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        jobs: Sequence[ScrapeJob] = (),
        rule_files: Sequence[Path] = (ALERTS_YML,),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> None:
        super().__init__(workdir)
        self.binary = require_binary("prometheus")
        self.jobs = ([ScrapeJob(WORKER_JOB, targets)] if targets else []) + list(jobs)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [job.config() for job in self.jobs],
        }

    def _command(self) -> list[str]:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]

    # --- HTTP API ------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its `data`; raises on an API error."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusAPIError(
                f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the result list ({"metric": {...}, "value": [t, "v"]} each)."""
        params = {"query": expr} | ({"time": str(at)} if at is not None else {})
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_values(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """Instant query as {frozenset(labels.items()): value}."""
        return {
            frozenset(row["metric"].items()): float(row["value"][1]) for row in self.query(expr)
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing): labels, annotations, state, activeAt, value."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def wait_for_targets_up(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until every configured target has been scraped successfully."""
        expected = sum(len(job.targets) for job in self.jobs)

        def all_up() -> list[dict[str, Any]] | None:
            targets = self.targets()
            up = [t for t in targets if t["health"] == "up"]
            return targets if len(up) == expected == len(targets) else None

        return wait_for(all_up, timeout=timeout, message="all targets up")

    def reload(self) -> None:
        """Re-read the config file and rule files (POST /-/reload)."""
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        http_post(f"{self.url}/-/reload")


class PrometheusAPIError(RuntimeError):
    pass


class Pushgateway(_Process):
    """A real `prometheus-pushgateway` without persistence, admin API enabled."""

    name = "pushgateway"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = require_binary("prometheus-pushgateway")

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--web.listen-address={self.address}",
            "--web.enable-admin-api",
            "--log.level=warn",
        ]

    def metrics_text(self) -> str:
        """The Pushgateway's own /metrics: every pushed group plus push_time_seconds."""
        return http_get(f"{self.url}/metrics").decode()

    def samples(self, name: str | None = None) -> list[Sample]:
        """Parsed samples of /metrics, optionally only those named `name`."""
        found: list[Sample] = []
        for family in text_string_to_metric_families(self.metrics_text()):
            found.extend(s for s in family.samples if name is None or s.name == name)
        return found

    def wipe(self) -> None:
        """Delete every pushed group (PUT /api/v1/admin/wipe)."""
        request = urllib.request.Request(f"{self.url}/api/v1/admin/wipe", method="PUT")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    def scrape_job(self, name: str = "pushgateway") -> ScrapeJob:
        """How Prometheus scrapes it: honor_labels keeps the pushed job="tabular-sync"."""
        return ScrapeJob(name, [self.address], honor_labels=True)


class MetricsEndpoint:
    """prometheus_client's HTTP server for one registry on a free loopback port."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server, self._thread = start_http_server(0, addr=LOOPBACK, registry=registry)
        self.port = int(self._server.server_port)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def rules_without_for(dst: Path, src: Path = ALERTS_YML, keep: Iterable[str] = ()) -> Path:
    """Write a copy of a rule file whose alerts fire at once (`for` removed), except `keep`."""
    doc = yaml.safe_load(src.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and rule["alert"] not in set(keep):
                rule.pop("for", None)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst
