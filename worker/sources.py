"""Job tables read from files under the data root (`source.path`): CSV, JSON Lines, Parquet.

A path is checked before anything is opened: relative, no `..`, no symlink out of the root. Every
way the file system can refuse a path ends in a documented code: a path that cannot be looked up
(a symlink loop, a name or path over the file system's limits) is `source_not_found`, a file that
cannot be opened or read (permissions, I/O errors) is `source_unreadable`. At most
`max_job_bytes` are read, even from a file that grows after it was measured.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import stat
from pathlib import Path
from typing import Any

from worker.errors import JobError
from worker.jobs import Job, Limits, check_table, parse_columns, parse_row
from worker.jsonvalue import describe, parse
from worker.rowtext import Cell


def resolve_source(data_root: str, path: str) -> Path:
    """The file `path` names under `data_root`, refusing anything that escapes it."""
    shown = describe(path)
    if "\x00" in path:
        raise JobError("path_outside_root", f"source.path {shown} must be relative, without ..")
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise JobError("path_outside_root", f"source.path {shown} must be relative, without ..")
    try:
        root = Path(data_root).resolve()
        target = (root / rel).resolve()
        inside = target.is_relative_to(root)
        is_file = inside and target.is_file()
    except (OSError, RuntimeError) as exc:  # ELOOP/ENAMETOOLONG/...; 3.11 raises RuntimeError
        raise JobError(
            "source_not_found", f"source.path {shown} cannot be looked up: {exc}"
        ) from None
    if not inside:
        raise JobError("path_outside_root", f"source.path {shown} leaves the data root")
    if not is_file:
        raise JobError("source_not_found", f"source.path {shown} is not a file under the root")
    return target


async def load_source(job: Job, data_root: str, limits: Limits) -> None:
    """Fill `job.columns`/`job.rows` from its source file, then apply the table checks."""
    assert job.source_path is not None
    target = resolve_source(data_root, job.source_path)
    if job.source_format == "parquet":
        job.columns, job.rows = await asyncio.to_thread(_read_parquet, job, target, limits)
        check_table(job, limits)
        return
    raw = await asyncio.to_thread(read_source, target, limits.max_job_bytes)
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


def read_source(target: Path, max_bytes: int) -> bytes:
    """The file's bytes, at most `max_bytes` (`job_too_large` beyond), any OS error refused."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise JobError(
            "source_unreadable", f"source file cannot be opened: {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise JobError("source_not_found", "source.path is not a regular file")
        if info.st_size > max_bytes:
            raise JobError(
                "job_too_large", f"source is {info.st_size} bytes; the limit is {max_bytes}"
            )
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise JobError("job_too_large", f"source is over the limit of {max_bytes} bytes")
    except OSError as exc:
        raise JobError("source_unreadable", f"source file cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_parquet(job: Job, target: Path, limits: Limits) -> tuple[list[str], list[list[Cell]]]:
    """A whole (small) Parquet table: one shard of at most `max_rows` rows (worker.tables)."""
    from worker.tables import plan, read_shard, usable_columns

    try:
        size = target.stat().st_size
    except OSError as exc:
        raise JobError("source_unreadable", f"source file cannot be read: {exc}") from None
    if size > limits.max_job_bytes:
        raise JobError(
            "job_too_large", f"source is {size} bytes; the limit is {limits.max_job_bytes}"
        )
    table = plan(target, "parquet", limits.max_rows, limits.max_rows)
    columns = usable_columns(job, table)
    rows, _ = read_shard(target, "parquet", columns, table.shards[0])
    return columns, rows


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
    """Records are separated by `\\n` alone (an optional `\\r` before it): JSON strings may hold
    U+2028, U+0085 and other characters `str.splitlines` would split on."""
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = parse(line.removesuffix("\r"))
        except JobError as exc:
            raise JobError("source_unreadable", f"JSONL line {lineno}: {exc.message}") from None
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
