"""Pipeline throughput against raw `SentenceTransformer.encode`, plus bge-m3 sizing.

    python bench/pipeline.py [--rows N] [--repeats R] [--sizing-rows M] [--no-sizing]

On the same generated rows (customer orders, ~21 tokens each with the packaged
all-MiniLM-L6-v2 tokenizer), in one process:

* raw `SentenceTransformer.encode` at batch 32 and at batch 1 (reference);
* the local pipeline (`Pipeline.handle(bytes)` with `WorkerSettings.from_env()`, driven like
  `tabular-worker run`: at most 64 jobs in flight, each result serialised) for 64-row jobs
  and for 1-row jobs.

Every path is warmed up first. Each of R rounds runs raw batch 32, both pipeline shapes,
raw batch 32 again, then raw batch 1; rows/s are medians over rounds, and each ratio is the
median of per-round ratios against that round's mean raw batch-32 speed, so load from other
processes on a shared machine largely cancels out. Two columns help read a noisy run: "model
busy" (share of the pipeline's wall time spent inside the model's encode; the rest is pipeline
overhead or waiting) and "CPU ms/row" (process CPU time, all threads). Then a subprocess sizes
the production model: a randomly initialised XLM-RoBERTa large (bge-m3's architecture) encoding
the same rows at batch 32, with its own peak RSS. Results go to stdout as a table;
docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

COLUMNS = ["customer", "city", "product", "total"]
Row = list[str | int | float | bool | None]  # a table row, as worker.jobs.Cell
CONCURRENCY = 64  # jobs in flight, as `tabular-worker run` with the default settings
TARGET_64 = 0.90
LONG_ROWS, LONG_TOKENS = 4, 512  # bge-m3 sizing: one forward pass of long rows, for memory
TARGET_1 = 0.75

# bge-m3 = XLM-RoBERTa large with an 8k position table (BAAI/bge-m3 config.json).
BGE_M3 = {
    "vocab_size": 250_002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 8194,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

_NAMES = ["Acme", "Bluebird", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark",
          "Wayne", "Hooli", "Vandelay", "Dunder", "Soylent", "Tyrell", "Wonka", "Pied"]  # fmt: skip
_SUFFIXES = ["Corp", "Cafe", "Logistics", "Traders", "GmbH", "Ltd", "Foods", "Labs", "Studio",
             "Outfitters"]  # fmt: skip
_CITIES = ["Berlin", "Lisbon", "Singapore", "Dublin", "Austin", "Lyon", "Osaka", "Toronto",
           "Nairobi", "Melbourne", "Oslo", "Porto"]  # fmt: skip
_PRODUCTS = ["trail running shoes", "office chair", "water bottle", "noise-cancelling headphones",
             "cast iron skillet", "wool socks", "espresso machine", "desk lamp", "yoga mat",
             "backpack", "wireless mouse", "rain jacket"]  # fmt: skip


def make_rows(n: int, seed: int = 7) -> list[Row]:
    """Deterministic order records: `customer: Acme Labs; city: Oslo; product: ...; total: 12`."""
    rng = random.Random(seed)
    return [
        [f"{rng.choice(_NAMES)} {rng.choice(_SUFFIXES)}", rng.choice(_CITIES),
         rng.choice(_PRODUCTS), rng.randint(5, 900)]
        for _ in range(n)
    ]  # fmt: skip


def peak_rss_mb() -> float:
    """VmHWM of this process (peak resident set), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# MiniLM: raw encode vs the pipeline


@dataclass
class Measurement:
    name: str
    rows: int
    runs: list[float] = field(default_factory=list)  # rows/s
    batches: list[int] = field(default_factory=list)  # encode call sizes (pipeline only)
    busy: list[float] = field(default_factory=list)  # share of wall time the model encoded
    cpu_ms: list[float] = field(default_factory=list)  # process CPU time (all threads) a row

    def add(self, seconds: float, cpu_seconds: float) -> None:
        self.runs.append(self.rows / seconds)
        self.cpu_ms.append(cpu_seconds * 1000 / self.rows)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def ratio(self, base: Measurement) -> float:
        """Median over rounds of this run's rows/s over the same round's `base` rows/s."""
        return statistics.median(a / b for a, b in zip(self.runs, base.runs, strict=True))


