"""Static checks of the worker pool, its autoscaler (CREMA) and the runtime switch.

`terraform validate` cannot run here (the google provider cannot be downloaded), so these tests
read the HCL with python-hcl2 (helpers from tests/test_infra.py) and render the CREMA
configuration the way `templatefile` would, checking it against the keys CREMA's strict YAML
reader accepts (metric-provider/api/crema_config.go and KEDA's ScaledObjectSpec).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.test_infra import (
    TF_DIR,
    Resources,
    _containers,
    _get,
    _get_list,
    _load_tf,
    _named,
    _one,
    by_type,
)
from tests.test_infra import _tf_text as tf_text
from tests.test_infra import _unwrap as unwrap

TEMPLATE = TF_DIR / "templates" / "crema-config.yaml.tftpl"
# CREMA's scaler accepts these names for a worker pool (WorkloadInfoParser.WORKERPOOL_PATTERN).
WORKERPOOL = re.compile(r"projects/([^/]+)/locations/([^/]+)/worker[Pp]ools/([^/]+)")
PROJECT = "my-project"

# Keys CREMA's yaml.UnmarshalStrict accepts where this configuration uses them ("*": any).
POLICY = {"type": None, "value": None, "periodSeconds": None}
RULES = {"stabilizationWindowSeconds": None, "selectPolicy": None, "policies": [POLICY],
         "tolerance": None}  # fmt: skip
TRIGGER = {"type": None, "name": None, "metadata": "*", "metricType": None,
           "useCachedMetrics": None, "authenticationRef": {"name": None, "kind": None}}  # fmt: skip
SCALED_OBJECT_SPEC = {
    "scaleTargetRef": {"name": None, "apiVersion": None, "kind": None},
    "minReplicaCount": None, "maxReplicaCount": None, "idleReplicaCount": None,
    "triggers": [TRIGGER],
    "advanced": {"horizontalPodAutoscalerConfig": {"name": None,
                                                   "behavior": {"scaleUp": RULES,
                                                                "scaleDown": RULES}}},
}  # fmt: skip
CREMA_KEYS = {
    "apiVersion": None, "kind": None, "metadata": "*",
    "spec": {
        "pollingInterval": None,
        "triggerAuthentications": [{"metadata": "*", "spec": {"podIdentity": {"provider": None},
                                                              "gcpSecretManager": "*"}}],
        "scaledObjects": [{"spec": SCALED_OBJECT_SPEC}],
    },
}  # fmt: skip


def unknown_keys(value: Any, allowed: Any, path: str = "") -> list[str]:
    """Keys of `value` that the strict reader would reject."""
    if allowed == "*" or allowed is None:
        return []
    if isinstance(allowed, list):
        return [
            key
            for i, item in enumerate(value)
            for key in unknown_keys(item, allowed[0], f"{path}[{i}]")
        ]
    found = [f"{path}.{k}" for k in value if k not in allowed]
    for key, sub in value.items():
        if key in allowed:
            found += unknown_keys(sub, allowed[key], f"{path}.{key}")
    return found


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return _load_tf()


@pytest.fixture(scope="module")
def resources(tf: dict[str, Any]) -> Resources:
    return by_type(tf)


def defaults(tf: dict[str, Any]) -> dict[str, Any]:
    return {
        name: _get(body, "default")
        for name, body in _named(tf["variable"]).items()
        if "default" in _one(body)
    }


def template_vars(tf: dict[str, Any]) -> dict[str, str]:
    """The variables autoscaler.tf passes to templatefile(), as HCL expressions."""
    (call,) = [unwrap(v) for b in tf["locals"] for k, v in b.items() if k == "crema_config"]
    assert "crema-config.yaml.tftpl" in call
    return dict(re.findall(r"(\w+) = ([\w.\[\]]+)", call))


def evaluate(expr: str, tf: dict[str, Any]) -> Any:
    """The few HCL expressions the template gets, with variable defaults and PROJECT."""
    values = {**defaults(tf), "project_id": PROJECT, "region": "us-central1"}
    if expr.startswith("var."):
        return values[expr[4:]]
    if expr == "google_pubsub_subscription.jobs.id":
        return f"projects/{PROJECT}/subscriptions/tabular-jobs-sub"
    if expr == "local.worker_pool_fqn":
        return f"projects/{PROJECT}/locations/us-central1/workerpools/tabular-worker"
    raise AssertionError(f"no test value for {expr}")


def render(tf: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    text = TEMPLATE.read_text() if text is None else text
    variables = {k: evaluate(v, tf) for k, v in template_vars(tf).items()}
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: str(variables[m.group(1)]), text)
    loaded: dict[str, Any] = yaml.safe_load(rendered)
    return loaded


# --- the runtime switch ------------------------------------------------------------------------


def test_worker_runtime_defaults_to_the_worker_pool(tf: dict[str, Any]) -> None:
    variable = _named(tf["variable"])["worker_runtime"]
    assert _get(variable, "default") == "worker_pool"
    condition = _get(variable, "validation", "condition")
    assert '"worker_pool"' in condition and '"service"' in condition
    text = tf_text()["run.tf"]
    assert re.search(r'worker_pool\s*=\s*var\.worker_runtime == "worker_pool" \? 1 : 0', text)
    assert re.search(r'worker_service\s*=\s*var\.worker_runtime == "service" \? 1 : 0', text)


def test_each_runtime_has_its_own_resources(resources: Resources) -> None:
    assert _get(resources["google_cloud_run_v2_service"]["worker"], "count") == (
        "${local.worker_service}"
    )
    pool_only = {
        ("google_cloud_run_v2_worker_pool", "worker"),
        ("google_cloud_run_v2_service", "autoscaler"),
        ("google_service_account", "autoscaler"),
        ("google_parameter_manager_parameter", "autoscaler"),
        ("google_parameter_manager_parameter_version", "autoscaler"),
    }
    for rtype, named in resources.items():
        for name, body in named.items():
            if (rtype, name) in pool_only or "autoscaler" in name:
                assert _get(body, "count") == "${local.worker_pool}", f"{rtype}.{name}"


def _worker(body: dict[str, Any]) -> dict[str, Any]:
    containers = _containers(body, "template", "containers")
    (worker,) = [c for c in containers if _get(c, "name") == "worker"]
    return worker


@pytest.mark.parametrize(
    "field",
    [("args",), ("image",), ("resources", "limits"), ("volume_mounts",),
     ("startup_probe", "http_get", "path"), ("liveness_probe", "http_get", "path")],
)  # fmt: skip
def test_pool_and_service_run_the_same_container(
    resources: Resources, field: tuple[str, ...]
) -> None:
    service = _worker(resources["google_cloud_run_v2_service"]["worker"])
    pool = _worker(resources["google_cloud_run_v2_worker_pool"]["worker"])
    assert _get(pool, *field) == _get(service, *field)
    assert _get(pool, "dynamic") == _get(service, "dynamic")  # env from local.worker_env


def test_worker_pool(resources: Resources, tf: dict[str, Any]) -> None:
    pool = resources["google_cloud_run_v2_worker_pool"]["worker"]
    template = _get(pool, "template")
    assert _get(template, "service_account") == "${google_service_account.worker.email}"
    worker = _worker(pool)
    assert _get(worker, "args") == ["tabular-worker", "serve"]
    assert _get(worker, "startup_probe", "http_get", "port") == 8080
    (sidecar,) = [c for c in _containers(pool, "template", "containers") if c is not worker]
    assert _get(sidecar, "image") == "${local.gmp_sidecar_image}"
    assert [unwrap(d) for d in _get_list(sidecar, "depends_on")] == ["worker"]
    gcs = _get(template, "volumes", "gcs")
    assert _get(gcs, "read_only") is True
    assert _get(pool, "scaling", "scaling_mode") == "MANUAL"
    assert _get(pool, "scaling", "manual_instance_count") == "${var.worker_min_instances}"
    # CREMA owns the count after creation: an apply must not reset it.
    ignored = _get_list(pool, "lifecycle", "ignore_changes")
    assert ignored == ["${scaling[0].manual_instance_count}"]
    env = tf_text()["run.tf"]
    assert re.search(
        r"TABULAR_SCALING_MAX_INSTANCES\s*=\s*tostring\(var\.worker_max_instances\)", env
    )


# --- the autoscaler ---------------------------------------------------------------------------


def _grants_of(resources: Resources, member: str) -> set[tuple[str, str, str]]:
    found = set()
    for rtype, named in resources.items():
        if not rtype.endswith("_iam_member"):
            continue
        for body in named.values():
            b = _one(body)
            if _one(b.get("member")) == member:
                scope = next(
                    str(_one(b[k])) for k in ("name", "service_account_id", "project") if k in b
                )
                found.add((rtype, str(_get(b, "role")), scope))
    return found


def test_autoscaler_holds_only_what_it_needs(resources: Resources) -> None:
    assert _grants_of(resources, "${google_service_account.autoscaler[0].member}") == {
        ("google_project_iam_member", "roles/monitoring.viewer", "${var.project_id}"),
        ("google_project_iam_member", "roles/parametermanager.parameterViewer",
         "${var.project_id}"),
        ("google_cloud_run_v2_worker_pool_iam_member", "roles/run.developer",
         "${google_cloud_run_v2_worker_pool.worker[0].name}"),
        ("google_service_account_iam_member", "roles/iam.serviceAccountUser",
         "${google_service_account.worker.name}"),
    }  # fmt: skip
    service = resources["google_cloud_run_v2_service"]["autoscaler"]
    template = _get(service, "template")
    assert _get(template, "service_account") == "${google_service_account.autoscaler[0].email}"
    assert _get(service, "ingress") == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    assert _get(template, "scaling", "max_instance_count") == 1  # one CREMA per pool
    assert not any("invoker" in str(_get(b, "role")) for b in _iam_bodies(resources))


def _iam_bodies(resources: Resources) -> list[dict[str, Any]]:
    return [b for t, n in resources.items() if t.endswith("_iam_member") for b in n.values()]


def test_autoscaler_reads_this_configuration(resources: Resources) -> None:
    service = resources["google_cloud_run_v2_service"]["autoscaler"]
    env = {_get(e, "name"): _get(e, "value") for e in _get_list(service, "template",
                                                                  "containers", "env")}  # fmt: skip
    assert env["CREMA_CONFIG"] == (
        "${google_parameter_manager_parameter_version.autoscaler[0].name}"
    )
    version = resources["google_parameter_manager_parameter_version"]["autoscaler"]
    assert _get(version, "parameter_data") == "${local.crema_config}"
    # A new version id for every configuration change: the hash of the rendered text.
    assert "sha256(local.crema_config)" in _get(version, "parameter_version_id")
    parameter = resources["google_parameter_manager_parameter"]["autoscaler"]
    assert _get(parameter, "format") == "YAML"


def test_crema_config_scales_the_pool_on_the_jobs_backlog(tf: dict[str, Any]) -> None:
    placeholders = set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text()))
    assert placeholders == set(template_vars(tf)), "templatefile() would fail on a missing var"
    config = render(tf)
    assert unknown_keys(config, CREMA_KEYS) == []
    assert (config["apiVersion"], config["kind"]) == ("crema/v1", "CremaConfig")
    assert config["spec"]["pollingInterval"] == 30
    (auth,) = config["spec"]["triggerAuthentications"]
    assert auth["spec"] == {"podIdentity": {"provider": "gcp"}}  # the service account's identity
    (scaled,) = config["spec"]["scaledObjects"]
    spec = scaled["spec"]
    assert WORKERPOOL.fullmatch(spec["scaleTargetRef"]["name"])
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "gcp-pubsub"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert trigger["metadata"] == {
        "subscriptionName": f"projects/{PROJECT}/subscriptions/tabular-jobs-sub",
        "mode": "SubscriptionSize",  # num_undelivered_messages
        "value": "50",
        "activationValue": "0",
    }
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert template_vars(tf)["subscription"] == "google_pubsub_subscription.jobs.id"


def test_the_key_check_rejects_what_crema_would(tf: dict[str, Any]) -> None:
    broken = TEMPLATE.read_text().replace("pollingInterval:", "pollingIntervalSeconds:")
    broken = broken.replace("minReplicaCount:", "minReplicas:")
    assert unknown_keys(render(tf, broken), CREMA_KEYS) == [
        ".spec.pollingIntervalSeconds",
        ".spec.scaledObjects[0].spec.minReplicas",
    ]
