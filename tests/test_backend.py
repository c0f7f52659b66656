"""TABULAR_INFERENCE_BACKEND / _PRECISION: what serves, and clear errors when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from base.cache.variants import Variant, Variants
from harness.worker_proc import ROOT
from worker import backend
from worker.backend import BackendUnavailable, choose


def variant(precision: str, passed: bool, speedup: float, suffix: str = "") -> Variant:
    return Variant(f"onnx-{precision}{suffix}", "onnx", precision, (f"onnx/{precision}.onnx",),
                   passed, {"speedup": speedup})  # fmt: skip


FP32 = variant("fp32", True, 1.5)
INT8 = variant("int8", True, 2.6)
INT8_SLOW = variant("int8", True, 1.2, "-blocked")
INT8_BAD = variant("int8", False, 3.0, "-bad")


def record(*variants: Variant) -> Variants:
    return Variants(1, variants)


@pytest.mark.parametrize(
    ("variants", "backend_", "precision", "expected"),
    [
        (record(FP32, INT8), "auto", "auto", INT8),
        (record(FP32, INT8_SLOW), "auto", "auto", FP32),  # the fastest, not the smallest
        (record(FP32, INT8_BAD), "auto", "auto", FP32),  # never a failed variant
        (record(INT8_BAD), "auto", "auto", None),  # torch
        (None, "auto", "auto", None),
        (record(FP32, INT8), "torch", "auto", None),
        (record(FP32, INT8), "onnx", "fp32", FP32),
        (record(FP32, INT8_BAD), "onnx", "int8", INT8_BAD),  # named explicitly: served, warned
        (record(FP32, INT8_SLOW, INT8), "auto", "int8", INT8),
    ],
)
def test_choice(
    variants: Variants | None, backend_: str, precision: str, expected: Variant | None
) -> None:
    assert choose(variants, backend_, precision) == expected


@pytest.mark.parametrize(
    ("variants", "backend_", "precision", "message"),
    [
        (record(FP32), "torch", "int8", "TABULAR_INFERENCE_PRECISION=int8 needs ONNX"),
        (None, "onnx", "auto", "no such ONNX variant"),
        (record(FP32), "onnx", "int8", "no such ONNX variant"),
        (record(INT8_BAD), "onnx", "auto", "passed the quality gate"),
    ],
)
def test_impossible_choices_name_the_variable(
    variants: Variants | None, backend_: str, precision: str, message: str
) -> None:
    with pytest.raises(BackendUnavailable, match=message) as raised:
        choose(variants, backend_, precision)
    assert "TABULAR_INFERENCE_" in str(raised.value)


def test_missing_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "installed", lambda module: module == "onnxruntime")
    assert choose(record(FP32), "auto", "auto") == FP32
    with pytest.raises(BackendUnavailable, match="torch/sentence-transformers are not installed"):
        choose(record(INT8_BAD), "auto", "auto")
    monkeypatch.setattr(backend, "installed", lambda module: module != "onnxruntime")
    assert choose(record(FP32), "auto", "auto") is None  # torch serves
    with pytest.raises(BackendUnavailable, match="onnxruntime is not installed"):
        choose(record(FP32), "onnx", "auto")


def run_worker(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    jobs = tmp_path / "jobs.jsonl"
    job = {"job_id": "j", "type": "embed", "table": {"columns": ["a"], "rows": [["x"]]}}
    jobs.write_bytes(orjson.dumps(job) + b"\n")
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARED_MODEL_VOLUME_ENABLED": "false",
            "TABULAR_LLM_ENABLED": "false", **env}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "worker", "run", "--input", str(jobs)],
                          capture_output=True, env=full, cwd=ROOT, timeout=300)  # fmt: skip


def test_asking_for_onnx_without_variants_exits_2(tmp_path: Path) -> None:
    proc = run_worker(tmp_path, {"TABULAR_INFERENCE_BACKEND": "onnx"})  # the packaged model
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == b""
    (line,) = [orjson.loads(x) for x in proc.stderr.splitlines() if b"unavailable" in x]
    assert line["severity"] == "ERROR" and "TABULAR_INFERENCE_BACKEND=onnx" in line["error"]


def test_a_bad_backend_value_exits_2(tmp_path: Path) -> None:
    proc = run_worker(tmp_path, {"TABULAR_INFERENCE_BACKEND": "gpu"})
    assert proc.returncode == 2
    assert b"TABULAR_INFERENCE_BACKEND must be auto, onnx or torch" in proc.stderr
