"""Capacity model: rows/s per instance, instances for a rate, drain time and cost of a backlog.

    python bench/scale.py table        # the tables of docs/scaling.md
    python bench/scale.py drain --backend bge-m3-torch --jobs 2000 --rows-per-job 100 \\
        --target 10 --max-instances 20 --cold-start 90 --timeline

Service rates come from docs/benchmarks.md, fitted as ``per_call + n * per_row`` seconds per
encode call of n rows; the drain simulation is bench/drain.py, the autoscaler's rules (CREMA with
a KEDA `gcp-pubsub` trigger) bench/scaler.py. Prices: Cloud Run instance-based billing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.drain import ServiceRate, Simulation
from bench.scaler import ScalerRules


@dataclass(frozen=True)
class Backend:
    model: str
    backend: str
    rate: ServiceRate | None  # None: not measured yet
    source: str


def _fit(rows_s_batch1: float, rows_s_batch32: float) -> ServiceRate:
    """per_call and per_row from rows/s measured at batch 1 and batch 32."""
    t1, t32 = 1 / rows_s_batch1, 32 / rows_s_batch32
    per_row = (t32 - t1) / 31
    return ServiceRate(per_call=t1 - per_row, per_row=per_row)


# Rows/s of one 2-vCPU instance, from docs/benchmarks.md (raw encode of ~21-token rows).
BACKENDS = {
    "minilm-torch": Backend("all-MiniLM-L6-v2", "torch fp32", _fit(80.0, 250.0),
                            "docs/benchmarks.md: ~80 rows/s at batch 1, ~250 at batch 32"),
    "bge-m3-torch": Backend("BAAI/bge-m3", "torch fp32", _fit(4.5, 10.5),
                            "docs/benchmarks.md bge-m3 sizing: 4.5 rows/s at batch 1, 10.5 at 32"),
    "minilm-onnx": Backend("all-MiniLM-L6-v2", "ONNX (fp32 / int8)", None,
                           "TO BE MEASURED (ONNX engine work, lead)"),
    "bge-m3-onnx": Backend("BAAI/bge-m3", "ONNX (fp32 / int8)", None,
                           "TO BE MEASURED (ONNX engine work, lead)"),
}  # fmt: skip


@dataclass(frozen=True)
class Prices:
    """Cloud Run, Tier 1 regions, instance-based billing (worker pools; services with CPU
    always allocated): cloud.google.com/run/pricing, read 2026-12-03 (see docs/scaling.md)."""

    vcpu_second: float = 0.000018
    gib_second: float = 0.000002


@dataclass(frozen=True)
class Shape:
    """What one instance is billed for: the worker (2 vCPU, 4 GiB, infra/terraform) plus the
    Prometheus sidecar (0.5 vCPU, 0.5 GiB)."""

    vcpu: float = 2.5
    gib: float = 4.5

    def dollars_per_second(self, prices: Prices | None = None) -> float:
        prices = prices or Prices()
        return self.vcpu * prices.vcpu_second + self.gib * prices.gib_second


SHAPE = Shape()


def cost_per_million_rows(rate: ServiceRate, shape: Shape = SHAPE) -> float:
    return 1e6 / rate.rows_per_second() * shape.dollars_per_second()


def instances_for(rows_per_second: float, rate: ServiceRate, utilisation: float = 0.8) -> int:
    """Instances that sustain a rate with each at most `utilisation` busy."""
    return math.ceil(rows_per_second / (rate.rows_per_second() * utilisation))


# --- reports ----------------------------------------------------------------------------------


def rate_table(shape: Shape = SHAPE) -> list[str]:
    """Rows/s per instance, instances for target rates, cost per million rows, per backend."""
    lines = [
        "| model | backend | rows/s per instance | instances for 100 / 1,000 / 10,000 rows/s "
        "(80 % busy) | $ per million rows | source |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for b in BACKENDS.values():
        if b.rate is None:
            lines.append(f"| {b.model} | {b.backend} | to be measured | - | - | {b.source} |")
            continue
        need = " / ".join(str(instances_for(x, b.rate)) for x in (100, 1_000, 10_000))
        lines.append(
            f"| {b.model} | {b.backend} | {b.rate.rows_per_second():.1f} | {need} | "
            f"{cost_per_million_rows(b.rate, shape):.2f} | {b.source} |"
        )
    return lines


def drain_table(rows: int = 1_000_000, rows_per_job: int = 100) -> list[str]:
    """Drain time and cost of one backlog: fixed fleets, and autoscaled from zero."""
    jobs = [rows_per_job] * (rows // rows_per_job)
    lines = [
        f"Backlog: {rows:,} rows in jobs of {rows_per_job} rows, all published at t=0.",
        "",
        "| backend | fleet | cold start | drain time | instance-hours | cost |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, cold in (("minilm-torch", 30.0), ("bge-m3-torch", 90.0)):
        rate = BACKENDS[key].rate
        assert rate is not None
        fleets: list[tuple[str, dict[str, object]]] = [
            (f"{n} fixed", {"instances": n}) for n in (1, 10, 50)
        ]
        fleets.append(("CREMA 0..50, target 20 jobs", {"instances": 0, "scaler": ScalerRules(
            target_per_instance=20, min_instances=0, max_instances=50)}))  # fmt: skip
        for label, kw in fleets:
            result = Simulation(jobs, rate, cold_start=cold, dt=0.5, **kw).run(7 * 86_400)  # type: ignore[arg-type]
            when = _duration(result.drain_seconds)
            dollars = result.instance_seconds * SHAPE.dollars_per_second()
            lines.append(
                f"| {key} | {label} | {cold:.0f} s | {when} | "
                f"{result.instance_seconds / 3600:.2f} | ${dollars:.2f} |"
            )
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not drained"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table", help="print the tables of docs/scaling.md")
    drain = sub.add_parser("drain", help="simulate one backlog")
    drain.add_argument(
        "--backend",
        default="bge-m3-torch",
        choices=[k for k, b in BACKENDS.items() if b.rate is not None],
    )
    drain.add_argument("--jobs", type=int, default=1000)
    drain.add_argument("--rows-per-job", type=int, default=100)
    drain.add_argument("--instances", type=int, default=0, help="fixed fleet (no --target)")
    drain.add_argument("--target", type=float, default=0.0, help="CREMA: messages per instance")
    drain.add_argument("--min-instances", type=int, default=0)
    drain.add_argument("--max-instances", type=int, default=20)
    drain.add_argument("--cold-start", type=float, default=60.0)
    drain.add_argument("--metric-delay", type=float, default=120.0)
    drain.add_argument("--in-flight", type=int, default=64, help="TABULAR_MAX_IN_FLIGHT_JOBS")
    drain.add_argument("--dt", type=float, default=0.5)
    drain.add_argument("--timeline", action="store_true", help="print backlog/instances per min")
    args = parser.parse_args(argv)  # fmt: skip
    if args.command == "table":
        print("\n".join([*rate_table(), "", *drain_table()]))
        return 0
    rate = BACKENDS[args.backend].rate
    assert rate is not None
    rules = None
    if args.target > 0:
        rules = ScalerRules(
            target_per_instance=args.target, min_instances=args.min_instances,
            max_instances=args.max_instances, metric_delay_seconds=args.metric_delay,
        )  # fmt: skip
    rate = dataclasses.replace(rate, in_flight=args.in_flight)
    warm = args.min_instances if rules else 0  # the autoscaler's minimum is up already
    sim = Simulation([args.rows_per_job] * args.jobs, rate, instances=args.instances, warm=warm,
                     cold_start=args.cold_start, scaler=rules, dt=args.dt)  # fmt: skip
    result = sim.run()
    when = _duration(result.drain_seconds)
    dollars = result.instance_seconds * SHAPE.dollars_per_second()
    print(f"{args.backend}: {rate.rows_per_second():.1f} rows/s per instance; drained in {when}; "
          f"peak {result.peak_instances} instances; {result.instance_seconds / 3600:.2f} "
          f"instance-hours; ${dollars:.2f}")  # fmt: skip
    if args.timeline:
        for t, backlog, ready in result.timeline[::60]:
            print(f"  t={t / 60:6.1f} min  backlog={backlog:7d}  ready={ready}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
