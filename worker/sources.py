"""Job tables read from files under the data root (`source.path`): CSV and JSON Lines.

A path is checked before anything is opened: relative, no `..`, no symlink out of the root.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import aiofiles
import orjson

from worker.errors import JobError
from worker.jobs import Job, Limits, check_table, parse_columns, parse_row
from worker.rowtext import Cell


def resolve_source(data_root: str, path: str) -> Path:
    """The file `path` names under `data_root`, refusing anything that escapes it."""
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts or "\x00" in path:
        raise JobError("path_outside_root", f"source.path {path!r} must be relative, without ..")
    root = Path(data_root).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise JobError("path_outside_root", f"source.path {path!r} leaves the data root")
    if not target.is_file():
        raise JobError("source_not_found", f"source.path {path!r} is not a file under the root")
    return target


async def load_source(job: Job, data_root: str, limits: Limits) -> None:
    """Fill `job.columns`/`job.rows` from its source file, then apply the table checks."""
    assert job.source_path is not None
    target = resolve_source(data_root, job.source_path)
    size = target.stat().st_size
    if size > limits.max_job_bytes:
        raise JobError(
            "job_too_large", f"source is {size} bytes; the limit is {limits.max_job_bytes}"
        )
    async with aiofiles.open(target, "rb") as fh:
        raw = await fh.read()
    if b"\x00" in raw:
        raise JobError("source_unreadable", "source file is binary, not CSV/JSONL text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise JobError("source_unreadable", "source file is not UTF-8 text") from None
    if job.source_format == "csv":
        job.columns, job.rows = _parse_csv(text, limits)
    else:
        job.columns, job.rows = _parse_jsonl(text, limits)
    check_table(job, limits)


def _parse_csv(text: str, limits: Limits) -> tuple[list[str], list[list[Cell]]]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            raise JobError("empty_table", "the CSV file is empty")
        columns = parse_columns(header)
        rows: list[list[Cell]] = []
        for row in reader:
            if not row:
                continue
            rows.append(list(row))
            if len(rows) > limits.max_rows:
                raise JobError("too_many_rows", f"more than {limits.max_rows} rows in the file")
    except csv.Error as exc:
        raise JobError("source_unreadable", f"CSV: {exc}") from None
    return columns, rows


def _parse_jsonl(text: str, limits: Limits) -> tuple[list[str], list[list[Cell]]]:
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise JobError("source_unreadable", f"JSONL line {lineno}: {exc}") from None
        if not isinstance(record, dict):
            raise JobError("source_unreadable", f"JSONL line {lineno} is not an object")
        records.append(record)
        columns.update(dict.fromkeys(record))
        if len(records) > limits.max_rows:
            raise JobError("too_many_rows", f"more than {limits.max_rows} rows in the file")
    names = list(columns)
    if not names:
        raise JobError("empty_table", "the JSONL file has no records")
    rows = [parse_row([r.get(c) for c in names], i) for i, r in enumerate(records)]
    return parse_columns(names), rows
