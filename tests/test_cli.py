"""`tabular-worker run` as a user runs it: a real subprocess, real files, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARED_MODEL_VOLUME_ENABLED": "false",
                "TABULAR_LLM_ENABLED": "false", **(env or {})}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], input=stdin, capture_output=True,
        env=full_env, cwd=cwd, timeout=300,
    )  # fmt: skip


def assert_json_stderr(stderr: bytes) -> None:
    lines = stderr.decode().splitlines()
    assert lines, "expected log lines on stderr"
    for line in lines:
        entry = orjson.loads(line)
        assert entry["severity"] and entry["message"], line


def test_run_examples_prints_one_result_per_job(tmp_path: Path) -> None:
    env = {"TABULAR_OUTPUT_ROOT": str(tmp_path), "TABULAR_SHARD_ROWS": "500"}
    proc = run_cli("run", "--input", "examples/jobs.jsonl", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_json_stderr(proc.stderr)
    results = [orjson.loads(line) for line in proc.stdout.splitlines()]
    jobs = [orjson.loads(line) for line in (ROOT / "examples/jobs.jsonl").read_bytes().splitlines()]
    assert sorted(r["job_id"] for r in results) == sorted(j["job_id"] for j in jobs)
    by_id = {r["job_id"]: r for r in results}
    assert by_id["not-a-valid-job"]["error"]["code"] == "unknown_type"
    assert by_id["embed-products-file"]["rows"] == 6
    tickets = by_id["classify-tickets-zero-shot"]["predictions"]
    assert [p["label"] for p in tickets] == ["billing", "technical", "shipping", "billing"]
    parquet = by_id["classify-tickets-parquet"]
    assert parquet["output"] == {"path": ".cache/demo/tickets-classified", "parts": 3,
                                 "rows": 1500, "errors": 0, "truncated": 0}  # fmt: skip
    out = pq.read_table(tmp_path / ".cache/demo/tickets-classified")
    assert out.column_names == [
        "row",
        "ticket_id",
        "opened",
        "label",
        "score",
        "scores",
        "truncated",
        "error",
    ]
    by_subject = {
        "billing": "Charged twice", "shipping": "Parcel", "technical": "App crashes"
    }  # fmt: skip
    source = pq.read_table(ROOT / "examples/data/tickets.parquet").to_pylist()
    labels = dict(zip(out.column("row").to_pylist(), out.column("label").to_pylist(), strict=True))
    for label, start in by_subject.items():
        rows = [i for i, r in enumerate(source) if r["subject"].startswith(start)]
        assert rows and all(labels[i] == label for i in rows), label


def test_run_stdin_to_output_file_with_garbage_lines(tmp_path: Path) -> None:
    lines = b"\n".join([
        b'{"job_id":"a","type":"embed","table":{"columns":["x"],"rows":[["hi"]]}}',
        b"not json at all",
        b"",
        b"\xff\xfe binary",
    ])  # fmt: skip
    out = tmp_path / "results.jsonl"
    proc = run_cli("run", "--input", "-", "--output", str(out), stdin=lines)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == b""
    assert_json_stderr(proc.stderr)
    results = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(results) == 3
    assert sorted(r["status"] for r in results) == ["error", "error", "ok"]
    assert {r["error"]["code"] for r in results if r["status"] == "error"} == {"invalid_json"}


def test_bad_setting_is_a_clear_json_error() -> None:
    proc = run_cli("run", "--input", "-", stdin=b"", env={"TABULAR_BATCH_MAX_ROWS": "many"})
    assert proc.returncode == 2
    assert_json_stderr(proc.stderr)
    assert b"TABULAR_BATCH_MAX_ROWS" in proc.stderr


def test_missing_input_file() -> None:
    proc = run_cli("run", "--input", "/nonexistent/jobs.jsonl")
    assert proc.returncode == 2
    assert_json_stderr(proc.stderr)


def test_summary_format_is_a_readable_table_not_numbers(tmp_path: Path) -> None:
    """`make demo` runs this: labels and scores per row, vector shapes and a norm check."""
    proc = run_cli("run", "--input", "examples/jobs.jsonl", "--format", "summary",
                   env={"TABULAR_OUTPUT_ROOT": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout.decode()
    assert "[0." not in text and "data" not in text, "no vectors on the terminal"
    lines = text.splitlines()
    assert "embed-customers: ok, embed, 4 rows x 384 dims, norms 1.000..1.000 (unit length)" in text
    assert any(line.startswith("classify-tickets-zero-shot: ok, classify (zero_shot), 4 rows")
               for line in lines)  # fmt: skip
    assert [line.split()[2] for line in lines if line.startswith("  row ")][:4] == [
        "billing", "technical", "shipping", "billing"]  # fmt: skip
    assert "not-a-valid-job: error unknown_type: type must be one of" in text
    written = "classify-tickets-parquet: ok, classify, 1500 rows written to .cache/demo/"
    assert written + "tickets-classified/ (1 Parquet part, 0 rows with errors)" in text
    assert len(lines) < 30


def test_format_follows_the_terminal(tmp_path: Path) -> None:
    """auto: a summary when stdout is a terminal, JSON lines into a pipe; progress (jobs, rows,
    rows/s) on a terminal's stderr."""
    import pty

    job = b'{"job_id":"a","type":"embed","table":{"columns":["x"],"rows":[["hi"],["ho"]]}}\n'
    master, slave = pty.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARED_MODEL_VOLUME_ENABLED": "false",
           "TABULAR_LLM_ENABLED": "false"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--input", "-"], input=job,
                          stdout=slave, stderr=slave, env=env, cwd=ROOT, timeout=300)  # fmt: skip
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0, seen[-2000:]
    assert b"a: ok, embed, 2 rows x 384 dims" in seen
    assert b'"embeddings"' not in seen
    assert b"1 jobs, 2 rows done (" in seen and b"rows/s)" in seen
    piped = run_cli("run", "--input", "-", stdin=job)
    assert orjson.loads(piped.stdout)["job_id"] == "a"
