"""The inference engine: every backend and variant against torch fp32, in one run, on the same rows.

    python bench/engine.py [--models minilm,xlmr] [--rows 256] [--rounds 5] [--write FILE]

For the packaged all-MiniLM-L6-v2 and for bge-m3's architecture (XLM-RoBERTa large, random
weights, built offline by harness.models), each exported and gated exactly as `tabular-sync`
does it (cached under .cache/bench/ between runs):

* rows/s of torch fp32 (sentence-transformers), ONNX fp32 and every int8 variant, on ~20-token
  rows and ~100-token rows, encoded 64 rows per call as the batcher hands them over; each round
  times every engine once, and a ratio is the median over rounds of (torch time / engine time);
* cold start: process start to the first result of `tabular-worker run` with one job, and the
  process's peak RSS, per backend (torch, and each ONNX precision that `auto` would pick);
* each variant's gate figures on the calibration set (from variants.json, as recorded at export)
  and again on held-out data (bench/data/heldout.jsonl) that the gate never saw.

Load average is printed before and after: compare ratios from one run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

import orjson  # noqa: E402

from base.cache.variants import Variants, read_variants  # noqa: E402
from engine.encoder import Encoder, OnnxEncoder, TorchEncoder  # noqa: E402
from engine.gate import Calibration, answers, figures, load_calibration  # noqa: E402

WORK = ROOT / ".cache" / "bench"
HELDOUT = ROOT / "bench" / "data" / "heldout.jsonl"
CALL_ROWS = 64  # rows per encode call: the batcher's default batch
MARK_START, MARK_END = "<!-- bench-engine:start -->", "<!-- bench-engine:end -->"
TARGETS = {"minilm": 2.5, "xlmr": 2.0}  # served int8 / torch fp32, short rows
_REVIEWS = [
    "The delivery was two days late and the box was damaged, but support replaced it quickly "
    "and the product itself works as described.",
    "Comfortable for long walks; the sole wore down faster than I expected after three months "
    "of daily use on city pavement and gravel paths.",
    "Setup took ten minutes, the app kept disconnecting from the router, and the manual did not "
    "mention the reset button hidden under the base.",
]


@dataclass
class Engine:
    name: str
    encoder: Encoder
    seconds: dict[str, list[float]] = field(default_factory=dict)


def short_rows(n: int) -> list[str]:
    from bench.pipeline import COLUMNS, make_rows
    from worker.rowtext import row_text

    return [row_text(COLUMNS, row) for row in make_rows(n)]


def long_rows(n: int) -> list[str]:
    base = short_rows(n)
    return [f"{row}; review: {_REVIEWS[i % 3]} {_REVIEWS[(i + 1) % 3]}" for i, row in
            enumerate(base)]  # fmt: skip


def prepare(model: str) -> Path:
    """The model directory with current variants (exported once, then reused)."""
    from engine.build import build_variants
    from engine.version import EXPORT_VERSION

    path = WORK / model
    record = read_variants(path) if path.is_dir() else None
    if record is not None and record.export_version == EXPORT_VERSION:
        return path
    if model == "minilm":
        from sync.variants import export_directory

        export_directory("all-MiniLM-L6-v2", path)
    else:
        from harness.models import build_xlmr

        build_xlmr(path, size="full", max_seq_length=512)
        build_variants(path)
    return path


def measure_speed(path: Path, rows: dict[str, list[str]], rounds: int) -> dict[str, Any]:
    record = read_variants(path)
    assert record is not None
    engines = [Engine("torch-fp32", TorchEncoder(path))]
    engines += [Engine(v.name, OnnxEncoder(path, v.model_file, v.precision))
                for v in record.variants]  # fmt: skip
    for engine in engines:  # warm up: kernels, allocator, first-call costs
        engine.encoder.encode(rows["short"][:CALL_ROWS])
    for kind, texts in rows.items():
        for _ in range(rounds):
            for engine in engines:
                started = time.perf_counter()
                for i in range(0, len(texts), CALL_ROWS):
                    engine.encoder.encode(texts[i : i + CALL_ROWS])
                engine.seconds.setdefault(kind, []).append(time.perf_counter() - started)
    out: dict[str, Any] = {}
    torch_engine = engines[0]
    for engine in engines:
        out[engine.name] = {}
        for kind, texts in rows.items():
            ratios = [t / e for t, e in zip(torch_engine.seconds[kind], engine.seconds[kind],
                                            strict=True)]  # fmt: skip
            out[engine.name][kind] = {
                "rows_per_s": round(len(texts) / statistics.median(engine.seconds[kind]), 1),
                "x_torch": round(statistics.median(ratios), 2),
            }
    return out


def heldout_gate(path: Path, record: Variants) -> dict[str, dict[str, float]]:
    data: Calibration = load_calibration(HELDOUT)
    reference = answers(TorchEncoder(path), data)
    return {v.name: figures(reference, answers(OnnxEncoder(path, v.model_file, v.precision), data))
            for v in record.variants}  # fmt: skip


# A small process starts the worker and reports its peak RSS: a child forked from this large
# process would count this process's pages in its own high-water mark.
_LAUNCHER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[2:], check=True); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))"
)


def cold_start(path: Path, backend: str, precision: str, repeats: int) -> dict[str, float]:
    """Median seconds from process start to the first result line, and the peak RSS."""
    job = orjson.dumps({"job_id": "cold", "type": "embed",
                        "table": {"columns": ["a"], "rows": [["first row"]]}})  # fmt: skip
    env = {**os.environ, "TABULAR_EMBEDDING_MODEL": str(path), "TABULAR_LLM_ENABLED": "false",
           "SHARED_MODEL_VOLUME_ENABLED": "false", "TABULAR_INFERENCE_BACKEND": backend,
           "TABULAR_INFERENCE_PRECISION": precision}  # fmt: skip
    times, rss = [], []
    with tempfile.NamedTemporaryFile() as jobs, tempfile.NamedTemporaryFile() as peak:
        jobs.write(job + b"\n")
        jobs.flush()
        command = [sys.executable, "-m", "worker", "run", "--input", jobs.name]
        for _ in range(repeats):
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, peak.name, *command], cwd=ROOT, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdout is not None
            first = proc.stdout.readline()
            times.append(time.perf_counter() - started)
            proc.stdout.read()
            assert proc.wait() == 0 and b'"ok"' in first, first
            rss.append(int(Path(peak.name).read_text()) / 1024)
    return {"seconds": round(statistics.median(times), 2), "peak_rss_mb": round(max(rss))}


def run(model: str, n_rows: int, rounds: int, repeats: int) -> dict[str, Any]:
    path = prepare(model)
    record = read_variants(path)
    assert record is not None
    rows = {"short": short_rows(n_rows), "long": long_rows(n_rows)}
    tokens = {k: _mean_tokens(path, v) for k, v in rows.items()}
    result: dict[str, Any] = {"tokens": tokens, "speed": measure_speed(path, rows, rounds)}
    result["gate"] = {v.name: {"passed": v.passed, **v.gate} for v in record.variants}
    result["heldout"] = heldout_gate(path, record)
    starts = {"torch": cold_start(path, "torch", "auto", repeats)}
    for precision in sorted({v.precision for v in record.variants}):
        starts[f"onnx-{precision}"] = cold_start(path, "onnx", precision, repeats)
    result["cold_start"] = starts
    return result


def _mean_tokens(path: Path, texts: list[str]) -> float:
    from engine.config import read_config
    from engine.tokenizer import TextTokenizer

    config = read_config(path)
    tokenizer = TextTokenizer(config.tokenizer_file, config.max_seq_length, config.do_lower_case)
    return round(float(tokenizer.encode(texts)[1].mean()), 1)


def report(results: dict[str, Any], load: tuple[float, float]) -> str:
    lines = [f"Load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after.", ""]
    for model, res in results.items():
        lines += [f"**{model}** (mean tokens per row: short {res['tokens']['short']}, "
                  f"long {res['tokens']['long']})", "",
                  "| engine | short rows/s | x torch | long rows/s | x torch | gate (calibration)"
                  " | held-out: min cos / Spearman / zero-shot / few-shot |",
                  "| --- | ---: | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
        for name, speed in res["speed"].items():
            gate, held = res["gate"].get(name), res["heldout"].get(name)
            verdict = "reference" if gate is None else ("passed" if gate["passed"] else "failed")
            figs = (
                ""
                if held is None
                else (
                    f"{held['min_cosine']:.5f} / {held['spearman']:.4f} / "
                    f"{held['zero_shot_agreement']:.3f} / {held['few_shot_agreement']:.3f}"
                )
            )
            lines.append(f"| {name} | {speed['short']['rows_per_s']} | {speed['short']['x_torch']}"
                         f" | {speed['long']['rows_per_s']} | {speed['long']['x_torch']} | "
                         f"{verdict} | {figs} |")  # fmt: skip
        lines += ["", "| cold start | process start to first result | x torch | peak RSS MB |"
                  " x torch |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        base = res["cold_start"]["torch"]
        for name, start in res["cold_start"].items():
            seconds, rss = start["seconds"], start["peak_rss_mb"]
            lines.append(f"| {name} | {seconds} s | {seconds / base['seconds']:.2f} | {rss} | "
                         f"{rss / base['peak_rss_mb']:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    body = path.read_text()
    if MARK_START not in body:
        body += f"\n{MARK_START}\n{MARK_END}\n"
    head, rest = body.split(MARK_START, 1)
    path.write_text(f"{head}{MARK_START}\n{text}\n{MARK_END}{rest.split(MARK_END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="minilm,xlmr")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3, help="cold starts per backend")
    parser.add_argument("--write", type=Path, help="replace the section in this markdown file")
    args = parser.parse_args(argv)
    from base import logs

    logs.setup("WARNING")
    before = os.getloadavg()[0]
    results = {m: run(m, args.rows if m == "minilm" else args.rows // 4, args.rounds, args.starts)
               for m in args.models.split(",")}  # fmt: skip
    text = report(results, (before, os.getloadavg()[0]))
    print(text)
    print(orjson.dumps(results).decode(), file=sys.stderr)
    if args.write:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
