"""onnxruntime session options, set on purpose for a small CPU instance (docs/engine.md).

- intra-op threads = the CPU quota (a 2-vCPU Cloud Run instance: 2), inter-op 1, sequential
  execution: one forward pass at a time uses every core; the batcher feeds it one batch at a time.
- graph optimisation ORT_ENABLE_ALL: onnxruntime fuses attention, layer norm and GELU at load.
- the CPU memory arena on: it reuses activation buffers between passes of different shapes.
- spinning off by default: idle intra-op threads would otherwise spin for a while after each pass,
  taking CPU from the Pub/Sub client's threads between batches (TABULAR_INFERENCE_SPIN=true
  turns it back on for a process that does nothing else).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cpu_quota() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cpus or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def session(model_file: Path, threads: int = 0, spin: bool = False) -> Any:
    """An InferenceSession on the CPU for `model_file` (external data next to it is found)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_quota()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3  # errors only: warnings would be non-JSON lines on stderr
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
