"""Static checks of the deployment: Terraform structure, the Cloud Run YAML, the build context.

Needs the libraries of requirements-infra.lock (python-hcl2, jsonschema, docker); `make infra-deps`
installs them. Without them the module is skipped, unless TABULAR_INFRA_REQUIRED=1 (set by
infra/infra.mk), where a missing library is an error.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml


def _need(module: str) -> ModuleType:
    if os.environ.get("TABULAR_INFRA_REQUIRED") == "1":
        return importlib.import_module(module)
    mod: ModuleType = pytest.importorskip(
        module, reason="install requirements-infra.lock (make infra-deps)"
    )
    return mod


hcl2 = _need("hcl2")
jsonschema = _need("jsonschema")
docker_build = _need("docker.utils.build")

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "infra" / "terraform"
CLOUD_RUN_YAML = ROOT / "infra" / "tabular-config.yaml"
SCHEMA = ROOT / "infra" / "schemas" / "cloudrun-worker.schema.json"
MAX_CONTEXT_BYTES = 1_000_000

Resources = dict[str, dict[str, dict[str, Any]]]


# --- Terraform ---------------------------------------------------------------------------------


def _unwrap(value: Any) -> Any:
    """python-hcl2 v8 keeps the quotes of string literals: strip them for comparisons."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _load_tf() -> dict[str, Any]:
    merged: dict[str, list[Any]] = {}
    for path in sorted(TF_DIR.glob("*.tf")):
        with path.open() as fh:
            doc = hcl2.load(fh)
        for key, blocks in doc.items():
            merged.setdefault(key, []).extend(blocks if isinstance(blocks, list) else [blocks])
    return merged


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return _load_tf()


