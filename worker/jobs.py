"""Job contract v1: decode and strictly validate a job message into a `Job`.

Every way a payload can be wrong maps to a `JobError` with a stable `code` (documented in
docs/jobs.md). Decoding never raises anything else: callers turn a `JobError` into an error
result, so no job is ever answered with silence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.errors import JobError
from worker.jsonvalue import describe, kind, parse
from worker.rowtext import Cell, row_text, template_fields

JobType = Literal["embed", "classify"]
Method = Literal["auto", "zero_shot", "few_shot", "llm"]

JOB_TYPES: tuple[str, ...] = ("embed", "classify")
METHODS: tuple[str, ...] = ("auto", "zero_shot", "few_shot", "llm")
EMBEDDING_FORMATS: tuple[str, ...] = ("base64", "list", "none")
_TOP_LEVEL = {
    "version", "job_id", "type", "table", "source", "text", "labels", "examples", "method",
    "min_score", "output", "shard",
}  # fmt: skip
SOURCE_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
MAX_JOB_ID_CHARS = 256


@dataclass(frozen=True)
class Limits:
    """What one job may cost (docs/jobs.md, "Limits"); the worker's settings fill it."""

    max_rows: int = 10_000
    max_cell_chars: int = 20_000
    max_job_bytes: int = 10_000_000
    max_row_text_chars: int = 100_000
    max_job_text_chars: int = 20_000_000
    max_scores: int = 1_000_000
    max_result_bytes: int = 100_000_000
    shard_rows: int = 10_000  # rows per shard of a job that writes files
    max_source_rows: int = 100_000_000  # rows of a source job that writes files


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a job that writes files: rows [start, stop) of the source, the bytes they
    fill (text formats), the columns the whole table has. Made by the worker that split the
    job (worker.shards); `of` is that job's id, which owns the output directory."""

    of: str
    index: int
    count: int
    start: int
    stop: int
    offset: int
    end: int
    columns: list[str]


@dataclass(frozen=True)
class Label:
    name: str
    description: str | None = None

    @property
    def text(self) -> str:
        """What zero-shot compares rows against: the description says more than the name."""
        return f"{self.name}: {self.description}" if self.description else self.name


@dataclass(frozen=True)
class Example:
    row: list[Cell]
    label: str


@dataclass
class Job:
    job_id: str
    type: JobType
    columns: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    source_path: str | None = None
    source_format: str | None = None
    template: str | None = None
    text_columns: list[str] | None = None
    labels: list[Label] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    method: Method = "auto"
    min_score: float | None = None  # abstain (label null) below this score
    embeddings_format: str = "base64"
    normalize: bool | None = None
    output_path: str | None = None  # a directory under TABULAR_OUTPUT_ROOT: results as files
    output_columns: list[str] = field(default_factory=list)  # input columns copied to the output
    shard: ShardSpec | None = None
    message: dict[str, Any] = field(default_factory=dict, repr=False)  # as decoded (for shards)

    def texts(self) -> list[str]:
        return [row_text(self.columns, row, self.template, self.text_columns) for row in self.rows]

    def example_texts(self) -> list[str]:
        return [
            row_text(self.columns, ex.row, self.template, self.text_columns) for ex in self.examples
        ]


# ---------------------------------------------------------------------------------------------
# decode


def decode(data: bytes, limits: Limits) -> Job:
    """Parse and validate one job message. Raises only `JobError`."""
    if len(data) > limits.max_job_bytes:
        raise JobError(
            "job_too_large", f"job is {len(data)} bytes; the limit is {limits.max_job_bytes}"
        )
    obj = parse(data)
    if not isinstance(obj, dict):
        raise JobError("not_an_object", f"a job must be a JSON object, not {kind(obj)}")
    job_id = obj.get("job_id")
    known_id = job_id if isinstance(job_id, str) and 0 < len(job_id) <= MAX_JOB_ID_CHARS else None
    try:
        return _build(obj, limits)
    except JobError as exc:
        exc.job_id = known_id
        exc.job_type = obj.get("type") if obj.get("type") in JOB_TYPES else None
        raise


