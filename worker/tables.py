"""Source tables of any size, read by slices: Parquet, CSV and JSON Lines (docs/jobs.md, "Tables
of any size").

A job that writes its results to files (`output.path`) is planned first: one pass over the file
gives its columns, its row count and where each shard of `shard_rows` rows starts, without holding
more than one record batch (Parquet) or one record (CSV, JSON Lines) at a time. Each shard then
reads only its own rows: Parquet by row groups and batches (pyarrow), text formats by the byte
range its records occupy. A CSV record ends at a newline outside quotes, so a quoted newline in a
cell never splits a record.

Parquet column types become cells as docs/jobs.md says: strings, integers, floats, booleans and
nulls as they are; dates, times and timestamps as ISO 8601 text; decimals as their digits. List,
struct, map and binary columns have no text form: a job whose text would use one is refused
(`unsupported_column`); otherwise such a column is left out.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from worker.errors import JobError
from worker.jobs import Job, parse_columns, text_fields
from worker.jsonvalue import parse
from worker.rowtext import Cell

FORMATS = ("csv", "jsonl", "parquet")
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of the table; for text formats also the bytes [offset, end) they fill."""

    index: int
    start: int
    stop: int
    offset: int = 0
    end: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "rows": [self.start, self.stop],
                "bytes": [self.offset, self.end]}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    columns: list[str]
    rows: int
    shards: list[Shard]
    unsupported: tuple[str, ...] = ()  # Parquet columns with no text form (left out)


def plan(target: Path, fmt: str, shard_rows: int, max_rows: int) -> Plan:
    """Columns, rows and shards of the file (`source_unreadable` for a damaged one)."""
    try:
        if fmt == "parquet":
            return _plan_parquet(target, shard_rows, max_rows)
        return _plan_text(target, fmt, shard_rows, max_rows)
    except OSError as exc:
        raise JobError("source_unreadable", f"source file cannot be read: {exc}") from None


Rows = list[list[Cell]]
RowErrors = dict[int, str]  # a row's index within the shard -> its error code


def read_shard(target: Path, fmt: str, columns: list[str], shard: Shard) -> tuple[Rows, RowErrors]:
    """The shard's rows, cells in `columns` order, and the rows that could not be read as cells
    (given nulls and an error code: the other rows go on)."""
    try:
        if fmt == "parquet":
            return _read_parquet(target, columns, shard), {}
        return _read_text(target, fmt, columns, shard)
    except OSError as exc:
        raise JobError("source_unreadable", f"source file cannot be read: {exc}") from None


def usable_columns(job: Job, table: Plan) -> list[str]:
    """The columns to read: those with a text form. Columns the job's text names must exist
    (`invalid_template`); a column without a text form that the text uses (the default text uses
    them all) is `unsupported_column`, one it leaves out is left out."""
    used = text_fields(job)
    missing = sorted(set(used or []) - set(table.columns))
    if missing:
        raise JobError("invalid_template", f"unknown column(s) in text: {missing}")
    refused = sorted(set(table.columns if used is None else used) & set(table.unsupported))
    if refused:
        raise JobError(
            "unsupported_column",
            f"column(s) {refused} are lists, structs, maps or binary: they have no text form "
            "(name the text's columns with text.columns or text.template to leave them out)",
        )
    return [c for c in table.columns if c not in table.unsupported]


def _split(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]


def _check_rows(rows: int, max_rows: int) -> None:
    if rows == 0:
        raise JobError("empty_table", "the table has no rows")
    if rows > max_rows:
        raise JobError("too_many_rows", f"{rows} rows; the limit is {max_rows} per source job")


# ---------------------------------------------------------------------------------------------
# Parquet


