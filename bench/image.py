"""Image benchmark: build timings, image and layer sizes, build-context size.

    python bench/image.py [--context DIR] [--write docs/benchmarks.md] [--json FILE]

Drives Debian's docker engine through docker/image-test.sh (vfs storage driver, stand-in
python:3.11-slim base, the torch CPU wheel served on loopback) and builds Dockerfile.tabular from a
scratch copy of the context, so the repository is never modified. Scenarios, in order:

1. cold: no layer cache, no BuildKit cache mounts (`docker builder prune -af`)
2. cached: the same context again
3. code change: one line appended to worker/__init__.py
4. dependency change, warm uv cache: requirements.lock edited (a comment: same pins, new hash)
5. dependency change, cold uv cache: the same after pruning only the cache mounts

Prints a Markdown report; --write replaces the block between the image-bench markers in the given
file. vfs stores a full filesystem copy per layer: the run needs about 45 GB free under
/var/tmp/tabular-image-cache and drops its image and build cache afterwards (unless --keep).
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


@dataclass
class Report:
    builds: list[Build]
    image_bytes: int
    base_bytes: int
    compressed_bytes: int
    layers: list[tuple[int, str]]
    context_bytes: int
    storage_driver: str
    cpus: int


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

    def build(self, context: Path, tag: str, find_links: str, scenario: str) -> Build:
        args = [
            "build",
            "--progress=plain",
            "--network=host",
            "-f",
            str(context / "Dockerfile.tabular"),
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
            raise RuntimeError(f"build failed ({scenario}):\n{out.stderr[-4000:]}")
        return _parse_progress(out.stderr, scenario, seconds)

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


def run(context: Path, wheel_dir: Path, skip_cold: bool, keep: bool) -> Report:
    engine = Engine()
    tag = "tabular:bench"
    # vfs keeps a full filesystem copy per layer and snapshot: the five builds need about 45 GB.
    subprocess.run([str(IMAGE_TEST), "space", str(MIN_FREE_GB)], check=True)
    try:
        return _measure(engine, tag, context, wheel_dir, skip_cold)
    finally:
        if not keep:
            engine.run("image", "rm", "-f", tag, check=False)
            engine.run("builder", "prune", "-af", check=False)
        if engine.started:
            subprocess.run([str(IMAGE_TEST), "stop"], check=False)


def _measure(engine: Engine, tag: str, context: Path, wheel_dir: Path, skip_cold: bool) -> Report:
    with tempfile.TemporaryDirectory(prefix="tabular-bench-") as tmp:
        work = Path(tmp) / "ctx"
        shutil.copytree(context, work, ignore=COPY_IGNORE)
        builds: list[Build] = []
        with serve_directory(wheel_dir) as find_links:
            if not skip_cold:
                engine.run("image", "rm", "-f", tag, check=False)
                engine.run("builder", "prune", "-af")
                builds.append(engine.build(work, tag, find_links, "cold"))
            builds.append(engine.build(work, tag, find_links, "cached"))
            init = work / "worker" / "__init__.py"
            init.write_text(init.read_text() + f"# bench: code change {time.time()}\n")
            builds.append(engine.build(work, tag, find_links, "code change"))
            lock = work / "requirements.lock"
            lock.write_text(lock.read_text() + f"# bench: dependency change {time.time()}\n")
            builds.append(engine.build(work, tag, find_links, "dependency change, warm uv cache"))
            engine.run("builder", "prune", "-f", "--filter", "type=exec.cachemount")
            lock.write_text(lock.read_text() + f"# bench: dependency change {time.time()}\n")
            builds.append(engine.build(work, tag, find_links, "dependency change, cold uv cache"))
        ctx_bytes = context_bytes(work)
    info = json.loads(engine.run("info", "--format", "{{json .}}"))
    return Report(
        builds=builds,
        image_bytes=int(engine.run("image", "inspect", "-f", "{{.Size}}", tag).strip()),
        base_bytes=int(
            engine.run("image", "inspect", "-f", "{{.Size}}", "python:3.11-slim").strip()
        ),
        compressed_bytes=engine.compressed_size(tag),
        layers=_history(engine, tag),
        context_bytes=ctx_bytes,
        storage_driver=str(info.get("Driver", "?")),
        cpus=int(info.get("NCPU", os.cpu_count() or 0)),
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.2f} MB"


def markdown(report: Report) -> str:
    by = {b.scenario: b for b in report.builds}
    cold = by.get("cold")
    lines = [
        MARK_START,
        f"Measured by `make bench-image` (`python bench/image.py`) on {time.strftime('%Y-%m-%d')}: "
        f"{report.cpus} cores, Debian docker.io engine, storage driver `{report.storage_driver}`, "
        "stand-in `python:3.11-slim` base (mmdebstrap), `INSTALL_OLLAMA=false`, torch wheel "
        "served on loopback, PyPI through this network's proxy.",
        "",
        "| build | seconds | vs cold | steps run | steps cached |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for b in report.builds:
        ratio = f"{100 * b.seconds / cold.seconds:.0f} %" if cold else "-"
        lines.append(
            f"| {b.scenario} | {b.seconds:.1f} | {ratio} | {b.steps_run} | {b.steps_cached} |"
        )
    lines += [
        "",
        "| size | bytes | |",
        "| --- | ---: | --- |",
        f"| image, uncompressed (`docker image inspect`) | {report.image_bytes:,} | "
        f"{_mb(report.image_bytes)} |",
        f"| of which the stand-in base | {report.base_bytes:,} | {_mb(report.base_bytes)} |",
        f"| added by Dockerfile.tabular | {report.image_bytes - report.base_bytes:,} | "
        f"{_mb(report.image_bytes - report.base_bytes)} |",
        f"| image, compressed (`docker save \\| gzip -1`) | {report.compressed_bytes:,} | "
        f"{_mb(report.compressed_bytes)} |",
        f"| build context (`.dockerignore` applied) | {report.context_bytes:,} | "
        f"{_mb(report.context_bytes)} |",
        "",
        "Layers (non-empty, newest first):",
        "",
        "| bytes | | created by |",
        "| ---: | ---: | --- |",
    ]
    for size, created in report.layers:
        lines.append(f"| {size:,} | {_mb(size)} | `{created}` |")
    lines += ["", "Steps rebuilt per scenario (seconds as BuildKit reports them):", ""]
    for b in report.builds:
        if b.scenario == "cold":
            lines.append(f"- cold: all {b.steps_run} steps")
        else:
            steps = "; ".join(f"`{s}` {b.step_seconds.get(s, 0):.1f}" for s in b.run_steps)
            lines.append(f"- {b.scenario}: {steps or 'none'}")
        if b.uv_lines:
            lines.append(f"  - uv ({b.scenario}): " + "; ".join(b.uv_lines))
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
        "--keep", action="store_true", help="keep the image and build cache afterwards"
    )
    args = parser.parse_args(argv)
    report = run(args.context.resolve(), args.wheel_dir, args.skip_cold, args.keep)
    block = markdown(report)
    sys.stdout.write(block)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if args.write:
        write_section(args.write, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