def _build(obj: dict[str, Any], limits: Limits) -> Job:
    unknown = sorted(set(obj) - _TOP_LEVEL)
    if unknown:
        raise JobError("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    version = obj.get("version", 1)
    if version != 1:
        raise JobError(
            "unsupported_version", f"job version {describe(version)} is not supported (1)"
        )
    job_id = obj.get("job_id")
    if not isinstance(job_id, str) or not job_id.strip():
        raise JobError("invalid_field", "job_id must be a non-empty string")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise JobError("invalid_field", f"job_id is longer than {MAX_JOB_ID_CHARS} characters")
    job_type = obj.get("type")
    if job_type not in JOB_TYPES:
        raise JobError(
            "unknown_type", f"type must be one of {list(JOB_TYPES)}, not {describe(job_type)}"
        )
    job = Job(job_id=job_id, type=job_type, message=obj)
    _table_or_source(job, obj, limits)
    _text(job, obj.get("text"))
    _output(job, obj.get("output"))
    _shard(job, obj.get("shard"))
    if job_type == "classify":
        _classification(job, obj, limits)
    else:
        for key in ("labels", "examples", "method", "min_score"):
            if key in obj:
                raise JobError("invalid_field", f"{key} applies to classify jobs only")
    if job.source_path is None:
        check_table(job, limits)
    return job


def _table_or_source(job: Job, obj: dict[str, Any], limits: Limits) -> None:
    table, source = obj.get("table"), obj.get("source")
    if (table is None) == (source is None):
        raise JobError("invalid_field", "a job needs exactly one of table or source")
    if table is not None:
        if not isinstance(table, dict) or set(table) - {"columns", "rows"}:
            raise JobError("invalid_field", "table must be an object with columns and rows")
        job.columns = parse_columns(table.get("columns"))
        rows = table.get("rows")
        if not isinstance(rows, list):
            raise JobError("invalid_field", "table.rows must be a list of rows")
        if len(rows) > limits.max_rows:
            raise JobError(
                "too_many_rows", f"{len(rows)} rows; the limit is {limits.max_rows} per job"
            )
        job.rows = [parse_row(r, i) for i, r in enumerate(rows)]
        return
    if not isinstance(source, dict) or set(source) - {"path", "format"}:
        raise JobError("invalid_field", "source must be an object with path (and format)")
    path, fmt = source.get("path"), source.get("format")
    if not isinstance(path, str) or not path:
        raise JobError("invalid_field", "source.path must be a non-empty string")
    if fmt is None:
        fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in SOURCE_FORMATS:
        raise JobError(
            "unsupported_format",
            f"source format must be csv, jsonl or parquet, not {describe(fmt)}",
        )
    job.source_path, job.source_format = path, fmt


def parse_columns(columns: Any) -> list[str]:
    if not isinstance(columns, list) or not columns:
        raise JobError("invalid_field", "table.columns must be a non-empty list of strings")
    if not all(isinstance(c, str) and c for c in columns):
        raise JobError("invalid_field", "every column name must be a non-empty string")
    if len(set(columns)) != len(columns):
        raise JobError("invalid_field", "column names must be unique")
    return list(columns)


def parse_row(row: Any, index: int) -> list[Cell]:
    if not isinstance(row, list):
        raise JobError("invalid_field", f"row {index} must be a list of cells")
    for cell in row:
        if cell is not None and not isinstance(cell, str | int | float | bool):
            raise JobError(
                "invalid_field", f"row {index}: a cell must be a string, number, bool or null"
            )
    return row


def check_table(job: Job, limits: Limits) -> None:
    """Checks shared by inline tables and tables read from a source file."""
    if not job.rows:
        raise JobError("empty_table", "the table has no rows")
    if len(job.rows) > limits.max_rows:
        raise JobError(
            "too_many_rows", f"{len(job.rows)} rows; the limit is {limits.max_rows} per job"
        )
    width = len(job.columns)
    rows = [(f"row {i}", row) for i, row in enumerate(job.rows)]
    rows += [(f"example {i}", ex.row) for i, ex in enumerate(job.examples)]
    for where, row in rows:
        if len(row) != width:
            raise JobError(
                "ragged_rows", f"{where} has {len(row)} cells; the table has {width} columns"
            )
        problem = cell_problem(row, limits)
        if problem is not None:
            raise JobError(problem[0], f"{where}: {problem[1]}")
    if job.template is not None or job.text_columns is not None:
        _check_text_columns(job)


def cell_problem(row: list[Cell], limits: Limits) -> tuple[str, str] | None:
    """(code, message) of the first cell the contract refuses, or None."""
    for cell in row:
        if isinstance(cell, str) and len(cell) > limits.max_cell_chars:
            return "cell_too_large", (
                f"a cell has {len(cell)} characters; the limit is {limits.max_cell_chars}"
            )
        if isinstance(cell, float) and not math.isfinite(cell):
            return "non_finite_number", "NaN/Infinity is not allowed"
    return None


def _text(job: Job, text: Any) -> None:
    if text is None:
        return
    if isinstance(text, str):
        text = {"template": text}
    if not isinstance(text, dict) or set(text) - {"template", "columns"}:
        raise JobError("invalid_field", "text must be a template string or {template, columns}")
    template, columns = text.get("template"), text.get("columns")
    if template is not None:
        if not isinstance(template, str) or not template:
            raise JobError("invalid_template", "text.template must be a non-empty string")
        template_fields(template)
        job.template = template
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise JobError("invalid_field", "text.columns must be a list of column names")
        job.text_columns = columns


def text_fields(job: Job) -> list[str] | None:
    """The columns the job's text uses; None when it uses them all (the default text)."""
    if job.template is None and job.text_columns is None:
        return None
    wanted = list(job.text_columns or [])
    if job.template is not None:
        wanted += template_fields(job.template)
    return wanted


def _check_text_columns(job: Job) -> None:
    missing = sorted(set(text_fields(job) or []) - set(job.columns))
    if missing:
        raise JobError("invalid_template", f"unknown column(s) in text: {', '.join(missing)}")


def _output(job: Job, output: Any) -> None:
    job.embeddings_format = "base64" if job.type == "embed" else "none"
    if output is None:
        return
    keys = {"embeddings", "normalize", "path", "columns"}
    if not isinstance(output, dict) or set(output) - keys:
        raise JobError(
            "invalid_field", "output must be an object with embeddings/normalize/path/columns"
        )
    fmt = output.get("embeddings", job.embeddings_format)
    if fmt not in EMBEDDING_FORMATS:
        raise JobError("invalid_field", f"output.embeddings must be one of {EMBEDDING_FORMATS}")
    normalize = output.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise JobError("invalid_field", "output.normalize must be true or false")
    job.embeddings_format, job.normalize = fmt, normalize
    path, columns = output.get("path"), output.get("columns")
    if path is None:
        if columns is not None:
            raise JobError("invalid_field", "output.columns applies to output.path only")
        return
    if not isinstance(path, str) or not path:
        raise JobError("invalid_field", "output.path must be a non-empty string")
    if job.source_path is None:
        raise JobError("invalid_field", "output.path needs a source file (source.path)")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns)
    ):
        raise JobError("invalid_field", "output.columns must be a list of column names")
    reserved = sorted(set(columns or []) & set(OUTPUT_COLUMNS))
    if reserved:
        raise JobError("invalid_field", f"output.columns cannot copy {reserved}: names in use")
    job.output_path, job.output_columns = path, list(dict.fromkeys(columns or []))


