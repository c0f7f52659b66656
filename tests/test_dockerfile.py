"""Structure of Dockerfile.tabular and the build entry points, and the startup script's behaviour.

Linters (hadolint, checkov, trivy) run from infra/checks.sh; these tests pin down the properties
the image was designed for, so a later edit cannot quietly undo them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.tabular"
BASE_DOCKERFILE = ROOT / "docker" / "Dockerfile.tabular-base"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


@dataclass
class Instr:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instrs: list[Instr] = field(default_factory=list)


def parse(path: Path) -> tuple[list[Instr], list[Stage]]:
    """A small Dockerfile parser: continuation lines joined, comments dropped."""
    preamble: list[Instr] = []
    stages: list[Stage] = []
    pending = ""
    start = 0
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = lineno
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        cmd, _, args = text.partition(" ")
        instr = Instr(cmd.upper(), args.strip(), start)
        if instr.cmd == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", instr.args, re.IGNORECASE)
            assert m, instr
            stages.append(Stage(m.group(2) or f"stage{len(stages)}", m.group(1)))
        elif stages:
            stages[-1].instrs.append(instr)
        else:
            preamble.append(instr)
    return preamble, stages


Parsed = tuple[list[Instr], dict[str, Stage], list[Stage]]


@pytest.fixture(scope="module")
def dockerfile() -> Parsed:
    preamble, stages = parse(DOCKERFILE)
    return preamble, {s.name: s for s in stages}, stages


def _lock_version(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not in requirements.lock")


def _index(stage: Stage, pred: str) -> int:
    for i, instr in enumerate(stage.instrs):
        if re.search(pred, f"{instr.cmd} {instr.args}"):
            return i
    raise AssertionError(f"{stage.name}: nothing matches {pred!r}")


def test_no_syntax_directive() -> None:
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first), "a syntax directive pulls a frontend image"


def test_base_image_is_an_argument(
    dockerfile: Parsed,
) -> None:
    preamble, _, stages = dockerfile
    assert [i.args for i in preamble if i.cmd == "ARG"] == [
        "BASE_IMAGE=python:3.11-slim",
        "WORKER_BACKEND=onnx",
    ]
    assert {s.name: s.base for s in stages} == {
        "ollama": "${BASE_IMAGE}",
        "builder": "${BASE_IMAGE}",
        "builder-tables": "builder",
        "builder-sync": "builder",
        "runtime": "${BASE_IMAGE}",
        "libs-onnx": "runtime",
        "libs-torch": "runtime",
        "sync": "libs-torch",
        "worker": "libs-${WORKER_BACKEND}",
    }


def test_ollama_stage_is_pinned_switchable_and_cpu_only(
    dockerfile: Parsed,
) -> None:
    _, by_name, _ = dockerfile
    args = {i.args.split("=")[0]: i.args for i in by_name["ollama"].instrs if i.cmd == "ARG"}
    assert re.fullmatch(r"OLLAMA_VERSION=\d+\.\d+\.\d+", args["OLLAMA_VERSION"])
    assert args["INSTALL_OLLAMA"] == "INSTALL_OLLAMA=true"
    run = next(i.args for i in by_name["ollama"].instrs if i.cmd == "RUN")
    assert 'if [ "${INSTALL_OLLAMA}" = "true" ]' in run
    assert "'bin/ollama' 'lib/ollama/libggml-*'" in run, "extract the CPU runtime only"
    base_text = BASE_DOCKERFILE.read_text()
    assert args["OLLAMA_VERSION"] in base_text, "the base image pins the same Ollama"


def test_dependency_layers_come_before_the_code(
    dockerfile: Parsed,
) -> None:
    _, by_name, _ = dockerfile
    builder = by_name["builder"]
    copy_lock = _index(builder, r"^COPY requirements-worker\.lock pyproject\.toml ")
    deps = _index(builder, r"requirements-worker\.lock > \S+\s+&& uv pip install --no-deps -r ")
    assert copy_lock < deps
    sync = by_name["builder-sync"]
    torch = _index(sync, r"uv pip install --no-deps .*--target /opt/sync/torch .*torch==")
    copy_sync_lock = _index(sync, r"^COPY requirements-sync\.lock ")
    sync_deps = _index(sync, r"uv pip install --no-deps .*--target /opt/sync/libs")
    assert torch < copy_sync_lock < sync_deps
    for stage in (builder, sync, by_name["runtime"], by_name["libs-torch"]):
        for instr in stage.instrs:
            line = f"{instr.cmd} {instr.args}"
            assert not re.search(r"^COPY (\.|base/|engine/|worker/|sync/) ", line), (
                f"application code must not enter the dependency stage {stage.name}"
            )
    for target in ("worker", "sync"):
        instrs = by_name[target].instrs
        assert f"{instrs[-1].cmd} {instrs[-1].args}" == "COPY . /opt/app/", (
            f"{target}: the application code must be the last layer, one COPY"
        )
        copies = [i.args for i in instrs if i.cmd == "COPY"]
        assert copies[:-1] == (
            ["--from=builder-tables /opt/tables /opt/tables"] if target == "worker" else []
        ), "only pyarrow's layer (worker) comes between the shared layers and the code"


def test_worker_image_cannot_install_torch(
    dockerfile: Parsed,
) -> None:
    """The worker's venv installs requirements-worker.lock only, and that lock holds no torch."""
    _, by_name, _ = dockerfile
    installs = [i.args for i in by_name["builder"].instrs if "uv pip install" in i.args]
    assert installs and all("requirements-worker.lock" in i for i in installs)
    assert all("requirements.lock" not in i and "-r /opt/app/pyproject" not in i for i in installs)
    assert by_name["libs-onnx"].instrs == [], "the torch-free worker adds nothing to the runtime"
    # pyarrow is the worker's alone: not in the shared venv (so not in the sync image)
    assert "grep -v '^pyarrow==' /opt/app/requirements-worker.lock" in " ".join(installs)
    tables = " ".join(i.args for i in by_name["builder-tables"].instrs)
    assert "--target /opt/tables" in tables and "uv pip check" in tables
    worker_lock = (ROOT / "requirements-worker.lock").read_text().lower()
    for heavy in ("torch", "transformers", "sentence-transformers", "triton", "nvidia", "onnx=="):
        assert not re.search(rf"^{re.escape(heavy)}", worker_lock, re.MULTILINE), heavy
    sync_lock = (ROOT / "requirements-sync.lock").read_text()
    assert re.search(r"^torch==", sync_lock, re.MULTILINE)
    assert re.search(r"^sentence-transformers==", sync_lock, re.MULTILINE)


