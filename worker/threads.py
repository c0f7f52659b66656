"""CPU seconds of the worker's threads by role: where a worker's two cores go.

Process CPU alone cannot tell the model's compute from the event loop (which also pulls and
acks), the publisher's RPC threads or gRPC's own C threads, and on a 2-vCPU instance they all
compete. Linux keeps user+system time per thread in
`/proc/self/task/TID/stat`; Python threads are matched to their names through
`threading.Thread.native_id` (Python 3.11 does not name OS threads), and threads Python did not
start (onnxruntime's intra-op pool, gRPC core) are grouped by their OS name.
`tabular_thread_cpu_seconds{group}` is a gauge over live threads (a thread that exits takes its
seconds with it), read on scrape; `bench/pubsub.py` turns it into CPU milliseconds per row.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Python thread name prefix -> group. The first match wins; unmatched threads are "other".
_PYTHON_GROUPS = (
    ("MainThread", "event loop"),
    ("model", "model"),
    ("pubsub-publish", "pubsub publisher"),  # transport.Publisher's RPC threads
    ("asyncio", "event loop helpers"),
    ("http", "http server"),
)
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_of(python_name: str | None, os_name: str) -> str:
    """The role of a thread from its Python name (if Python started it) or its OS name."""
    if python_name is not None:
        for prefix, group in _PYTHON_GROUPS:
            if python_name.startswith(prefix):
                return group
        return "other"
    if os_name.startswith(("grpc", "default-execut", "resolver-execu", "timer")):
        return "grpc core"
    return "native compute"  # onnxruntime's / torch's intra-op pools, numpy's BLAS


def stat_cpu_seconds(stat: str, *, children: bool = False) -> float:
    """User + system seconds in a `/proc/.../stat` line (plus its reaped children's)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / _TICK


def thread_cpu_seconds(proc: Path = Path("/proc/self/task")) -> dict[str, float]:
    """CPU seconds (user + system) of the live threads of this process, by group."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    totals: dict[str, float] = {}
    try:
        tasks = list(proc.iterdir())
    except OSError:
        return totals
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        os_name = stat[stat.index("(") + 1 : stat.rindex(")")]
        group = group_of(names.get(int(task.name)), os_name)
        totals[group] = totals.get(group, 0.0) + stat_cpu_seconds(stat)
    return totals


class ThreadCpuCollector(Collector):
    """`tabular_thread_cpu_seconds{group}`, read from /proc on every scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tabular_thread_cpu_seconds",
            "CPU seconds (user+system) used so far by the worker's live threads, by role.",
            labels=["group"],
        )
        for group, seconds in sorted(thread_cpu_seconds().items()):
            family.add_metric([group], seconds)
        yield family