# Columns of a part file besides the copied ones (docs/jobs.md, "Output files").
OUTPUT_COLUMNS = ("row", "embedding", "label", "score", "scores", "error")


def _shard(job: Job, shard: Any) -> None:
    if shard is None:
        return
    if job.output_path is None:
        raise JobError("invalid_field", "shard applies to jobs with output.path only")
    keys = {"of", "index", "count", "rows", "bytes", "columns"}
    ok = isinstance(shard, dict) and set(shard) == keys
    if ok:
        spans = (shard["rows"], shard["bytes"])
        ok = (
            isinstance(shard["of"], str) and bool(shard["of"])
            and all(_count(shard[k]) for k in ("index", "count"))
            and all(isinstance(s, list) and len(s) == 2 and all(map(_count, s)) for s in spans)
            and shard["index"] < shard["count"]
        )  # fmt: skip
    if not ok:
        raise JobError("invalid_field", "shard must be {of, index, count, rows, bytes, columns}")
    job.shard = ShardSpec(
        of=shard["of"], index=shard["index"], count=shard["count"],
        start=shard["rows"][0], stop=shard["rows"][1], offset=shard["bytes"][0],
        end=shard["bytes"][1], columns=parse_columns(shard["columns"]),
    )  # fmt: skip


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _classification(job: Job, obj: dict[str, Any], limits: Limits) -> None:
    method = obj.get("method", "auto")
    if method not in METHODS:
        raise JobError("invalid_field", f"method must be one of {list(METHODS)}")
    job.method = method
    min_score = obj.get("min_score")
    if min_score is not None:
        if not isinstance(min_score, int | float) or isinstance(min_score, bool):
            raise JobError("invalid_field", "min_score must be a number between 0 and 1")
        if not 0.0 <= min_score <= 1.0:
            raise JobError("invalid_field", "min_score must be a number between 0 and 1")
        job.min_score = float(min_score)
    job.labels = _labels(obj.get("labels"))
    job.examples = _examples(obj.get("examples"), limits)
    names = {label.name for label in job.labels}
    if job.examples and names:
        stray = sorted({ex.label for ex in job.examples} - names)
        if stray:
            raise JobError("unknown_label", f"example label(s) not in labels: {describe(stray)}")
    if not job.labels and not job.examples:
        raise JobError("invalid_field", "classify needs labels (or labelled examples)")
    if method == "auto":
        job.method = "few_shot" if job.examples else "zero_shot"
    if job.method in ("zero_shot", "llm") and len(job.labels) < 2:
        raise JobError("too_few_classes", f"{job.method} needs at least two labels")
    if job.method == "few_shot":
        classes = {ex.label for ex in job.examples}
        if len(classes) < 2:
            raise JobError(
                "too_few_classes", "few_shot needs examples of at least two different labels"
            )
        if not job.labels:
            job.labels = [Label(name) for name in sorted(classes)]