def _named(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for block in blocks:
        for name, body in block.items():
            out[_unwrap(name)] = body
    return out


def by_type(tf: dict[str, Any]) -> Resources:
    """{resource type: {name: body}} of a loaded configuration."""
    out: Resources = {}
    for block in tf.get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                out.setdefault(_unwrap(rtype), {})[_unwrap(name)] = body
    return out


@pytest.fixture(scope="module")
def resources(tf: dict[str, Any]) -> Resources:
    return by_type(tf)


def _one(value: Any) -> Any:
    """Attribute values and nested blocks come as lists in some python-hcl2 versions."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return _unwrap(value)


def _plain(value: Any) -> Any:
    """Unquote string literals inside lists and maps too."""
    value = _one(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_unwrap(k): _plain(v) for k, v in value.items()}
    return value


def _get(body: dict[str, Any], *path: str) -> Any:
    node: Any = body
    for key in path:
        node = _one(node)
        assert isinstance(node, dict), f"{path}: {key} has no parent block"
        assert key in node, f"missing {'.'.join(path)} (at {key})"
        node = node[key]
    return _plain(node)


def _blocks(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key, [])
    return value if isinstance(value, list) else [value]


def _tf_text() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TF_DIR.glob("*.tf"))}


def _iam_members(resources: Resources) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for rtype, named in resources.items():
        if re.search(r"_iam_(member|binding|policy)$", rtype):
            for name, body in named.items():
                yield rtype, name, body


def test_terraform_is_formatted() -> None:
    import shutil
    import subprocess

    terraform = shutil.which("terraform")
    if terraform is None:
        if os.environ.get("TABULAR_INFRA_REQUIRED") == "1":
            pytest.fail("terraform is not on PATH")
        pytest.skip("terraform is not on PATH")
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-diff", "-recursive", str(TF_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cache_bucket(resources: Resources, tf: dict[str, Any]) -> None:
    bucket = resources["google_storage_bucket"]["model_cache"]
    assert _get(bucket, "name") == "${var.bucket_name}"
    variables = _named(tf["variable"])
    assert _get(variables["bucket_name"], "default") == "tabular-model-cache"
    assert _get(bucket, "uniform_bucket_level_access") is True
    assert _get(bucket, "public_access_prevention") == "enforced"
    tmp_rules = [
        rule
        for rule in _blocks(bucket, "lifecycle_rule")
        if _get(rule, "action", "type") == "Delete"
        and [_unwrap(p) for p in _get_list(rule, "condition", "matches_prefix")] == [".tmp/"]
    ]
    assert len(tmp_rules) == 1, "a lifecycle rule must delete .tmp/ objects"
    assert _get(tmp_rules[0], "condition", "age") == 7


def _get_list(body: dict[str, Any], *path: str) -> list[Any]:
    node: Any = body
    for key in path:
        node = _one(node)
        if not isinstance(node, dict) or key not in node:
            return []
        node = node[key]
    while isinstance(node, list) and len(node) == 1 and isinstance(node[0], list):
        node = node[0]
    return node if isinstance(node, list) else [node]


def test_artifact_registry_repository(resources: Resources) -> None:
    repo = resources["google_artifact_registry_repository"]["tabular"]
    assert _get(repo, "format") == "DOCKER"


def test_storage_grants_are_bucket_scoped(resources: Resources) -> None:
    for rtype, name, body in _iam_members(resources):
        role = str(_get(body, "role")) if "role" in _one(body) else ""
        assert "admin" not in role.lower(), f"{rtype}.{name} grants an admin role: {role}"
        if rtype.startswith("google_project_iam"):
            assert "storage" not in role, f"{rtype}.{name}: storage roles must be bucket-scoped"
    # project-wide grants: the write-only telemetry roles, and the autoscaler's read-only ones
    # (tests/test_infra_scaling.py checks those)
    project_grants = resources["google_project_iam_member"]
    assert set(project_grants) == {
        "telemetry",
        "autoscaler_monitoring_viewer",
        "autoscaler_config_reader",
    }
    text = _tf_text()["iam.tf"]
    block = text[text.index('resource "google_project_iam_member" "telemetry"') :]
    block = block[: block.index("\n}\n")]
    roles = set(re.findall(r'"(roles/[^"]+)"', block))
    assert roles == {"roles/monitoring.metricWriter", "roles/logging.logWriter"}
    buckets = {
        "worker_data_reader": "${var.data_bucket_name}",
        "worker_output_writer": "${var.output_bucket_name}",
    }
    for name, body in resources["google_storage_bucket_iam_member"].items():
        want = buckets.get(name, "${google_storage_bucket.model_cache.name}")
        assert _get(body, "bucket") == want, name


def _grants(resources: Resources, member_ref: str) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for rtype, _name, body in _iam_members(resources):
        b = _one(body)
        if _one(b.get("member")) != member_ref:
            continue
        target = next(
            str(_one(b[k])) for k in ("bucket", "topic", "subscription", "project") if k in b
        )
        found.add((rtype, str(_get(b, "role")), target))
    return found


def test_worker_least_privilege(resources: Resources) -> None:
    assert _grants(resources, "${google_service_account.worker.member}") == {
        (
            "google_storage_bucket_iam_member",
            "roles/storage.objectViewer",
            "${google_storage_bucket.model_cache.name}",
        ),
        (
            "google_pubsub_subscription_iam_member",
            "roles/pubsub.subscriber",
            "${google_pubsub_subscription.jobs.name}",
        ),
        (
            "google_pubsub_topic_iam_member",
            "roles/pubsub.publisher",
            "${google_pubsub_topic.results.name}",
        ),
        (  # shard jobs of a large table (docs/jobs.md, "Sharding")
            "google_pubsub_topic_iam_member",
            "roles/pubsub.publisher",
            "${google_pubsub_topic.jobs.name}",
        ),
        (  # only when data_bucket_name is set (count)
            "google_storage_bucket_iam_member",
            "roles/storage.objectViewer",
            "${var.data_bucket_name}",
        ),
        (  # only when output_bucket_name is set (count)
            "google_storage_bucket_iam_member",
            "roles/storage.objectUser",
            "${var.output_bucket_name}",
        ),
    }


def test_table_buckets_are_optional_mounts_with_bucket_scoped_grants(
    resources: Resources,
) -> None:
    grants = resources["google_storage_bucket_iam_member"]
    assert _get(grants["worker_data_reader"], "count") == '${var.data_bucket_name == "" ? 0 : 1}'
    assert _get(grants["worker_output_writer"], "count") == (
        '${var.output_bucket_name == "" ? 0 : 1}'
    )
    run = _tf_text()["run.tf"]
    flat = " ".join(run.split())
    assert 'name = "data" bucket = var.data_bucket_name read_only = true path = "/data"' in flat
    assert 'name = "output" bucket = var.output_bucket_name read_only = false' in flat
    assert '{ TABULAR_DATA_ROOT = "/data" }' in run and '{ TABULAR_OUTPUT_ROOT = "/output" }' in run
    assert "only-dir=${var.output_prefix}" in run
    for text in (run, _tf_text()["workerpool.tf"]):
        assert text.count("for_each = local.table_volumes") >= 2  # volumes and their mounts


def test_sync_least_privilege(resources: Resources) -> None:
    assert _grants(resources, "${google_service_account.sync.member}") == {
        (
            "google_storage_bucket_iam_member",
            "roles/storage.objectUser",
            "${google_storage_bucket.model_cache.name}",
        ),
        (
            "google_pubsub_subscription_iam_member",
            "roles/pubsub.subscriber",
            "${google_pubsub_subscription.refresh.name}",
        ),
        (
            "google_pubsub_topic_iam_member",
            "roles/pubsub.publisher",
            "${google_pubsub_topic.refresh_complete.name}",
        ),
    }


def test_dead_letter_policy_and_service_agent_grants(resources: Resources) -> None:
    jobs = resources["google_pubsub_subscription"]["jobs"]
    assert _get(jobs, "topic") == "${google_pubsub_topic.jobs.id}"
    assert _get(jobs, "dead_letter_policy", "dead_letter_topic") == (
        "${google_pubsub_topic.jobs_dead_letter.id}"
    )
    assert _get(jobs, "dead_letter_policy", "max_delivery_attempts") == (
        "${var.max_delivery_attempts}"
    )
    agent = "${local.pubsub_service_agent}"
    assert _grants(resources, agent) == {
        (
            "google_pubsub_topic_iam_member",
            "roles/pubsub.publisher",
            "${google_pubsub_topic.jobs_dead_letter.name}",
        ),
        (
            "google_pubsub_subscription_iam_member",
            "roles/pubsub.subscriber",
            "${google_pubsub_subscription.jobs.name}",
        ),
    }
    storage_tf = _tf_text()["storage.tf"]
    assert re.search(
        r'pubsub_service_agent\s*=\s*"serviceAccount:service-\$\{data\.google_project\.this\.number\}'
        r'@gcp-sa-pubsub\.iam\.gserviceaccount\.com"',
        storage_tf,
    )
    # the dead-lettered jobs are kept by a subscription of their own
    dl_subs = [
        name
        for name, body in resources["google_pubsub_subscription"].items()
        if _get(body, "topic") == "${google_pubsub_topic.jobs_dead_letter.id}"
    ]
    assert dl_subs == ["jobs_dead_letter"]


def test_topics(resources: Resources) -> None:
    names = {_get(body, "name") for body in resources["google_pubsub_topic"].values()}
    assert names == {
        "tabular-jobs",
        "tabular-results",
        "tabular-jobs-dead-letter",
        "tabular-model-refresh",
        "tabular-model-refresh-complete",
    }


def test_every_variable_is_used(tf: dict[str, Any]) -> None:
    texts = _tf_text()
    uses = "\n".join(text for name, text in texts.items() if name != "variables.tf")
    declared = set(_named(tf["variable"]))
    assert declared, "no variables parsed"
    unused = sorted(v for v in declared if not re.search(rf"\bvar\.{re.escape(v)}\b", uses))
    assert not unused, f"declared but never used: {unused}"
    referenced = set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", "\n".join(texts.values())))
    assert referenced <= declared, f"used but not declared: {sorted(referenced - declared)}"


def test_bucket_output(tf: dict[str, Any]) -> None:
    outputs = _named(tf["output"])
    assert _get(outputs["tabular_model_cache_bucket_name"], "value") == (
        "${google_storage_bucket.model_cache.name}"
    )


def test_scheduler_publishes_to_refresh_topic(resources: Resources) -> None:
    job = resources["google_cloud_scheduler_job"]["nightly_refresh"]
    assert _get(job, "pubsub_target", "topic_name") == "${google_pubsub_topic.refresh.id}"
    assert _get(job, "schedule") == "${var.refresh_schedule}"
    refresh_sub = resources["google_pubsub_subscription"]["refresh"]
    assert _get(refresh_sub, "topic") == "${google_pubsub_topic.refresh.id}"


def _containers(body: dict[str, Any], *path: str) -> list[dict[str, Any]]:
    node: Any = body
    for key in path:
        node = _one(node)[key]
    return [c for c in (node if isinstance(node, list) else [node])]


def _gcs_volume(template: dict[str, Any]) -> dict[str, Any]:
    volumes = _blocks(_one(template), "volumes")
    assert len(volumes) == 1
    assert _get(volumes[0], "name") == "model-cache"
    gcs: dict[str, Any] = _one(_get(volumes[0], "gcs"))
    return gcs


def test_worker_service(resources: Resources) -> None:
    svc = resources["google_cloud_run_v2_service"]["worker"]
    template = _get(svc, "template")
    worker, sidecar = _containers(svc, "template", "containers")
    assert _get(worker, "args") == ["tabular-worker", "serve"]
    assert _get(worker, "image") == "${local.worker_image}", "the torch-free worker image"
    assert _get(worker, "resources", "cpu_idle") is False
    assert _get(worker, "volume_mounts", "mount_path") == "/models"
    assert _get(worker, "startup_probe", "http_get", "path") == "/readyz"
    assert _get(worker, "liveness_probe", "http_get", "path") == "/healthz"
    assert "cloud-run-gmp-sidecar" in _tf_text()["storage.tf"]
    assert _get(sidecar, "image") == "${local.gmp_sidecar_image}"
    assert [_unwrap(d) for d in _get_list(sidecar, "depends_on")] == ["worker"]
    assert _get(template, "scaling", "min_instance_count") == "${var.worker_min_instances}"
    gcs = _gcs_volume(template)
    assert _get(gcs, "bucket") == "${google_storage_bucket.model_cache.name}"
    assert _get(gcs, "read_only") is True


def test_sync_listener_and_job(resources: Resources) -> None:
    listener = resources["google_cloud_run_v2_service"]["sync_listener"]
    template = _get(listener, "template")
    assert _get(template, "scaling", "min_instance_count") == 1
    assert _get(template, "scaling", "max_instance_count") == 1
    assert _get(template, "service_account") == "${google_service_account.sync.email}"
    assert _get(_containers(listener, "template", "containers")[0], "args") == [
        "tabular-sync",
        "listen",
    ]
    assert _get(_containers(listener, "template", "containers")[0], "image") == (
        "${local.sync_image}"
    )
    assert _get(_gcs_volume(template), "read_only") is False

    job = resources["google_cloud_run_v2_job"]["model_sync"]
    assert _get(job, "name") == "tabular-model-sync"
    inner = _get(job, "template", "template")
    assert _get(inner, "service_account") == "${google_service_account.sync.email}"
    assert _get(inner, "containers", "args") == ["tabular-sync", "once"]
    assert _get(inner, "containers", "image") == "${local.sync_image}"
    storage = _tf_text()["storage.tf"]
    assert re.search(r'worker_image\s*=\s*"\$\{local\.registry\}/tabular-worker:', storage)
    assert re.search(r'sync_image\s*=\s*"\$\{local\.registry\}/tabular-sync:', storage)
    assert _get(_gcs_volume(inner), "read_only") is False


def test_alerts_are_switchable(resources: Resources) -> None:
    policies = resources["google_monitoring_alert_policy"]
    assert set(policies) == {"cache_hit_rate", "sync_failures", "bucket_usage", "slow_builds"}
    for rtype in ("google_monitoring_alert_policy", "google_logging_metric"):
        for name, body in resources[rtype].items():
            assert _get(body, "count") == "${local.alerts}", f"{rtype}.{name}"
    assert re.search(
        r"alerts\s*=\s*var\.enable_monitoring_alerts \? 1 : 0", _tf_text()["monitoring.tf"]
    )
    metric = resources["google_logging_metric"]["cache_lookups"]
    assert 'jsonPayload.message=\\"Model cache checked\\"' in _get(metric, "filter")
    assert _get(metric, "label_extractors")["cache_hit"] == "EXTRACT(jsonPayload.cache_hit)"
    hit_rate = _get(policies["cache_hit_rate"], "conditions", "condition_prometheus_query_language")
    query = _get(hit_rate, "query")
    assert 'cache_hit="true"' in query and "[1h]" in query and "< 0.9" in query
    sync = _get(policies["sync_failures"], "conditions", "condition_prometheus_query_language")
    assert _get(sync, "query") == "max(tabular_sync_consecutive_failures) >= 2"


# --- Cloud Run YAML ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    data = yaml.safe_load(CLOUD_RUN_YAML.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_cloud_run_yaml_matches_schema(service: dict[str, Any], validator: Any) -> None:
    errors = [e.message for e in validator.iter_errors(service)]
    assert not errors


def test_cloud_run_mount_uses_the_gcsfuse_volume(service: dict[str, Any]) -> None:
    spec = service["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    worker = next(c for c in spec["containers"] if c["name"] == "worker")
    (mount,) = [m for m in worker["volumeMounts"] if m["mountPath"] == "/models"]
    assert volumes[mount["name"]]["csi"]["driver"] == "gcsfuse.run.googleapis.com"
    deps = service["spec"]["template"]["metadata"]["annotations"][
        "run.googleapis.com/container-dependencies"
    ]
    sidecar = next(c for c in spec["containers"] if "cloud-run-gmp-sidecar" in c["image"])
    assert yaml.safe_load(deps) == {sidecar["name"]: ["worker"]}
    env = {e["name"]: e["value"] for e in worker["env"]}
    for name, value in {
        "MODEL_CACHE_PATH": "/models",
        "SHARED_MODEL_VOLUME_ENABLED": "true",
        "SENTENCE_TRANSFORMERS_HOME": "/models/sbert",
        "HUGGINGFACE_HUB_CACHE": "/models/sbert",
        "OLLAMA_MODELS": "/models/ollama",
        "OLLAMA_NOPRUNE": "1",
        "TABULAR_EMBEDDING_MODEL": "BAAI/bge-m3",
        "TABULAR_LLM_MODEL": "llama3.2:1b",
    }.items():
        assert env.get(name) == value, name


_DELETE = object()
_SPEC = ("spec", "template", "spec")
_ANNOTATIONS = ("spec", "template", "metadata", "annotations")


def _mutate(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((*_SPEC, "volumes", 0, "csi", "driver"), "gcs.csi.storage.gke.io"),
        ((*_SPEC, "volumes", 0, "csi", "readOnly"), False),
        ((*_SPEC, "containers", 0, "volumeMounts", 0, "mountPath"), "/cache"),
        ((*_SPEC, "containers", 0, "volumeMounts", 0, "readOnly"), False),
        ((*_SPEC, "containers", 0, "startupProbe", "httpGet", "path"), "/healthz"),
        ((*_SPEC, "containers", 0, "livenessProbe"), _DELETE),
        ((*_SPEC, "containers", 1), _DELETE),
        ((*_ANNOTATIONS, "run.googleapis.com/cpu-throttling"), "true"),
        ((*_ANNOTATIONS, "autoscaling.knative.dev/minScale"), "0"),
        ((*_SPEC, "containers", 0, "env", 0), {"name": "PORT", "value": "8080"}),
    ],
)
def test_schema_rejects_broken_service(
    service: dict[str, Any], validator: Any, path: tuple[str | int, ...], value: Any
) -> None:
    doc = _mutate(service, path, value)
    assert list(validator.iter_errors(doc)), f"schema accepted a broken {path}"


# --- build context -------------------------------------------------------------------------------


def _dockerignore(root: Path) -> list[str]:
    lines = (root / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _context_files(root: Path) -> tuple[set[str], int]:
    with docker_build.tar(str(root), exclude=_dockerignore(root), gzip=False) as fh:
        import tarfile

        data = fh.read()
        fh.seek(0)
        with tarfile.open(fileobj=fh) as tar:
            names = {m.name for m in tar.getmembers() if m.isfile()}
    return names, len(data)


def test_build_context_is_small() -> None:
    names, size = _context_files(ROOT)
    assert size < MAX_CONTEXT_BYTES, f"build context is {size} bytes"
    for needed in (
        "pyproject.toml",
        "requirements-worker.lock",
        "requirements-sync.lock",
        "docker/entrypoint.sh",
    ):
        assert needed in names, f"{needed} is excluded from the build context"


def test_dockerignore_excludes_heavy_and_private_files(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    keep = [
        "pyproject.toml",
        "requirements-worker.lock",
        "requirements-sync.lock",
        "worker/__init__.py",
        "worker/cli.py",
        "sync/cli.py",
        "docker/entrypoint.sh",
    ]
    drop = [
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-infra/bin/checkov",
        "worker/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache",
        ".idea/workspace.xml",
        ".vscode/settings.json",
        "tests/test_infra.py",
        "docs/deploy.md",
        "bench/image.py",
        "infra/terraform/terraform.tfstate",
        "infra/terraform/.terraform/providers/x",
        "prod.tfvars",
        "models/sbert/model.safetensors",
        "weights/model.gguf",
        "cache.npy",
        "dist/tabular_service-0.1.0-py3-none-any.whl",
        "docker/image-test.sh",
        "NOTES.md",
        "README.md",
    ]
    for rel in keep + drop:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    names, _ = _context_files(tmp_path)
    assert set(keep) <= names, f"missing: {sorted(set(keep) - names)}"
    leaked = sorted(set(drop) & names)
    assert not leaked, f"sent to the daemon: {leaked}"
