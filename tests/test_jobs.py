"""Hostile and malformed jobs: each gets an error result with a specific code, never a crash."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PipelineFactory
from worker.errors import JobError
from worker.jobs import Limits, decode
from worker.rowtext import row_text

TABLE = {"columns": ["a", "b"], "rows": [["x", 1]]}


def job(**fields: Any) -> bytes:
    base: dict[str, Any] = {"job_id": "j1", "type": "embed", "table": TABLE}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


HOSTILE: list[tuple[str, bytes, str]] = [
    ("not json", b"this is not json {", "invalid_json"),
    ("empty message", b"", "invalid_json"),
    ("json array", b"[1, 2, 3]", "not_an_object"),
    ("json string", b'"embed"', "not_an_object"),
    ("unknown type", job(type="translate"), "unknown_type"),
    ("missing type", orjson.dumps({"job_id": "j", "table": TABLE}), "unknown_type"),
    ("job_id a number", job(job_id=7), "invalid_field"),
    ("unknown field", job(colour="red"), "unknown_field"),
    ("rows not a list", job(table={"columns": ["a"], "rows": "x"}), "invalid_field"),
    ("cell an object", job(table={"columns": ["a"], "rows": [[{"k": 1}]]}), "invalid_field"),
    ("empty rows", job(table={"columns": ["a"], "rows": []}), "empty_table"),
    ("ragged rows", job(table={"columns": ["a", "b"], "rows": [["x", 1], ["y"]]}), "ragged_rows"),
    ("NaN", b'{"job_id":"j","type":"embed","table":{"columns":["a"],"rows":[[NaN]]}}',
     "non_finite_number"),
    ("Infinity", b'{"job_id":"j","type":"embed","table":{"columns":["a"],"rows":[[1e999]]}}',
     "non_finite_number"),
    ("10 MB cell", job(table={"columns": ["a"], "rows": [["x" * 9_000_000]]}), "cell_too_large"),
    ("too many rows", job(table={"columns": ["a"], "rows": [["x"]] * 10_001}), "too_many_rows"),
    ("table and source", job(source={"path": "t.csv"}), "invalid_field"),
    ("bad template", job(text="{missing}"), "invalid_template"),
    ("template attribute", job(text="{a.__class__}"), "invalid_template"),
    ("labels on embed", job(labels=["a", "b"]), "invalid_field"),
    ("one label", job(type="classify", labels=["only"]), "too_few_classes"),
    ("one example class", job(type="classify", examples=[{"row": ["x", 1], "label": "p"}]),
     "too_few_classes"),
    ("example label unknown", job(type="classify", labels=["p", "q"],
     examples=[{"row": ["x", 1], "label": "r"}]), "unknown_label"),
    ("bad method", job(type="classify", labels=["p", "q"], method="magic"), "invalid_field"),
    ("short example row", job(type="classify", text="{a} {b}", examples=[
        {"row": ["x"], "label": "p"}, {"row": ["y", 2], "label": "q"}]), "ragged_rows"),
    ("huge example cell", job(type="classify", examples=[
        {"row": ["x" * 30_000, 1], "label": "p"}, {"row": ["y", 2], "label": "q"}]),
     "cell_too_large"),
    ("bad output", job(output={"embeddings": "png"}), "invalid_field"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "payload", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_job_gets_error_result(
    make_pipeline: PipelineFactory, name: str, payload: bytes, code: str
) -> None:
    outcome = await make_pipeline().handle(payload)
    assert outcome.status == "error", outcome.result
    assert outcome.result["error"]["code"] == code, outcome.result["error"]
    assert outcome.result["error"]["message"]
    assert outcome.retryable is False
    orjson.loads(outcome.data())  # the error result itself is valid JSON


async def test_error_result_keeps_job_id_when_known(make_pipeline: PipelineFactory) -> None:
    outcome = await make_pipeline().handle(job(job_id="keep-me", type="nope"))
    assert outcome.result["job_id"] == "keep-me"


async def test_whole_message_over_limit(make_pipeline: PipelineFactory) -> None:
    outcome = await make_pipeline(max_job_bytes=1000).handle(job(table={
        "columns": ["a"], "rows": [["y" * 600], ["z" * 600]]}))  # fmt: skip
    assert outcome.result["error"]["code"] == "job_too_large"


def _write(root: Path, name: str, data: bytes) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../outside.csv", "path_outside_root"),
        ("/etc/passwd.csv", "path_outside_root"),
        ("sub/../../outside.csv", "path_outside_root"),
        ("link.csv", "path_outside_root"),
        ("missing.csv", "source_not_found"),
        ("binary.csv", "source_unreadable"),
        ("latin1.csv", "source_unreadable"),
        ("table.parquet", "source_unreadable"),  # "PAR1" alone: not a whole Parquet file
        ("table.xlsx", "unsupported_format"),
        ("empty.csv", "empty_table"),
        ("ragged.csv", "ragged_rows"),
        ("notobjects.jsonl", "source_unreadable"),
    ],
)
async def test_bad_source_files(
    make_pipeline: PipelineFactory, tmp_path: Path, path: str, code: str
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    _write(tmp_path, "outside.csv", b"a\n1\n")
    os.symlink(tmp_path / "outside.csv", root / "link.csv")
    _write(root, "binary.csv", b"a,b\n\x00\x01\x02\xff\n")
    _write(root, "latin1.csv", "a\ncaf\xe9\n".encode("latin-1"))
    _write(root, "table.parquet", b"PAR1")
    _write(root, "empty.csv", b"")
    _write(root, "ragged.csv", b"a,b\n1,2\n3\n")
    _write(root, "notobjects.jsonl", b"[1,2]\n")
    pipeline = make_pipeline(data_root=str(root))
    outcome = await pipeline.handle(job(table=None, source={"path": path}))
    assert outcome.result["error"]["code"] == code, outcome.result


async def test_csv_and_jsonl_sources_match_inline_table(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    _write(tmp_path, "t.csv", b"name,city\nAda,London\nLinus,Helsinki\n")
    _write(
        tmp_path, "t.jsonl", b'{"name":"Ada","city":"London"}\n{"name":"Linus","city":"Helsinki"}\n'
    )
    inline = {"columns": ["name", "city"], "rows": [["Ada", "London"], ["Linus", "Helsinki"]]}
    pipeline = make_pipeline()
    results = [
        (await pipeline.handle(job(table=t, source=s, output={"embeddings": "list"}))).result
        for t, s in ((inline, None), (None, {"path": "t.csv"}), (None, {"path": "t.jsonl"}))
    ]
    assert [r["status"] for r in results] == ["ok"] * 3
    first = results[0]["embeddings"]["data"]
    for other in results[1:]:
        assert np.allclose(other["embeddings"]["data"], first, atol=1e-5)


def test_row_text_default_and_template() -> None:
    cols = ["name", "age", "note"]
    assert row_text(cols, ["Ada", 36, None]) == "name: Ada; age: 36"
    assert row_text(cols, ["Ada", 36.0, True]) == "name: Ada; age: 36; note: true"
    assert row_text(cols, ["Ada", 36, "x"], template="{name} is {age}") == "Ada is 36"
    assert row_text(cols, ["Ada", 36, "x"], text_columns=["note"]) == "note: x"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**63 - 1)
            | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["job_id", "type", "table", "columns", "rows", "labels",
                                 "examples", "method", "text", "source", "output", "x"]),
                inner, max_size=6),
            max_leaves=30,
        ).map(lambda obj: orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
              if not _has_nan(obj) else b"{}"),
    )
)  # fmt: skip
def test_decoder_never_raises_anything_but_job_error(payload: bytes) -> None:
    try:
        decode(payload, Limits())
    except JobError as exc:
        assert exc.code and exc.message


def _has_nan(obj: Any) -> bool:
    if isinstance(obj, float):
        return obj != obj or obj in (float("inf"), float("-inf"))
    if isinstance(obj, list):
        return any(_has_nan(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_nan(o) for o in obj.values())
    return False
