"""What a job will cost, computed from what it expands to, before any work starts.

A job's bytes say little about its cost: a 44 KB job whose `text.columns` names one long column
3,000 times renders 60 MB of text per row, and 6,000 rows with 6,000 labels ask for 36 million
scores. `job_cost` measures the expansion (rendered text per row and per job, including every
prompt an LLM is sent, the rows x labels score matrix, the result's size) without building any
of it, and `check_cost` refuses a job over a limit with a documented code, so one job can never
take the worker (and every other job in flight) down with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from worker.errors import JobError
from worker.jobs import Job, Limits
from worker.rowtext import row_text_length

# Bytes of the parts of a result that do not grow with the job (ids, model, timings, keys).
_RESULT_OVERHEAD = 1_000
# A float32 value as a JSON number (`-0.012345678918743134, `): the longest it gets.
_LIST_VALUE_BYTES = 24
# Per row of predictions: `{"label":..,"score":0.123456,"scores":{}}, ` around the names.
_PREDICTION_BYTES = 40
# Per label in a row's `scores`: the name, `: 0.123456, `.
_SCORE_BYTES = 12
# The system prompt an LLM row is sent around the label listing (worker.classify).
LLM_PROMPT_CHARS = 120


@dataclass(frozen=True)
class JobCost:
    rows: int
    row_chars: int  # the longest text one row (example, label) renders to
    text_chars: int  # every character the job makes a model read (rows, examples, labels, prompts)
    tokens: int  # estimated tokens of that text (a token is at least one character)
    scores: int  # rows x labels of a classify job
    result_bytes: int  # estimated size of the result message


def job_cost(job: Job, dims: int) -> JobCost:
    """Measure `job` (decoded, its source read) for a model of `dims` dimensions."""
    lengths = [
        row_text_length(job.columns, row, job.template, job.text_columns)
        for row in [*job.rows, *(ex.row for ex in job.examples)]
    ]
    labels = [len(label.text) for label in job.labels] if job.type == "classify" else []
    text = sum(lengths) + sum(labels)
    if job.type == "classify" and job.method == "llm":
        listing = sum(n + 4 for n in labels) + LLM_PROMPT_CHARS
        text += len(job.rows) * listing  # each row is sent with the whole label listing
    scores = len(job.rows) * len(job.labels) if job.type == "classify" else 0
    return JobCost(
        rows=len(job.rows),
        row_chars=max(lengths + labels, default=0),
        text_chars=text,
        tokens=text // 4 + 2 * (len(lengths) + len(labels)),
        scores=scores,
        result_bytes=_result_bytes(job, dims),
    )


def check_cost(cost: JobCost, limits: Limits) -> None:
    """Raise the JobError of the first limit `cost` exceeds."""
    checks = (
        (cost.row_chars, limits.max_row_text_chars, "text_too_large",
         "a row's text would be {} characters", "TABULAR_MAX_ROW_TEXT_CHARS"),
        (cost.text_chars, limits.max_job_text_chars, "text_too_large",
         "the job's text would be {} characters", "TABULAR_MAX_JOB_TEXT_CHARS"),
        (cost.scores, limits.max_scores, "too_many_scores",
         f"{cost.rows} rows x labels = {{}} scores", "TABULAR_MAX_JOB_SCORES"),
        (cost.result_bytes, limits.max_result_bytes, "result_too_large",
         "the result would be about {} bytes", "TABULAR_MAX_RESULT_BYTES"),
    )  # fmt: skip
    for value, limit, code, what, variable in checks:
        if value > limit:
            hint = (
                "; ask for base64 embeddings or split the job" if code == "result_too_large" else ""
            )
            raise JobError(code, f"{what.format(value)}; the limit is {limit} ({variable}){hint}")


def _result_bytes(job: Job, dims: int) -> int:
    rows = len(job.rows)
    size = _RESULT_OVERHEAD + 8 * rows  # truncated_rows may list every row
    if job.embeddings_format == "base64":
        size += (rows * dims * 4 + 2) // 3 * 4
    elif job.embeddings_format == "list":
        size += rows * dims * _LIST_VALUE_BYTES
    if job.type == "classify":
        names = [len(orjson.dumps(label.name)) for label in job.labels]
        per_row = _PREDICTION_BYTES + max(names, default=0)
        per_row += sum(n + _SCORE_BYTES for n in names)
        size += rows * per_row
    return size
