"""worker/tables.py on real files: Parquet types and row groups, CSV records with quoted newlines,
JSON Lines, damaged files."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.errors import JobError
from worker.rowtext import Cell
from worker.tables import plan, read_shard


def _all_rows(path: Path, fmt: str, shard_rows: int) -> tuple[list[str], list[list[Cell]]]:
    table = plan(path, fmt, shard_rows, 10**9)
    rows: list[list[Cell]] = []
    for shard in table.shards:
        got, errors = read_shard(path, fmt, table.columns, shard)
        assert not errors
        assert len(got) == shard.stop - shard.start
        rows.extend(got)
    assert len(rows) == table.rows
    return table.columns, rows


def test_parquet_types_become_cells(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    stamp = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    pq.write_table(
        pa.table({
            "s": ["a", None], "i": pa.array([1, 2], pa.int16()), "f": [1.5, None],
            "b": [True, False], "d": [dt.date(2024, 1, 2), None], "ts": [stamp, None],
            "dec": pa.array([decimal.Decimal("12.340"), None], pa.decimal128(10, 3)),
            "cat": pa.array(["x", "y"]).dictionary_encode(),
            "tags": [["p"], []], "blob": [b"\x00", b"\x01"], "obj": [{"k": 1}, {"k": 2}],
        }),
        path,
    )  # fmt: skip
    table = plan(path, "parquet", 10, 100)
    assert table.rows == 2 and len(table.shards) == 1
    assert set(table.unsupported) == {"tags", "blob", "obj"}
    columns = [c for c in table.columns if c not in table.unsupported]
    rows, errors = read_shard(path, "parquet", columns, table.shards[0])
    assert not errors
    assert rows[0] == ["a", 1, 1.5, True, "2024-01-02", "2024-05-06T07:08:09+00:00", "12.340", "x"]
    assert rows[1] == [None, 2, None, False, None, None, None, "y"]


def test_parquet_shards_cross_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": list(range(95))}), path, row_group_size=7)
    columns, rows = _all_rows(path, "parquet", 10)
    assert columns == ["n"] and [r[0] for r in rows] == list(range(95))


@pytest.mark.parametrize("damage", ["truncated", "not_parquet", "empty"])
def test_damaged_parquet_is_unreadable(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": list(range(1000))}), path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "not_parquet": b"a,b\n1,2\n", "empty": b""}[damage]
    )
    with pytest.raises(JobError) as err:
        plan(path, "parquet", 10, 100)
    assert err.value.code == "source_unreadable"


def test_parquet_with_damaged_pages_fails_the_shard_readably(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"s": [f"row {i}" * 20 for i in range(2000)]}), path,
                   compression="none")  # fmt: skip
    data = bytearray(path.read_bytes())
    data[100:4000] = b"\xff" * 3900  # the footer is intact: planning works, reading does not
    path.write_bytes(bytes(data))
    table = plan(path, "parquet", 500, 10**6)
    with pytest.raises(JobError) as err:
        read_shard(path, "parquet", table.columns, table.shards[0])
    assert err.value.code == "source_unreadable"


def test_csv_quoted_newlines_never_split_a_record(tmp_path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "note"])
    expected = []
    for i in range(53):
        note = f'line one {i}\nline "two"\n\nend' if i % 3 == 0 else f"plain {i}"
        writer.writerow([str(i), note])
        expected.append([str(i), note])
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode())  # with a BOM
    columns, rows = _all_rows(path, "csv", 5)
    assert columns == ["id", "note"]
    assert rows == expected


def test_csv_ragged_row_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3\n4,5\n")
    table = plan(path, "csv", 10, 100)
    rows, errors = read_shard(path, "csv", table.columns, table.shards[0])
    assert errors == {1: "ragged_rows"} and rows[2] == ["4", "5"]


def test_jsonl_columns_are_the_union_and_nested_values_are_row_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"a": 1}, {"b": "x", "a": 2}, {"a": [1, 2]}, {"c": None}] * 4
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    table = plan(path, "jsonl", 3, 100)
    assert table.columns == ["a", "b", "c"] and table.rows == 16 and len(table.shards) == 6
    rows: list[list[Cell]] = []
    errors: list[int] = []
    for shard in table.shards:
        got, errs = read_shard(path, "jsonl", table.columns, shard)
        errors += [shard.start + i for i in errs]
        rows += got
    assert rows[1] == [2, "x", None]
    assert errors == [2, 6, 10, 14]


def test_row_limit_is_checked_while_planning(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a\n" + "x\n" * 50)
    with pytest.raises(JobError) as err:
        plan(path, "csv", 10, 20)
    assert err.value.code == "too_many_rows"
