"""One encode stream on every core against one single-threaded stream per core, alone and beside
a neighbour that takes part of one core now and then.

    python bench/streams.py [--backends torch,onnx-fp32,onnx-int8] [--rows 1536] [--share 0.2]

Why the worker runs one stream per CPU (docs/benchmarks.md, "Pub/Sub"): a forward pass split
over two cores waits at every layer for its slower thread, so a neighbour (on this machine the
Pub/Sub emulator, the client, the worker's own event loop) that takes one core for a moment
stalls both; independent streams lose only what was taken. The neighbour is another process
spinning in bursts of ~5 ms, `--share` of one core on average. Raw `encode` in this process,
shapes and variants as bench/pubsub.py measures them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.pubsub import Raw, Shape, backend, make_rows, rendered  # noqa: E402
from engine.session import cpu_quota  # noqa: E402

VARIANT = {"onnx-fp32": "onnx-fp32", "onnx-int8": "onnx-int8-blocked"}


def neighbour(stop: multiprocessing.synchronize.Event, share: float) -> None:
    """Spin ~5 ms, sleep, so that one core is busy `share` of the time."""
    burst = 0.005
    while not stop.is_set():
        until = time.perf_counter() + burst
        while time.perf_counter() < until:
            pass
        time.sleep(burst * (1 - share) / share)


def measure(raw: Raw, shape: Shape, texts: list[str], share: float) -> tuple[float, float]:
    """(rows/s alone, rows/s beside the neighbour)."""
    alone, _ = raw.rate(shape, texts)
    stop = multiprocessing.Event()
    proc = multiprocessing.Process(target=neighbour, args=(stop, share), daemon=True)
    proc.start()
    time.sleep(0.3)
    try:
        crowded, _ = raw.rate(shape, texts)
    finally:
        stop.set()
        proc.join(5)
    return alone, crowded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="torch,onnx-fp32,onnx-int8")
    parser.add_argument("--rows", type=int, default=1536)
    parser.add_argument("--share", type=float, default=0.2, help="of one core, 0 < share < 1")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    quota = cpu_quota()
    shapes = {"one stream on every core": Shape(1, quota, 64),
              "one stream per core": Shape(quota, 1, 32)}  # fmt: skip
    texts = rendered(make_rows(args.rows))
    print(f"cores {quota}; neighbour: {args.share:.0%} of one core in ~5 ms bursts")
    for name in args.backends.split(","):
        spec = backend(name)
        info = {"backend": "torch"} if name == "torch" else {"backend": "onnx",
                                                              "variant": VARIANT[name]}  # fmt: skip
        raw = Raw(spec.model, info)
        for label, shape in shapes.items():
            runs = [measure(raw, shape, texts, args.share) for _ in range(args.repeat)]
            alone = max(a for a, _ in runs)
            crowded = max(c for _, c in runs)
            print(f"{name:10} {label:26} ({shape}): alone {alone:6.1f} rows/s, beside the "
                  f"neighbour {crowded:6.1f} ({crowded / alone:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
