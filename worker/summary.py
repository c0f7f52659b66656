"""A readable view of results for people at a terminal (`tabular-worker run --format summary`).

JSON lines stay the machine format; this turns each result into a few short lines: the job, its
status, what was done, a label and score per row (or the vectors' shape and a check of their
norms), and how long it took. Nothing here is parsed back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.results import decode_vectors

MAX_ROWS_SHOWN = 10
MAX_MESSAGE_CHARS = 160


def summary(result: dict[str, Any]) -> str:
    """One result as text lines (newline-terminated)."""
    job = result.get("job_id") or "(no job_id)"
    total = result.get("timings", {}).get("total_ms")
    took = f", {total:.1f} ms" if isinstance(total, int | float) else ""
    if result.get("status") != "ok":
        error = result.get("error", {})
        message = str(error.get("message", ""))
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        retry = " (retryable)" if error.get("retryable") else ""
        return f"{job}: error {error.get('code')}{retry}: {message}\n"
    rows = result.get("rows", 0)
    output = result.get("output")
    if output:  # results written as files (docs/jobs.md, "Tables of any size")
        return (
            f"{job}: ok, {result.get('type')}, {output.get('rows')} rows written to "
            f"{output.get('path')}/ ({output.get('parts')} Parquet "
            f"part{'' if output.get('parts') == 1 else 's'}, "
            f"{output.get('errors')} rows with errors){took}\n"
            f"  read it: pyarrow.parquet.read_table({str(output.get('path'))!r})\n"
        )
    if result.get("type") == "classify":
        head = f"{job}: ok, classify ({result.get('method')}), {rows} rows{took}"
        return head + "\n" + "".join(_prediction_lines(result.get("predictions", [])))
    head = f"{job}: ok, embed, {rows} rows x {result.get('dims')} dims"
    return head + _norms(result) + _truncated(result) + took + "\n"


def _prediction_lines(predictions: list[dict[str, Any]]) -> list[str]:
    lines, shown = [], predictions[:MAX_ROWS_SHOWN]
    ranked = [sorted(p["scores"].items(), key=lambda kv: -kv[1]) for p in shown]
    labels = [
        str(p["label"]) if p["label"] is not None else f"(abstains: {r[0][0]})"
        for p, r in zip(shown, ranked, strict=True)
    ]
    width = max((len(label) for label in labels), default=0)
    for i, (p, r) in enumerate(zip(shown, ranked, strict=True)):
        runner = f"  (next: {r[1][0]} {r[1][1]:.3f})" if len(r) > 1 else ""
        lines.append(f"  row {i}: {labels[i]:<{width}}  {p['score']:.3f}{runner}\n")
    if len(predictions) > MAX_ROWS_SHOWN:
        lines.append(f"  ... {len(predictions) - MAX_ROWS_SHOWN} more rows\n")
    return lines


def _norms(result: dict[str, Any]) -> str:
    embeddings = result.get("embeddings")
    if not embeddings:
        return ""
    norms = np.linalg.norm(decode_vectors(embeddings), axis=1)
    if not len(norms):
        return ""
    unit = " (unit length)" if np.allclose(norms, 1.0, atol=1e-3) else ""
    return f", norms {norms.min():.3f}..{norms.max():.3f}{unit}"


def _truncated(result: dict[str, Any]) -> str:
    truncated = result.get("truncated_rows") or []
    return (
        f", {len(truncated)} rows truncated to {result.get('max_tokens')} tokens"
        if truncated
        else ""
    )