def _labels(labels: Any) -> list[Label]:
    if labels is None:
        return []
    if not isinstance(labels, list):
        raise JobError("invalid_field", "labels must be a list")
    out = []
    for item in labels:
        if isinstance(item, str) and item:
            out.append(Label(item))
        elif (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and item["name"]
            and not set(item) - {"name", "description"}
            and isinstance(item.get("description", ""), str)
        ):
            out.append(Label(item["name"], item.get("description") or None))
        else:
            raise JobError("invalid_field", "a label is a string or {name, description}")
    if len({label.name for label in out}) != len(out):
        raise JobError("invalid_field", "label names must be unique")
    return out


def _examples(examples: Any, limits: Limits) -> list[Example]:
    if examples is None:
        return []
    if not isinstance(examples, list):
        raise JobError("invalid_field", "examples must be a list of {row, label}")
    if len(examples) > limits.max_rows:
        raise JobError("too_many_rows", f"more than {limits.max_rows} examples")
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or set(ex) != {"row", "label"}:
            raise JobError("invalid_field", f"example {i} must be {{row, label}}")
        if not isinstance(ex["label"], str) or not ex["label"]:
            raise JobError("invalid_field", f"example {i}: label must be a non-empty string")
        out.append(Example(parse_row(ex["row"], i), ex["label"]))
    return out
