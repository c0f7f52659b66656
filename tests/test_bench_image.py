"""bench/image.py's parsing of BuildKit progress and its report block (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from bench.image import (
    MARK_END,
    MARK_START,
    Build,
    Image,
    Report,
    _parse_progress,
    _seconds_between,
    markdown,
    write_section,
)

PROGRESS = """\
#1 [internal] load build definition from Dockerfile.tabular
#1 DONE 0.0s
#4 [builder 1/6] FROM docker.io/library/python:3.11-slim
#4 DONE 0.0s
#12 [builder 5/6] COPY requirements.lock pyproject.toml /opt/app/
#12 CACHED
#13 [builder 6/6] RUN --mount=type=cache,target=/root/.cache/uv uv pip install -r x
#13 11.90 Resolved 73 packages in 894ms
#13 23.03 Installed 72 packages in 11.12s
#13 DONE 41.5s
#17 [runtime 7/8] COPY worker/ /opt/app/worker/
#17 DONE 4.1s
#18 [runtime 8/8] COPY sync/ /opt/app/sync/
#18 CACHED
"""


def test_parse_progress_counts_rebuilt_and_cached_steps() -> None:
    build = _parse_progress(PROGRESS, "code change", 12.34)
    assert build.seconds == 12.3
    assert build.steps_cached == 2
    assert build.steps_run == 2  # FROM and [internal] are not steps
    assert build.run_steps[0].startswith("[builder 6/6] RUN")
    assert build.step_seconds[build.run_steps[0]] == 41.5
    assert build.step_seconds["[runtime 7/8] COPY worker/ /opt/app/worker/"] == 4.1
    assert build.uv_lines == ["Resolved 73 packages in 894ms", "Installed 72 packages in 11.12s"]


def test_write_section_replaces_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nintro\n\n{MARK_START}\nold\n{MARK_END}\n\nafter\n")
    write_section(doc, f"{MARK_START}\nnew\n{MARK_END}\n")
    assert doc.read_text() == f"# B\n\nintro\n\n{MARK_START}\nnew\n{MARK_END}\n\nafter\n"
    fresh = tmp_path / "fresh.md"
    write_section(fresh, f"{MARK_START}\nx\n{MARK_END}\n")
    assert fresh.read_text() == f"{MARK_START}\nx\n{MARK_END}\n"


def test_seconds_between_docker_start_and_log_time() -> None:
    started = "2026-12-04T03:40:01.123456789Z"  # docker: nanoseconds, Z
    ready = "2026-12-04T03:40:03.623456+00:00"  # base.logs: isoformat, microseconds
    assert _seconds_between(started, ready) == 2.5


def test_markdown_reports_each_image_and_the_start_ratio() -> None:
    builds = [
        Build("cold", 100.0, 10, 0, target="worker"),
        Build("code change", 8.0, 2, 8, run_steps=["[worker 3/3] COPY worker/"], target="worker"),
        Build("cold", 200.0, 14, 0, target="sync"),
    ]
    images = [
        Image("tabular-worker", 600_000_000, 200_000_000, [(350_000_000, "COPY /opt/venv")]),
        Image("tabular-sync", 1_400_000_000, 500_000_000, []),
    ]
    starts = {"tabular-single": [4.0, 5.0, 6.0], "tabular-worker": [2.0, 2.5, 3.0]}
    report = Report(builds, images, 240_000_000, starts, 170_000, "vfs", 2, "b35359b", "0.1 0.2")
    text = markdown(report)
    assert text.startswith(MARK_START) and text.rstrip().endswith(MARK_END)
    assert "| worker | code change | 8.0 | 8 % | 2 | 8 |" in text
    assert "| tabular-worker | 600 MB | 360 MB | 200 MB | 1 |" in text
    assert "| tabular-single | 3 | 5.00 | 4.00 | 6.00 |" in text
    assert "Worker / single image start: 0.50x." in text
    assert "load average 0.1 0.2 at the start" in text
