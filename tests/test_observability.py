"""Alert rules, dashboard, docs and metric definitions agree with each other and with the code.

Static checks first; then tests against a real Prometheus and Pushgateway (tests/
prometheus_server.py) fed by prometheus_client in this process.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    push_to_gateway,
)
from prometheus_client.metrics import Counter, Gauge, Histogram, Info, MetricWrapperBase

from sync.metrics import PUSH_JOB, SyncMetrics
from tests.prometheus_server import (
    ALERTS_YML,
    REPO,
    SYNC_JOB,
    WORKER_JOB,
    MetricsEndpoint,
    PrometheusServer,
    Pushgateway,
    ScrapeJob,
    require_binary,
    rules_without_for,
    wait_for,
)
from tests.promql import metric_names
from worker.metrics import WorkerMetrics

ALERTS_TEST_YML = REPO / "infra" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "infra" / "grafana" / "tabular-service.json"
DOCS = REPO / "docs" / "observability.md"
# Series that Prometheus itself provides (not exported by our code) and may be queried.
PROMETHEUS_SERIES = frozenset({"ALERTS"})
# Google Cloud metrics of the jobs subscription, as GMP / Cloud Monitoring PromQL names them
# (docs/observability.md, "Backlog and scaling"); the autoscaler scales on the first.
GOOGLE_CLOUD_SERIES = frozenset(
    {
        "pubsub_googleapis_com:subscription_num_undelivered_messages",
        "pubsub_googleapis_com:subscription_oldest_unacked_message_age",
    }
)


# --- helpers -------------------------------------------------------------------------------


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "record" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return [p for p in panels if p.get("type") != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def metric_objects(metrics: object) -> list[MetricWrapperBase]:
    return [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]


def exposed_name(metric: MetricWrapperBase) -> str:
    """The name a metric is documented and queried by (counters with _total, info with _info)."""
    (family,) = metric.describe()
    return {"counter": f"{family.name}_total", "info": f"{family.name}_info"}.get(
        family.type, family.name
    )


SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry can expose, including label sets not used yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(s.name for s in family.samples)
        names.update(family.name + sfx for sfx in SAMPLE_SUFFIXES.get(family.type, ("",)))
    return names


def worker_registry() -> tuple[CollectorRegistry, WorkerMetrics]:
    registry = CollectorRegistry()
    return registry, WorkerMetrics(registry)


def sync_registry() -> tuple[CollectorRegistry, SyncMetrics]:
    registry = CollectorRegistry()
    return registry, SyncMetrics(registry, quota_bytes=100 * 2**30)


def default_collectors_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exported_names() -> set[str]:
    """Names the worker and sync processes export (they cannot share one registry: the sync
    gauges exist in both under the same names)."""
    names: set[str] = set()
    for registry in (worker_registry()[0], sync_registry()[0], default_collectors_registry()):
        names |= sample_names(registry)
    return names


def populate(metrics: object) -> None:
    """Give every metric (and every labelled metric one child) a non-default sample."""
    for metric in metric_objects(metrics):
        labelnames = metric._labelnames  # no public accessor in prometheus_client
        child: Any = metric.labels(*(f"v_{n}" for n in labelnames)) if labelnames else metric
        if isinstance(metric, Counter):
            child.inc(3)
        elif isinstance(metric, Gauge):
            child.set(7)
        elif isinstance(metric, Histogram):
            child.observe(0.2)
        elif isinstance(metric, Info):
            child.info({"name": "all-MiniLM-L6-v2", "source": "cache", "generation": "3"})
        else:  # pragma: no cover - a new metric type needs a case here
            raise AssertionError(f"no sample for {metric!r}")


def docs_text() -> str:
    return DOCS.read_text()


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def docs_anchors() -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", docs_text(), re.M)}


def docs_section(anchor: str) -> str:
    """The text under the heading whose anchor is `anchor`, up to the next heading."""
    lines = docs_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#{1,6})\s+(.+)$", line)
        if m and github_anchor(m.group(2)) == anchor:
            body = []
            for rest in lines[i + 1 :]:
                if re.match(r"^#{1,6}\s", rest):
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f"no heading for #{anchor} in {DOCS}")


# --- promtool: rules ---------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a weakened threshold makes them fail."""
    broken = ALERTS_YML.read_text().replace(
        "max(tabular_sync_consecutive_failures) >= 2", "max(tabular_sync_consecutive_failures) >= 3"
    )
    assert broken != ALERTS_YML.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    tests = yaml.safe_load(ALERTS_TEST_YML.read_text())
    tests["tests"] = [  # only this alert's cases, to keep the run short
        case
        for case in tests["tests"]
        if any(c["alertname"] == "TabularSyncFailing" for c in case.get("alert_rule_test", []))
    ]
    assert tests["tests"]
    (tmp_path / "alerts.test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert result.returncode != 0
    assert "TabularSyncFailing" in result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_test_cases() -> None:
    tests = yaml.safe_load(ALERTS_TEST_YML.read_text())
    assert [str(p) for p in tests["rule_files"]] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert len(alerts) >= 9
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_required_alerts_exist() -> None:
    """The alerts the issue asks for, by the metrics they watch."""
    watched = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    required = {
        "TabularModelCacheHitRateLow": "tabular_model_cache_lookups_total",
        "TabularSyncFailing": "tabular_sync_consecutive_failures",
        "TabularSyncStale": "tabular_sync_last_success_timestamp_seconds",
        "TabularCacheNearQuota": "tabular_cache_quota_bytes",
        "TabularWorkerNotReady": "tabular_ready",
        "TabularJobErrorRateHigh": "tabular_jobs_total",
        "TabularJobsDeadLettered": "tabular_pubsub_dead_lettered_total",
        "TabularJobLatencyHigh": "tabular_job_duration_seconds_bucket",
        "TabularBacklogGrowingAtMaxInstances": "tabular_scaling_max_instances",
    }
    for alert, metric in required.items():
        assert alert in watched, alert
        assert metric in metric_names(watched[alert]), (alert, watched[alert])


def test_sync_and_cache_alerts_do_not_depend_on_the_job_label() -> None:
    """Sync gauges come from workers or from the sync job/Pushgateway: rules aggregate them."""
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        if any(n.startswith(("tabular_sync_", "tabular_cache_")) for n in names):
            assert "job" not in rule["expr"], rule["alert"]
            assert re.search(r"\b(max|min)\(", rule["expr"]), rule["alert"]


def test_every_alert_has_a_runbook() -> None:
    anchors = docs_anchors()
    for rule in alert_rules():
        annotations = rule.get("annotations", {})
        link = annotations.get("runbook_url") or annotations.get("runbook")
        assert link, f"{rule['alert']} has no runbook annotation"
        assert annotations.get("summary"), rule["alert"]
        path, _, anchor = link.partition("#")
        assert path == "docs/observability.md", link
        assert anchor == rule["alert"].lower(), link
        assert anchor in anchors, f"docs/observability.md has no heading for #{anchor}"
        section = docs_section(anchor)
        assert re.search(r"^\*\*Do\*\*:?.{40,}", section, re.M | re.S), (
            f"runbook of {rule['alert']} has no '**Do**' line"
        )


# --- PromQL names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("tabular_ready == 0", {"tabular_ready"}),
        (
            'sum by (type, le) (rate(tabular_job_duration_seconds_bucket{type="embed"}[5m]))',
            {"tabular_job_duration_seconds_bucket"},
        ),
        (
            "histogram_quantile(0.99, sum(rate(x_bucket[$__rate_interval])) by (le))",
            {"x_bucket"},
        ),
        ("time() - max(a_seconds) > 26 * 3600", {"a_seconds"}),
        ("a offset 1h - b @ 1609746000", {"a", "b"}),
        ("a / on (instance) group_left (name, version) b", {"a", "b"}),
        ("a and ignoring(le) b unless c or d", {"a", "b", "c", "d"}),
        ('label_replace(up, "dst", "$1", "instance", "(.*):.*")', {"up"}),
        ('{__name__="tabular_ready", job="tabular-worker"}', {"tabular_ready"}),
        ("sum without (job, instance) (rate(c_total[1h:5m]))", {"c_total"}),
        ('a{l="x}y", m=~"by (z)"} > bool 1e3', {"a"}),
        ("rec:rule_name:rate5m", {"rec:rule_name:rate5m"}),
        ("topk(3, sum by (code) (rate(t_total[${interval}])))", {"t_total"}),
        ("vector(1) + scalar(time())", set()),
    ],
)
def test_metric_name_extractor(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_metric_name_extractor_rejects_unknown_functions() -> None:
    with pytest.raises(ValueError, match="ratee"):
        metric_names("ratee(x[5m])")


def test_alert_expressions_name_only_exported_metrics() -> None:
    known = exported_names() | GOOGLE_CLOUD_SERIES
    recorded = {rule["record"] for rule in recording_rules()}
    for rule in recording_rules() + alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"no metric in {rule['expr']!r}"
        unknown = names - known - recorded
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_unknown_metric_in_an_expression_is_detected() -> None:
    """The check above can fail: a misspelt name is not among the exported ones."""
    known = exported_names()
    assert metric_names("sum(rate(tabular_job_total[5m]))") - known == {"tabular_job_total"}
    assert metric_names("process_resident_memory") - known == {"process_resident_memory"}


# --- dashboard -------------------------------------------------------------------------------


def test_dashboard_uses_a_prometheus_datasource_variable() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_expressions_name_only_exported_metrics() -> None:
    known = exported_names() | PROMETHEUS_SERIES | GOOGLE_CLOUD_SERIES
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert not names - known, f"{title}: unknown {names - known} in {expr!r}"


def test_dashboard_shows_every_worker_and_sync_metric() -> None:
    shown = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    registries = (worker_registry()[0], sync_registry()[0])
    missing = {
        family.name
        for registry in registries
        for family in registry.collect()
        if not sample_names_of(family) & shown
    }
    assert not missing, f"metrics on no dashboard panel: {sorted(missing)}"


def sample_names_of(family: Any) -> set[str]:
    return {family.name + sfx for sfx in SAMPLE_SUFFIXES.get(family.type, ("",))}


def test_dashboard_has_a_panel_for_every_alert() -> None:
    recorded = {rule["record"]: metric_names(rule["expr"]) for rule in recording_rules()}
    for rule in alert_rules():
        alert = rule["alert"]
        panels = [p for p in dashboard_panels() if f"Alert: {alert}" in p.get("description", "")]
        assert panels, f"no panel names alert {alert} in its description"
        needed = set()
        for name in metric_names(rule["expr"]):
            needed |= recorded.get(name, {name})
        shown = set().union(*(metric_names(t["expr"]) for p in panels for t in p["targets"]))
        assert needed <= shown, f"{alert}: its panels do not show {needed - shown}"


# --- docs ---------------------------------------------------------------------------------


def metric_table_rows() -> dict[str, list[tuple[str, set[str]]]]:
    """Docs table rows `| `name` | type | labels | meaning |` as name -> [(type, labels)]."""
    rows: dict[str, list[tuple[str, set[str]]]] = {}
    for line in docs_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[a-z_:]+`", cells[0]):
            labels = set(re.findall(r"`(\w+)`", cells[2]))
            rows.setdefault(cells[0].strip("`"), []).append((cells[1], labels))
    return rows


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    rows = metric_table_rows()
    _, worker = worker_registry()
    _, sync = sync_registry()
    for metric in metric_objects(worker) + metric_objects(sync):
        name = exposed_name(metric)
        assert name in rows, f"{name} is not in a metrics table of docs/observability.md"
        (family,) = metric.describe()
        for doc_type, doc_labels in rows[name]:
            assert doc_type.startswith("gauge" if family.type == "info" else family.type), name
            if family.type != "info":  # an info metric's labels are its keys, set at run time
                assert doc_labels == set(metric._labelnames), f"{name}: labels {doc_labels}"
    for family in default_collectors_registry().collect():
        (name,) = {s.name for s in family.samples}
        assert name in rows, f"{name} (prometheus_client default) undocumented"
        labels = {k for s in family.samples for k in s.labels}
        assert all(doc_labels == labels for _, doc_labels in rows[name]), name


def test_docs_describe_collection_and_log_queries() -> None:
    text = docs_text()
    for needle in (
        "jsonPayload.cache_hit=true",
        'jsonPayload.message="Shared volume available"',
        "infra/tabular-config.yaml",
        "RunMonitoring",
        "honor_labels",
        'job="tabular-sync"',
    ):
        assert needle in text, needle


# --- metrics exposition ----------------------------------------------------------------------


def test_shared_sync_metrics_have_one_type_in_worker_and_sync() -> None:
    """Alerts aggregate these across both sources; a type mismatch would split them."""
    worker_types = {f.name: f.type for f in worker_registry()[0].collect()}
    sync_types = {f.name: f.type for f in sync_registry()[0].collect()}
    shared = worker_types.keys() & sync_types.keys()
    assert shared == {
        "tabular_sync_consecutive_failures",
        "tabular_sync_last_success_timestamp_seconds",
        "tabular_cache_size_bytes",
    }
    assert all(worker_types[n] == sync_types[n] == "gauge" for n in shared)


def test_sync_quota_series_exists_only_when_configured() -> None:
    plain = SyncMetrics(CollectorRegistry())
    assert "tabular_cache_quota_bytes" not in generate_latest(plain.registry).decode()
    plain.set_quota(5)
    assert "tabular_cache_quota_bytes 5.0" in generate_latest(plain.registry).decode()
    with pytest.raises(ValueError):
        plain.set_quota(0)


@pytest.mark.parametrize("source", ["worker", "sync"])
def test_promtool_check_metrics_is_clean(source: str) -> None:
    registry, metrics = worker_registry() if source == "worker" else sync_registry()
    populate(metrics)
    text = generate_latest(registry)
    assert text.count(b"# TYPE") >= len(metric_objects(metrics))
    result = promtool("check", "metrics", stdin=text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_promtool_check_metrics_reports_problems() -> None:
    """The lint above is not vacuous in this promtool version."""
    bad = b"# HELP tabular_things A counter without _total.\n# TYPE tabular_things counter\n"
    bad += b"tabular_things 1\n"
    result = promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert '"_total" suffix' in result.stdout + result.stderr


# --- against a real Prometheus and Pushgateway -----------------------------------------------


@pytest.fixture
def instant_rules(tmp_path: Path) -> Path:
    """alerts.yml with every `for` removed, so alerts fire at the first evaluation."""
    return rules_without_for(tmp_path / "alerts-instant.yml")


def test_prometheus_scrapes_a_worker_and_fires_alerts(
    prometheus_factory: Callable[..., PrometheusServer],
    metrics_endpoint_factory: Callable[[CollectorRegistry], MetricsEndpoint],
    instant_rules: Path,
) -> None:
    registry, worker = worker_registry()
    worker.ready.set(0)
    worker.sync_consecutive_failures.set(2)
    worker.sync_last_success.set(time.time() - 3600)  # fresh: TabularSyncStale must stay quiet
    # Two start-up misses before the first scrape: counted by the hit-rate rule all the same.
    worker.cache_lookups.labels("miss", "no_mount").inc(2)
    healthy = CollectorRegistry()
    WorkerMetrics(healthy).ready.set(1)
    endpoints = [metrics_endpoint_factory(registry), metrics_endpoint_factory(healthy)]

    prom = prometheus_factory([e.address for e in endpoints], rule_files=[instant_rules])
    targets = prom.wait_for_targets_up()
    assert {t["labels"]["job"] for t in targets} == {WORKER_JOB}

    ready = prom.query_values("tabular_ready")
    assert ready == {
        frozenset({"__name__": "tabular_ready", "job": WORKER_JOB, "instance": a}.items()): v
        for a, v in ((endpoints[0].address, 0.0), (endpoints[1].address, 1.0))
    }

    (not_ready,) = wait_for(lambda: prom.firing("TabularWorkerNotReady"), timeout=20)
    assert not_ready["labels"]["instance"] == endpoints[0].address
    assert not_ready["annotations"]["runbook"] == "docs/observability.md#tabularworkernotready"
    (failing,) = wait_for(lambda: prom.firing("TabularSyncFailing"), timeout=20)
    assert float(failing["value"]) == 2
    (hit_rate,) = wait_for(lambda: prom.firing("TabularModelCacheHitRateLow"), timeout=20)
    assert float(hit_rate["value"]) == 0
    firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
    assert "TabularSyncStale" not in firing
    assert "TabularJobsDeadLettered" not in firing

    # The worker becomes ready: the alert resolves.
    worker.ready.set(1)
    wait_for(lambda: not prom.firing("TabularWorkerNotReady"), timeout=20)


def test_dashboard_expressions_are_valid_promql(
    prometheus_factory: Callable[..., PrometheusServer],
) -> None:
    """Every dashboard query, Grafana variables filled in, is accepted by a real Prometheus."""
    prom = prometheus_factory()
    variables = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
    for title, expr in dashboard_exprs():
        for var, value in variables.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{title}: unfilled variable in {expr!r}"
        prom.query(expr)  # raises PrometheusAPIError on a parse error


def test_sync_metrics_pushed_to_the_pushgateway(
    pushgateway: Pushgateway,
    prometheus_factory: Callable[..., PrometheusServer],
    instant_rules: Path,
) -> None:
    registry, sync = sync_registry()
    sync.runs.labels("failure").inc()
    sync.consecutive_failures.set(3)
    sync.last_success.set(1_700_000_000)
    sync.duration_seconds.set(12.5)
    sync.cache_size_bytes.set(90 * 2**30)  # 90 % of the 100 GiB quota
    sync.bytes.inc(4096)
    sync.files.inc(2)
    push_to_gateway(pushgateway.address, job=SYNC_JOB, registry=registry)

    def pushed(name: str) -> float:
        (sample,) = pushgateway.samples(name)
        assert sample.labels["job"] == SYNC_JOB
        return sample.value

    assert pushed("tabular_sync_consecutive_failures") == 3
    assert pushed("tabular_sync_last_success_timestamp_seconds") == 1_700_000_000
    assert pushed("tabular_sync_duration_seconds") == 12.5
    assert pushed("tabular_cache_quota_bytes") == 100 * 2**30
    assert pushed("tabular_sync_bytes_total") == 4096
    assert {
        s.labels["outcome"]: s.value for s in pushgateway.samples("tabular_sync_runs_total")
    } == {
        "success": 0,
        "failure": 1,
    }

    # Scraped with honor_labels, the series keep job="tabular-sync" and drive the alerts.
    prom = prometheus_factory(jobs=[pushgateway.scrape_job()], rule_files=[instant_rules])
    prom.wait_for_targets_up()
    rows = wait_for(lambda: prom.query("tabular_sync_consecutive_failures"), timeout=20)
    assert [r["metric"]["job"] for r in rows] == [SYNC_JOB]
    for alert in ("TabularSyncFailing", "TabularSyncStale", "TabularCacheNearQuota"):
        (fired,) = wait_for(functools.partial(prom.firing, alert), timeout=20, message=alert)
        assert "job" not in fired["labels"]

    # SyncMetrics.push replaces the group: after a success, the failure streak is gone.
    sync.consecutive_failures.set(0)
    sync.last_success.set(time.time())
    sync.push(pushgateway.address)
    assert PUSH_JOB == SYNC_JOB
    assert pushed("tabular_sync_consecutive_failures") == 0
    wait_for(lambda: not prom.firing("TabularSyncFailing"), timeout=20)
    wait_for(lambda: not prom.firing("TabularSyncStale"), timeout=20)


def test_wait_for_reports_the_last_value() -> None:
    calls: Iterator[int] = iter(range(1000))
    with pytest.raises(TimeoutError, match="last: 0"):
        wait_for(lambda: 0 * next(calls), timeout=0.3, interval=0.05)
    assert wait_for(lambda: next(calls) > 3, timeout=5, interval=0.01) is True


def test_scrape_job_config_for_the_pushgateway() -> None:
    job = ScrapeJob("pushgateway", ["127.0.0.1:9091"], honor_labels=True)
    assert job.config() == {
        "job_name": "pushgateway",
        "honor_labels": True,
        "metrics_path": "/metrics",
        "static_configs": [{"targets": ["127.0.0.1:9091"]}],
    }
