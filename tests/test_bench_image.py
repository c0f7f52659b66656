"""bench/image.py's parsing of BuildKit progress and its report block (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from bench.image import MARK_END, MARK_START, _parse_progress, write_section

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