def embed_job(job_id: str, rows: list[Row]) -> bytes:
    import orjson

    return orjson.dumps(
        {"job_id": job_id, "type": "embed", "table": {"columns": COLUMNS, "rows": rows}}
    )


async def drive(handle: Callable[[bytes], Any], payloads: list[bytes], concurrency: int) -> float:
    """Seconds to answer every payload with at most `concurrency` in flight (as `run` does)."""
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    errors: list[bytes] = []

    async def one(payload: bytes) -> None:
        try:
            outcome = await handle(payload)
            data = outcome.data()  # `run` writes this line; its cost is part of a job
            if outcome.status != "ok":
                errors.append(data)
        finally:
            slots.release()

    started = time.perf_counter()
    for payload in payloads:
        await slots.acquire()
        task = asyncio.create_task(one(payload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} jobs failed, e.g. {errors[0][:300]!r}")
    return elapsed


async def measure_minilm(n_rows: int, repeats: int) -> tuple[list[Measurement], dict[str, Any]]:
    from engine.config import packaged_model_dir
    from engine.encoder import TorchEncoder
    from worker.model import EmbeddingModel, ModelInfo, Tuning
    from worker.pipeline import Pipeline
    from worker.rowtext import row_text
    from worker.settings import WorkerSettings

    load_before = os.getloadavg()[0]
    path = packaged_model_dir()
    info = ModelInfo("all-MiniLM-L6-v2", str(path), "packaged")
    model = EmbeddingModel.load(path, info, None, Tuning())  # torch
    model.warm_up()
    st = cast(TorchEncoder, model.encoder).st
    settings = WorkerSettings.from_env()
    pipeline = Pipeline(settings, model)
    # Time spent inside the model's encode: (pipeline rows/s) / (model busy share) is what the
    # model itself delivered, so the busy share separates pipeline bubbles from model speed.
    encoding = [0.0]
    inner = model.encode

    def timed_encode(batch: list[str]) -> Any:
        started = time.perf_counter()
        try:
            return inner(batch)
        finally:
            encoding[0] += time.perf_counter() - started

    setattr(model, "encode", timed_encode)  # noqa: B010 (mypy: cannot assign to a method)

    rows = make_rows(n_rows)
    texts = [row_text(COLUMNS, r) for r in rows]
    n_b1 = max(32, n_rows // 4)  # batch 1 is slow; a quarter of the rows is plenty
    tokens = [len(ids) for ids in st.tokenizer(texts)["input_ids"]]
    jobs_64 = [embed_job(f"r64-{i}", rows[i : i + 64]) for i in range(0, n_rows, 64)]
    jobs_1 = [embed_job(f"r1-{i}", [row]) for i, row in enumerate(rows)]

    def raw(batch_size: int, subset: list[str]) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one raw encode of `subset`."""
        started, cpu = time.perf_counter(), time.process_time()
        st.encode(subset, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return time.perf_counter() - started, time.process_time() - cpu

    raw32 = Measurement("raw encode, batch 32", n_rows)
    raw1 = Measurement("raw encode, batch 1", n_b1)
    pipe64 = Measurement("pipeline, 64-row jobs", n_rows)
    pipe1 = Measurement("pipeline, 1-row jobs", n_rows)

    # warm-up: every path once, on a slice
    raw(32, texts[:128])
    raw(1, texts[:16])
    await drive(pipeline.handle, jobs_64[:4], CONCURRENCY)
    await drive(pipeline.handle, jobs_1[:256], CONCURRENCY)

    # Each round brackets the pipeline runs with two raw batch-32 runs; a round's ratio uses
    # their mean, so load from other processes on a shared machine cancels out of the ratios.
    for _ in range(repeats):
        before = raw(32, texts)
        for m, jobs in ((pipe64, jobs_64), (pipe1, jobs_1)):
            pipeline.batcher.batches.clear()
            encoding[0] = 0.0
            cpu = time.process_time()
            seconds = await drive(pipeline.handle, jobs, CONCURRENCY)
            m.add(seconds, time.process_time() - cpu)
            m.busy.append(encoding[0] / seconds)
            m.batches += pipeline.batcher.batches
        after = raw(32, texts)
        raw32.add((before[0] + after[0]) / 2, (before[1] + after[1]) / 2)
        raw1.add(*raw(1, texts[:n_b1]))
    await pipeline.close()
    context = {
        "tokens_mean": statistics.mean(tokens),
        "tokens_min": min(tokens),
        "tokens_max": max(tokens),
        "example": texts[0],
        "torch_threads": _torch_threads(),
        "batch_max_rows": settings.batch_max_rows,
        "batch_max_wait_ms": settings.batch_max_wait_ms,
        "peak_rss_mb": peak_rss_mb(),
        "load_before": load_before,
    }
    return [raw32, raw1, pipe64, pipe1], context


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


# ---------------------------------------------------------------------------------------------
# bge-m3 sizing (runs in its own process: `--sizing-child`)


def sizing_child(n_rows: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """Random-init XLM-RoBERTa large + mean pooling on the benchmark rows; rows/s and memory.

    Input ids come from the MiniLM WordPiece tokenizer: the same token count per row as the
    pipeline sees (bge-m3's own SentencePiece tokenizer gives a similar count on English text).
    Ids are below 30522, inside XLM-R's vocabulary; with random weights their meaning is moot.
    Compute and memory depend on the architecture and the sequence lengths, not on the weights.
    Mean pooling stands in for bge-m3's CLS pooling (a negligible difference in cost). Last, one
    forward pass over LONG_ROWS random rows of LONG_TOKENS tokens shows the memory long rows add.
    """
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    from engine.config import packaged_model_dir
    from worker.rowtext import row_text

    rss_start = rss_mb()
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir()))
    texts = [row_text(COLUMNS, r) for r in make_rows(n_rows)]
    torch.manual_seed(0)
    built = time.perf_counter()
    model = XLMRobertaModel(XLMRobertaConfig(**BGE_M3), add_pooling_layer=False).eval()
    build_seconds = time.perf_counter() - built
    params = sum(p.numel() for p in model.parameters())
    rss_loaded = rss_mb()

    def encode(batch: list[str]) -> Any:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=512, return_tensors="pt")
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)

    def run(size: int, subset: list[str]) -> float:
        started = time.perf_counter()
        for i in range(0, len(subset), size):
            encode(subset[i : i + size])
        return len(subset) / (time.perf_counter() - started)

    with torch.inference_mode():
        run(batch_size, texts[:batch_size])  # warm-up
        runs = [run(batch_size, texts) for _ in range(repeats)]
        runs_b1 = [run(1, texts[:16]) for _ in range(repeats)]
        peak_short = peak_rss_mb()
        # Long rows: activations grow with batch x length (attention with length squared).
        ids = torch.randint(5, 30_000, (LONG_ROWS, LONG_TOKENS))
        started = time.perf_counter()
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        long_seconds = time.perf_counter() - started
    return {
        "params": params,
        "weights_mb": params * 4 / 1e6,
        "build_seconds": build_seconds,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": peak_short,
        "long_rows": LONG_ROWS,
        "long_tokens": LONG_TOKENS,
        "long_seconds": long_seconds,
        "peak_rss_long_mb": peak_rss_mb(),
        "batch_size": batch_size,
        "rows": n_rows,
        "runs": runs,
        "rows_per_s": statistics.median(runs),
        "rows_per_s_b1": statistics.median(runs_b1),
        "torch_threads": int(torch.get_num_threads()),
    }


def measure_sizing(n_rows: int, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--sizing-child", "--sizing-rows", str(n_rows),
           "--repeats", str(repeats)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"sizing subprocess failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------
# report


def report(
    measurements: list[Measurement], context: dict[str, Any], sizing: dict[str, Any] | None
) -> None:
    by_name = {m.name: m for m in measurements}
    base = by_name["raw encode, batch 32"]
    raw32 = base.median
    print(f"rows: {measurements[0].rows} order records, {context['tokens_mean']:.1f} tokens "
          f"mean ({context['tokens_min']}-{context['tokens_max']}, with [CLS]/[SEP]), e.g. "
          f"{context['example']!r}")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs, load average {context['load_before']:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; torch threads {context['torch_threads']}; "
          f"batcher: TABULAR_BATCH_MAX_ROWS={context['batch_max_rows']}, "
          f"TABULAR_BATCH_MAX_WAIT_MS={context['batch_max_wait_ms']:g}; "
          f"{CONCURRENCY} jobs in flight")  # fmt: skip
    print()
    print(f"{'measurement':<24} {'rows':>6} {'rows/s':>8} {'x raw b32':>10} {'mean batch':>11}"
          f" {'model busy':>11} {'CPU ms/row':>11}  runs (rows/s)")  # fmt: skip
    for m in measurements:
        mean_batch = f"{statistics.mean(m.batches):.1f}" if m.batches else "-"
        busy = f"{statistics.median(m.busy):.1%}" if m.busy else "-"
        cpu = statistics.median(m.cpu_ms)
        runs = " ".join(f"{r:.1f}" for r in m.runs)
        print(f"{m.name:<24} {m.rows:>6} {m.median:>8.1f} {m.ratio(base):>10.2f} "
              f"{mean_batch:>11} {busy:>11} {cpu:>11.2f}  {runs}")  # fmt: skip
    print()
    for name, target in (("pipeline, 64-row jobs", TARGET_64), ("pipeline, 1-row jobs", TARGET_1)):
        ratio = by_name[name].ratio(base)
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"ratio {name} / raw batch 32 = {ratio:.3f}  ({verdict} target >= {target:.2f})")
    print(f"peak RSS of this process (MiniLM + pipeline): {context['peak_rss_mb']:.0f} MB")
    if sizing is None:
        return
    print()
    print(f"bge-m3 sizing (random-init XLM-RoBERTa large, {sizing['params'] / 1e6:.0f}M params, "
          f"{sizing['weights_mb']:.0f} MB fp32; own process, torch threads "
          f"{sizing['torch_threads']}):")  # fmt: skip
    print(f"  rows/s at batch {sizing['batch_size']}: {sizing['rows_per_s']:.1f} "
          f"(runs {' '.join(f'{r:.1f}' for r in sizing['runs'])}; {sizing['rows']} rows); "
          f"at batch 1: {sizing['rows_per_s_b1']:.1f}")  # fmt: skip
    print(f"  RSS: {sizing['rss_start_mb']:.0f} MB after imports, {sizing['rss_loaded_mb']:.0f} "
          f"MB with the model built, peak {sizing['peak_rss_mb']:.0f} MB on the rows")  # fmt: skip
    print(f"  one pass of {sizing['long_rows']} rows x {sizing['long_tokens']} tokens: "
          f"{sizing['long_seconds']:.1f} s, peak RSS then {sizing['peak_rss_long_mb']:.0f} MB "
          f"(+{sizing['peak_rss_long_mb'] - sizing['peak_rss_mb']:.0f} MB)")  # fmt: skip
    print(f"  vs MiniLM raw batch 32: {sizing['rows_per_s'] / raw32:.3f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024, help="rows per measurement (1024)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of measurements (5)")
    parser.add_argument("--sizing-rows", type=int, default=96, help="bge-m3 rows per run (96)")
    parser.add_argument("--no-sizing", action="store_true", help="skip the bge-m3 sizing")
    parser.add_argument("--sizing-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizing_child:
        print(json.dumps(sizing_child(args.sizing_rows, args.repeats, 32)))
        return 0
    from base import logs

    logs.setup("WARNING")
    started = time.perf_counter()
    measurements, context = asyncio.run(measure_minilm(args.rows, args.repeats))
    sizing = None if args.no_sizing else measure_sizing(args.sizing_rows, min(args.repeats, 3))
    report(measurements, context, sizing)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