def _parquet_file(target: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(target)
    except (pa.ArrowException, ValueError) as exc:
        raise JobError("source_unreadable", f"not a readable Parquet file: {exc}") from None


def _text_form(arrow_type: Any) -> bool:
    import pyarrow.types as t

    if t.is_dictionary(arrow_type):
        return _text_form(arrow_type.value_type)
    return not (
        t.is_binary(arrow_type) or t.is_large_binary(arrow_type)
        or t.is_fixed_size_binary(arrow_type) or t.is_nested(arrow_type)
        or getattr(t, "is_binary_view", lambda _: False)(arrow_type)
    )  # fmt: skip


def _plan_parquet(target: Path, shard_rows: int, max_rows: int) -> Plan:
    pf = _parquet_file(target)
    schema = pf.schema_arrow
    columns = parse_columns([f.name for f in schema])
    unsupported = tuple(f.name for f in schema if not _text_form(f.type))
    rows = pf.metadata.num_rows
    _check_rows(rows, max_rows)
    shards = [Shard(i, a, b) for i, (a, b) in enumerate(_split(rows, shard_rows))]
    return Plan(columns, rows, shards, unsupported)


def _read_parquet(target: Path, columns: list[str], shard: Shard) -> Rows:
    import pyarrow as pa

    pf = _parquet_file(target)
    meta = pf.metadata
    first, groups = 0, []
    for g in range(meta.num_row_groups):  # only the row groups that hold the shard's rows
        n = meta.row_group(g).num_rows
        if first < shard.stop and first + n > shard.start:
            groups.append(g)
        first += n
    skip = sum(meta.row_group(g).num_rows for g in range(groups[0])) if groups else 0
    wanted = columns
    rows: Rows = []
    position = skip
    try:
        for batch in pf.iter_batches(row_groups=groups, columns=wanted, batch_size=4096):
            lo, hi = max(shard.start - position, 0), min(shard.stop - position, batch.num_rows)
            position += batch.num_rows
            if hi <= lo:
                continue
            part = batch.slice(lo, hi - lo)
            cols = [[_cell(v) for v in part.column(i).to_pylist()] for i in range(len(wanted))]
            rows.extend(list(r) for r in zip(*cols, strict=True))
    except (pa.ArrowException, ValueError) as exc:
        raise JobError("source_unreadable", f"Parquet: {exc}") from None
    return rows


def _cell(value: Any) -> Cell:
    if value is None or isinstance(value, str | bool | int | float):
        return value  # type: ignore[no-any-return,unused-ignore]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.timedelta):
        return str(value)
    return None  # columns without a text form were refused or left out before reading


# ---------------------------------------------------------------------------------------------
# CSV and JSON Lines: records found by one pass over the bytes


def _records(fh: BinaryIO, fmt: str) -> Iterator[tuple[int, int, bytes]]:
    """(offset, end, bytes) of each record; CSV records end at a newline outside quotes."""
    offset = fh.tell()
    pending = b""
    quotes = 0
    for line in fh:
        pending += line
        if fmt == "csv":
            quotes += line.count(b'"')
            if quotes % 2 and line.endswith(b"\n"):
                continue  # a quoted newline: the record goes on
        end = offset + len(pending)
        if pending.strip():
            yield offset, end, pending
        offset, pending, quotes = end, b"", 0
    if pending.strip():
        yield offset, offset + len(pending), pending


def _plan_text(target: Path, fmt: str, shard_rows: int, max_rows: int) -> Plan:
    with open(target, "rb", buffering=_READ_CHUNK) as fh:
        if fh.read(3) != b"\xef\xbb\xbf":
            fh.seek(0)
        records = _records(fh, fmt)
        names: dict[str, None] = {}
        if fmt == "csv":
            header = next(records, None)
            if header is None:
                raise JobError("empty_table", "the CSV file is empty")
            names = dict.fromkeys(_csv_row(header[2]))
        bounds: list[tuple[int, int]] = []
        rows = 0
        for offset, end, record in records:
            if rows % shard_rows == 0:
                bounds.append((offset, end))
            bounds[-1] = (bounds[-1][0], end)
            if fmt == "jsonl":
                names.update(dict.fromkeys(_json_record(record, rows)))
            rows += 1
            if rows > max_rows:
                _check_rows(rows, max_rows)
    _check_rows(rows, max_rows)
    if not names:
        raise JobError("empty_table", "the JSONL file has no records")
    shards = [Shard(i, a, b, *bounds[i]) for i, (a, b) in enumerate(_split(rows, shard_rows))]
    return Plan(parse_columns(list(names)), rows, shards)


def _bytes(target: Path, span: tuple[int, int]) -> bytes:
    fd = os.open(target, os.O_RDONLY)
    try:
        return os.pread(fd, span[1] - span[0], span[0])
    finally:
        os.close(fd)


def _decode(raw: bytes) -> str:
    if b"\x00" in raw:
        raise JobError("source_unreadable", "source file is binary, not CSV/JSONL text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JobError("source_unreadable", "source file is not UTF-8 text") from None


def _csv_row(raw: bytes) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(_decode(raw), newline="")))
    except csv.Error as exc:
        raise JobError("source_unreadable", f"CSV: {exc}") from None
    return rows[0] if rows else []


def _json_record(raw: bytes, index: int) -> dict[str, Any]:
    try:
        record = parse(_decode(raw).strip())
    except JobError as exc:
        raise JobError("source_unreadable", f"JSONL record {index}: {exc.message}") from None
    if not isinstance(record, dict):
        raise JobError("source_unreadable", f"JSONL record {index} is not an object")
    return record


def _read_text(target: Path, fmt: str, columns: list[str], shard: Shard) -> tuple[Rows, RowErrors]:
    raw = _bytes(target, (shard.offset, shard.end))
    rows: Rows = []
    errors: RowErrors = {}
    if fmt == "csv":
        try:
            parsed = [r for r in csv.reader(io.StringIO(_decode(raw), newline="")) if r]
        except csv.Error as exc:
            raise JobError("source_unreadable", f"CSV: {exc}") from None
        for i, record in enumerate(parsed):
            fields: list[Cell] = list(record)
            if len(record) != len(columns):
                errors[i] = "ragged_rows"
                fields = [None] * len(columns)
            rows.append(fields)
        return rows, errors
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    for i, line in enumerate(lines):
        obj = _json_record(line, shard.start + i)
        cells = [obj.get(c) for c in columns]
        if not all(c is None or isinstance(c, str | int | float | bool) for c in cells):
            errors[i] = "invalid_cell"  # nested JSON has no cell form
            cells = [None] * len(columns)
        rows.append(cells)
    return rows, errors