def test_image_lock_files_are_current() -> None:
    """requirements-{worker,sync}.lock follow requirements.lock and pyproject.toml (make locks)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "locks.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().lower().replace("_", "-").splitlines()
        if "==" in line
    )
    for lock in ("requirements-worker.lock", "requirements-sync.lock"):
        for line in (ROOT / lock).read_text().splitlines():
            if line and not line.startswith("#"):
                name, version = line.split("==", 1)
                assert pins.get(name) == version, f"{lock}: {line} differs from requirements.lock"


def test_torch_is_cpu_only_and_matches_the_lock(
    dockerfile: Parsed,
) -> None:
    _, by_name, _ = dockerfile
    args = dict(
        i.args.split("=", 1)
        for name in ("builder", "builder-sync")
        for i in by_name[name].instrs
        if i.cmd == "ARG" and "=" in i.args
    )
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["TORCH_VERSION"] == _lock_version("torch")
    assert "TORCH_FIND_LINKS" in args
    uv_version = args["UV_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", uv_version)


def test_cache_mounts_are_not_cancelled(
    dockerfile: Parsed,
) -> None:
    _, _, stages = dockerfile
    installs = 0
    for stage in stages:
        for instr in stage.instrs:
            if instr.cmd != "RUN" or "uv pip install" not in instr.args:
                continue
            installs += 1
            assert "--mount=type=cache,target=/root/.cache/uv" in instr.args, instr.line
            assert "--no-cache" not in instr.args, f"line {instr.line}: cache mount cancelled"
    assert installs >= 2


def test_no_model_downloads_or_cuda() -> None:
    _, stages = parse(DOCKERFILE)
    body = "\n".join(f"{i.cmd} {i.args}" for s in stages for i in s.instrs)
    for pattern in (
        r"huggingface-cli",
        r"\bhf download",
        r"snapshot_download",
        r"SentenceTransformer\(",
        r"from_pretrained",
        r"ollama pull",
        r"nvidia",
        r"cuda",
        r"download\.pytorch\.org/whl/cu\d",
    ):
        assert not re.search(pattern, body, re.IGNORECASE), pattern


def test_runtime_user_env_and_entrypoint(
    dockerfile: Parsed,
) -> None:
    _, by_name, stages = dockerfile
    runtime = by_name["runtime"]
    assert stages[-1] is by_name["worker"], "the default target is the worker"
    users = [i.args for i in runtime.instrs if i.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env_text = " ".join(i.args for i in runtime.instrs if i.cmd == "ENV")
    env = dict(re.findall(r"(\w+)=(\S+)", env_text))
    assert env["MODEL_CACHE_PATH"] == "/models"
    assert env["SENTENCE_TRANSFORMERS_HOME"] == "/models/sbert"
    assert env["HUGGINGFACE_HUB_CACHE"] == "/models/sbert"
    assert env["OLLAMA_MODELS"] == "/models/ollama"
    assert env["OLLAMA_NOPRUNE"] == "1"
    (entrypoint,) = [i.args for i in runtime.instrs if i.cmd == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["/usr/local/bin/tabular-entrypoint"]
    assert "COPY docker/entrypoint.sh /usr/local/bin/tabular-entrypoint" in [
        f"{i.cmd} {i.args}" for i in runtime.instrs
    ]
    assert os.access(ENTRYPOINT, os.X_OK), "COPY keeps the mode: the script must be executable"
    for stage, command in (
        ("runtime", ["tabular-worker", "serve"]),
        ("worker", ["tabular-worker", "serve"]),
        ("sync", ["tabular-sync", "listen"]),
    ):
        (cmd,) = [i.args for i in by_name[stage].instrs if i.cmd == "CMD"]
        assert yaml.safe_load(cmd) == command, stage
    for stage in ("libs-torch", "sync", "worker"):
        assert not [i for i in by_name[stage].instrs if i.cmd == "USER"], "USER stays 10001"


def test_cloudbuild() -> None:
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert doc["options"]["machineType"] == "E2_HIGHCPU_8"
    assert doc["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    subs = doc["substitutions"]
    images = {}
    for target in ("worker", "sync"):
        build = next(s for s in doc["steps"] if s.get("id") == f"build-{target}")
        args = build["args"]
        joined = " ".join(args)
        assert args[args.index("--target") + 1] == target
        image = "${_" + target.upper() + "_IMAGE}"
        images[target] = image
        assert subs[image[2:-1]].endswith(f"/tabular-{target}")
        assert "BUILDKIT_INLINE_CACHE=1" in joined
        assert "Dockerfile.tabular" in joined
        assert f"-t {image}:$SHORT_SHA" in joined and f"-t {image}:latest" in joined
        cache_from = [args[i + 1] for i, a in enumerate(args) if a == "--cache-from"]
        assert f"{image}:latest" in cache_from
        assert build.get("env") and "DOCKER_BUILDKIT=1" in build["env"]
    push = " ".join(next(s for s in doc["steps"] if s.get("id") == "push")["args"])
    assert all(f"push --all-tags {image}" in push for image in images.values())
    assert set(doc["images"]) == {
        f"{image}:{tag}" for image in images.values() for tag in ("$SHORT_SHA", "latest")
    }


def test_makefile_fragment_targets() -> None:
    text = (ROOT / "infra" / "infra.mk").read_text()
    for target in (
        "docker-build-tabular",
        "docker-build-tabular-cache",
        "infra-check",
        "image-test",
        "bench-image",
    ):
        assert re.search(rf"^{re.escape(target)}:", text, re.MULTILINE), target
    assert "BUILDKIT_INLINE_CACHE=1" in text and "--cache-from" in text
    assert "DOCKER_BUILDKIT" in text
    assert "--target $$target" in text and "TABULAR_TARGETS ?= worker sync" in text


# --- the startup script ------------------------------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH with a fake `ollama` that records its start and a `worker` command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ollama = bin_dir / "ollama"
    ollama.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$@ OLLAMA_HOST=$OLLAMA_HOST OLLAMA_NOPRUNE=$OLLAMA_NOPRUNE" > "$MARK_DIR/ollama"\n'
        "trap 'echo stopped >> \"$MARK_DIR/ollama\"; exit 0' TERM\n"
        "sleep 60 >/dev/null 2>&1 & wait\n"
    )
    worker = bin_dir / "tabular-worker"
    worker.write_text(
        "#!/usr/bin/env bash\n"
        "trap 'echo term > \"$MARK_DIR/worker\"; exit 0' TERM\n"
        'echo "started $*" > "$MARK_DIR/worker"\n'
        'if [ "$1" = exit ]; then exit "$2"; fi\n'
        "sleep 60 >/dev/null 2>&1 & wait\n"
    )
    for f in (ollama, worker):
        f.chmod(0o755)
    return bin_dir


def _env(tmp_path: Path, fake_bin: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "MARK_DIR": str(tmp_path),
        "MODEL_CACHE_PATH": str(tmp_path / "models"),
        "TABULAR_LOCAL_MODEL_DIR": str(tmp_path / "local"),
        "HOME": str(tmp_path),
    }
    env.update(extra)
    return env


def _wait_for(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash missing")


@needs_bash
def test_entrypoint_starts_ollama_without_waiting_and_forwards_sigterm(
    tmp_path: Path, fake_bin: Path
) -> None:
    proc = subprocess.Popen(
        [str(ENTRYPOINT), "tabular-worker", "serve"],
        env=_env(tmp_path, fake_bin, TABULAR_LLM_ENABLED="true"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The fake Ollama never becomes ready: the worker starts anyway.
        assert _wait_for(tmp_path / "worker").strip() == "started serve"
        assert _wait_for(tmp_path / "ollama").startswith(
            "serve OLLAMA_HOST=127.0.0.1:11434 OLLAMA_NOPRUNE=1"
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "worker").read_text().strip() == "term"
    assert "stopped" in (tmp_path / "ollama").read_text(), "ollama is stopped after the worker"
    assert "received SIGTERM" in err


@needs_bash
def test_entrypoint_skips_ollama_when_llm_disabled_or_for_sync(
    tmp_path: Path, fake_bin: Path
) -> None:
    out = subprocess.run(
        [str(ENTRYPOINT), "tabular-worker", "exit", "3"],
        env=_env(tmp_path, fake_bin, TABULAR_LLM_ENABLED="false"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 3, "the command's exit status is the container's"
    assert "tabular-worker exited with status 3" in out.stderr
    assert not (tmp_path / "ollama").exists()
    sync = fake_bin / "tabular-sync"
    sync.write_text('#!/usr/bin/env bash\necho sync "$@"\n')
    sync.chmod(0o755)
    out = subprocess.run(
        [str(ENTRYPOINT), "tabular-sync", "once"],
        env=_env(tmp_path, fake_bin, TABULAR_LLM_ENABLED="true"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 0 and out.stdout == "sync once\n"
    assert not (tmp_path / "ollama").exists(), "sync commands do not start Ollama"


@needs_bash
def test_entrypoint_fails_clearly(tmp_path: Path, fake_bin: Path) -> None:
    missing = subprocess.run(
        [str(ENTRYPOINT), "no-such-command"],
        env=_env(tmp_path, fake_bin),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert missing.returncode == 127
    assert "command not found: 'no-such-command'" in missing.stderr
    (fake_bin / "ollama").unlink()
    forced = subprocess.run(
        [str(ENTRYPOINT), "tabular-worker", "exit", "0"],
        env=_env(tmp_path, fake_bin, TABULAR_START_OLLAMA="true"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert forced.returncode == 1
    assert "no ollama binary" in forced.stderr
    # auto mode only warns: embedding work must not depend on Ollama
    auto = subprocess.run(
        [str(ENTRYPOINT), "tabular-worker", "exit", "0"],
        env=_env(tmp_path, fake_bin, TABULAR_LLM_ENABLED="true"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert auto.returncode == 0
    assert '"severity":"WARNING"' in auto.stderr and "no ollama binary" in auto.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    bad_dir = subprocess.run(
        [str(ENTRYPOINT), "tabular-worker", "exit", "0"],
        env=_env(
            tmp_path,
            fake_bin,
            TABULAR_LLM_ENABLED="false",
            TABULAR_LOCAL_MODEL_DIR=str(blocked / "sub"),
        ),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert bad_dir.returncode == 1
    assert "TABULAR_LOCAL_MODEL_DIR" in bad_dir.stderr


@needs_bash
def test_entrypoint_log_lines_are_json(tmp_path: Path, fake_bin: Path) -> None:
    import json

    out = subprocess.run(
        [str(ENTRYPOINT), "tabular-worker", "exit", "0"],
        env=_env(tmp_path, fake_bin, TABULAR_LLM_ENABLED="false", MODEL_CACHE_PATH='/no/"x"'),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert entry["logger"] == "entrypoint"
    assert any('/no/"x"' in json.loads(ln)["message"] for ln in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
