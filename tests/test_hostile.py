"""Hostile jobs, tried from outside: every one ends in exactly one result with a documented code.

Classes rather than cases: values of any depth or size named in a message, numbers of any size
in a cell, any template field, any `source.path` and any bytes behind it, any Ollama answer. The
property tests feed arbitrary bytes and JSON through the real pipeline and the real model.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.cache_helpers import ROOT
from tests.conftest import PipelineFactory
from tests.ollama_double import OllamaDouble
from worker.classify import LlmClassifier
from worker.errors import JobError
from worker.jobs import Limits, decode
from worker.model import EmbeddingModel
from worker.pipeline import Pipeline
from worker.rowtext import row_text, row_text_length
from worker.settings import WorkerSettings
from worker.sources import resolve_source


def documented_codes() -> set[str]:
    """The codes in docs/jobs.md's error table: the only codes a result may carry."""
    text = (ROOT / "docs" / "jobs.md").read_text()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


CODES = documented_codes() - {"internal"}


def job(**fields: Any) -> bytes:
    base: dict[str, Any] = {"job_id": "j1", "type": "embed",
                            "table": {"columns": ["a", "b"], "rows": [["x", 1]]}}  # fmt: skip
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def dumps(value: Any) -> bytes:
    """JSON of any value hypothesis draws (orjson refuses integers beyond 64 bits)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def raw_job(field: str, value: bytes) -> bytes:
    return (b'{"job_id":"deep","type":"embed","table":{"columns":["a"],"rows":[["x"]]},"'
            + field.encode() + b'":' + value + b"}")  # fmt: skip


async def error_code(pipeline: Pipeline, payload: bytes) -> str:
    outcome = await pipeline.handle(payload)
    assert outcome.status == "error", outcome.result
    return str(outcome.result["error"]["code"])


# ---------------------------------------------------------------------------------------------
# values of any shape named in an error message


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("version", nested(1000), "unsupported_version"),
        ("type", nested(1000), "unknown_type"),
        ("version", b'{"a":' * 900 + b"1" + b"}" * 900, "unsupported_version"),
        ("type", b'"' + b"t" * 5_000_000 + b'"', "unknown_type"),
    ],
)
async def test_deep_or_huge_values_are_refused_with_their_code(
    make_pipeline: PipelineFactory, field: str, value: bytes, code: str
) -> None:
    payload = raw_job(field, value)
    if field == "type":
        payload = payload.replace(b'"type":"embed",', b"")
    outcome = await make_pipeline().handle(payload)
    assert outcome.result["error"]["code"] == code, outcome.result
    assert outcome.result["job_id"] == "deep"
    assert len(outcome.data()) < 2_000, "the message names the value briefly"


# ---------------------------------------------------------------------------------------------
# numbers of any size


@pytest.mark.parametrize("digits", [20, 25, 64, 300])
async def test_big_integer_cell_is_its_decimal_digits(
    make_pipeline: PipelineFactory, digits: int
) -> None:
    number = int("9" + "8" * (digits - 1))
    payload = b'{"job_id":"n","type":"embed","output":{"embeddings":"list"},'
    payload += b'"table":{"columns":["n"],"rows":[[' + str(number).encode() + b"]]}}"
    assert decode(payload, Limits()).texts() == [f"n: {number}"]
    pipeline = make_pipeline()
    as_int = (await pipeline.handle(payload)).result
    as_text = (await pipeline.handle(job(table={"columns": ["n"], "rows": [[str(number)]]},
                                         output={"embeddings": "list"}))).result  # fmt: skip
    assert as_int["embeddings"]["data"] == as_text["embeddings"]["data"]


async def test_integer_beyond_300_digits_is_refused(make_pipeline: PipelineFactory) -> None:
    for digits in (301, 400, 5_000):
        payload = b'{"job_id":"n","type":"embed","table":{"columns":["n"],"rows":[['
        payload += b"7" * digits + b"]]}}"
        outcome = await make_pipeline().handle(payload)
        assert outcome.result["error"]["code"] == "invalid_field", outcome.result
        assert "300" in outcome.result["error"]["message"]


# ---------------------------------------------------------------------------------------------
# template fields


@pytest.mark.parametrize(
    ("template", "columns", "text"),
    [
        ("{0}", ["0", "b"], "x"),
        ("{0} and {1}", ["0", "1"], "x and 1"),
        ("{1}{0}", ["0", "1"], "1x"),
    ],
)
async def test_any_column_name_is_a_template_field(
    make_pipeline: PipelineFactory, template: str, columns: list[str], text: str
) -> None:
    payload = job(text=template, table={"columns": columns, "rows": [["x", 1]]})
    assert decode(payload, Limits()).texts() == [text]
    outcome = await make_pipeline().handle(payload)
    assert outcome.status == "ok", outcome.result


# ---------------------------------------------------------------------------------------------
# source paths and files


def _data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    os.symlink("loop-b.csv", root / "loop-a.csv")
    os.symlink("loop-a.csv", root / "loop-b.csv")
    os.symlink("self.csv", root / "self.csv")
    return root


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("loop-a.csv", "source_not_found"),
        ("self.csv", "source_not_found"),
        ("self.csv/x.csv", "source_not_found"),
        ("n" * 300 + ".csv", "source_not_found"),
        ("d/" * 3000 + "x.csv", "source_not_found"),
    ],
)
async def test_paths_the_file_system_refuses(
    make_pipeline: PipelineFactory, tmp_path: Path, path: str, code: str
) -> None:
    pipeline = make_pipeline(data_root=str(_data_root(tmp_path)))
    assert await error_code(pipeline, job(table=None, source={"path": path})) == code


async def test_jsonl_strings_may_hold_line_separators(
    make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    values = ["a\u2028b", "c\u0085d", "e\u2029f", "g\x1ch", "i\rj"]
    lines = [orjson.dumps({"text": v}) for v in values]
    raw = "\n".join(line.decode() for line in lines).replace("\\r", "\r")  # a raw CR too
    (tmp_path / "t.jsonl").write_text(raw.replace("\r", "\\r") + "\r\n")
    got = decode(job(table=None, source={"path": "t.jsonl"}), Limits())
    from worker.sources import load_source

    await load_source(got, str(tmp_path), Limits())
    assert got.rows == [[v] for v in values]
    outcome = await make_pipeline().handle(job(table=None, source={"path": "t.jsonl"}))
    assert outcome.status == "ok", outcome.result
    assert outcome.result["rows"] == len(values)


# ---------------------------------------------------------------------------------------------
# the LLM's server


@pytest.fixture
def ollama() -> Any:
    double = OllamaDouble().start()
    double.models.add("llama3.2:1b")
    yield double
    double.stop()


def llm_job(job_id: str, rows: int) -> bytes:
    return orjson.dumps({
        "job_id": job_id, "type": "classify", "method": "llm", "labels": ["billing", "shipping"],
        "table": {"columns": ["ticket"], "rows": [[f"{job_id} ticket {i}"] for i in range(rows)]},
    })  # fmt: skip


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b"{}", b'{"message": 7}', b""])
async def test_ollama_answering_200_with_garbage(
    make_pipeline: PipelineFactory, ollama: OllamaDouble, body: bytes
) -> None:
    ollama.chat_raw = body
    pipeline = make_pipeline(llm=LlmClassifier(ollama.url, "llama3.2:1b", 5.0))
    outcome = await pipeline.handle(llm_job("garbage", 2))
    assert outcome.result["error"]["code"] == "llm_unavailable", outcome.result
    assert outcome.retryable


async def test_llm_timeout_frees_the_slots_for_the_next_job(
    make_pipeline: PipelineFactory, ollama: OllamaDouble
) -> None:
    """A 40-row job times out on a slow server; a 1-row job right after it must not wait for
    the 38 rows still queued, and those rows are never sent."""
    slow_requests = []

    def reply(body: dict[str, Any]) -> str:
        if "slow" in body["messages"][-1]["content"]:
            slow_requests.append(1)
            time.sleep(1.0)
        return json.dumps({"label": "billing", "confidence": 0.9})

    ollama.chat_reply = reply
    pipeline = make_pipeline(llm=LlmClassifier(ollama.url, "llama3.2:1b", timeout=0.4))
    assert await error_code(pipeline, llm_job("slow", 40)) == "llm_timeout"
    started = time.monotonic()
    outcome = await pipeline.handle(llm_job("next", 1))
    waited = time.monotonic() - started
    assert outcome.status == "ok", outcome.result
    assert waited < 2.0, f"the next job waited {waited:.1f} s behind a timed-out job"
    await asyncio.sleep(1.0)
    assert len(slow_requests) <= 4, f"{len(slow_requests)} rows of the timed-out job were sent"


# ---------------------------------------------------------------------------------------------
# properties: arbitrary input, exactly one result, a documented code, nothing outside the root

JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(10**40), 10**40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip
CELL = st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.text(max_size=30) | (
    st.floats(allow_nan=False, allow_infinity=False))  # fmt: skip
FIELDS = st.sampled_from(["version", "job_id", "type", "table", "source", "text", "labels",
                          "examples", "method", "output"])  # fmt: skip


COLUMN = st.text(min_size=1, max_size=5) | st.integers(0, 20).map(str)


DEPTHS = st.sampled_from([1, 3, 990, 1_000, 1_010, 1_023, 1_100])


def _deep(value: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON of a value wrapped in up to 1,100 arrays or objects (orjson itself stops at 1,024);
    built as bytes, since encoding such a value would exceed Python's recursion limit."""
    return st.tuples(value, DEPTHS, st.booleans()).map(lambda t: _wrap(dumps(t[0]), t[1], t[2]))


def _wrap(inner: bytes, depth: int, as_object: bool) -> bytes:
    if as_object:
        return b'{"k":' * depth + inner + b"}" * depth
    return b"[" * depth + inner + b"]" * depth


def _with_deep_field(field: str, value: bytes) -> bytes:
    return b'{"job_id":"deep","type":"embed","' + field.encode() + b'":' + value + b"}"


def _well_formed(columns: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Jobs that should mostly succeed: any cells, any template over any column names."""
    fields = st.sampled_from(columns).map(lambda c: "{" + c + "}")
    template = st.lists(fields | st.text(max_size=4), min_size=1, max_size=4).map("".join)
    rows = st.lists(st.lists(CELL, min_size=len(columns), max_size=len(columns)), min_size=1,
                    max_size=3)  # fmt: skip
    labels = st.lists(st.text(min_size=1, max_size=5), min_size=2, max_size=3, unique=True)
    kind = st.sampled_from(["embed", "classify"]).flatmap(
        lambda t: st.fixed_dictionaries(
            {"type": st.just(t)} | ({"labels": labels} if t == "classify" else {})
        )
    )
    return st.tuples(
        st.fixed_dictionaries(
            {"job_id": st.text(min_size=1, max_size=8),
             "table": st.fixed_dictionaries({"columns": st.just(columns), "rows": rows})},
            optional={"text": template | st.fixed_dictionaries({"columns": st.lists(
                st.sampled_from(columns), max_size=4)}),
                "output": st.fixed_dictionaries({"embeddings": st.sampled_from(
                    ["base64", "list", "none"])})},
        ),
        kind,
    ).map(lambda t: {**t[0], **t[1]})  # fmt: skip


def _payloads() -> st.SearchStrategy[bytes]:
    columns = st.lists(COLUMN, min_size=1, max_size=3, unique=True)
    wild = st.dictionaries(FIELDS, JSON, max_size=6)
    deep = st.tuples(FIELDS, _deep(JSON)).map(lambda t: _with_deep_field(*t))
    return st.one_of(
        st.binary(max_size=200),
        columns.flatmap(_well_formed).map(dumps),
        wild.map(lambda obj: dumps({"job_id": "w", **obj})),
        deep,
        st.text(max_size=200).map(str.encode),
    )


def examples(n: int) -> settings:
    """Hypothesis settings of these property tests: `n` examples, no deadline (the model runs)."""
    slow = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    return settings(max_examples=n, deadline=None, suppress_health_check=slow)


def _run(model: EmbeddingModel, settings: WorkerSettings, payload: bytes) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        pipeline = Pipeline(settings, model)
        try:
            return (await pipeline.handle(payload)).result
        finally:
            await pipeline.close()

    return asyncio.run(go())


def _assert_one_documented_result(result: dict[str, Any]) -> None:
    orjson.dumps(result)  # serialisable: the transport will send it
    if result["status"] == "error":
        assert result["error"]["code"] in CODES, result["error"]
    else:
        assert result["status"] == "ok"


@examples(150)
@given(payload=_payloads())
def test_any_message_gets_one_documented_result(
    embedding_model: EmbeddingModel, settings: WorkerSettings, payload: bytes
) -> None:  # fmt: skip
    _assert_one_documented_result(_run(embedding_model, settings, payload))


@examples(120)
@given(
    template=st.text(max_size=30),
    columns=st.lists(st.text(max_size=4), min_size=1, max_size=4, unique=True),
    data=st.data(),
)
def test_any_template_gives_text_of_the_computed_length_or_invalid_template(
    template: str, columns: list[str], data: st.DataObject
) -> None:  # fmt: skip
    row = data.draw(st.lists(CELL, min_size=len(columns), max_size=len(columns)))
    picked = data.draw(st.none() | st.lists(st.sampled_from(columns), max_size=6))
    try:
        text = row_text(columns, row, template if template else None, picked)
    except JobError as exc:
        assert exc.code == "invalid_template"
        return
    assert row_text_length(columns, row, template if template else None, picked) == len(text)


@examples(200)
@given(
    path=st.text(max_size=40)
    | st.sampled_from(
        [
            "../secret.csv",
            "link.csv",
            "sub/../../secret.csv",
            "./t.csv",
            "sub/t.csv",
            "sub//t.csv",
            "loop.csv",
            "loop.csv/t.csv",
            "n" * 300,
            "sub/" * 1_100 + "t.csv",
        ]
    )
)
def test_any_source_path_stays_under_the_root(tmp_path: Path, path: str) -> None:  # fmt: skip
    root = tmp_path / "root"
    if not root.exists():
        (root / "sub").mkdir(parents=True)
        (tmp_path / "secret.csv").write_text("secret\n1\n")
        os.symlink(tmp_path / "secret.csv", root / "link.csv")
        os.symlink("loop.csv", root / "loop.csv")
        (root / "sub" / "t.csv").write_text("a\n1\n")
    assume(path)
    try:
        target = resolve_source(str(root), path)
    except JobError as exc:
        assert exc.code in CODES
        return
    assert target.is_relative_to(root.resolve()) and target.is_file()


RECORD = st.dictionaries(st.text(min_size=1, max_size=4),
                         CELL | st.text(alphabet="ab \u2028\u2029\u0085\x1c\x1d\x1e\r\t",
                                        max_size=6), min_size=1, max_size=3)  # fmt: skip


@examples(150)
@given(
    content=st.binary(max_size=300)
    | st.text(max_size=200).map(str.encode)
    | st.lists(JSON.map(dumps) | _deep(JSON), max_size=4).map(b"\n".join),
    records=st.none() | st.lists(RECORD, min_size=1, max_size=4),
    fmt=st.sampled_from(["csv", "jsonl"]),
)
def test_any_file_behind_a_source_gets_one_documented_result(
    embedding_model: EmbeddingModel, settings: WorkerSettings, content: bytes,
    records: list[dict[str, Any]] | None, fmt: str,
) -> None:  # fmt: skip
    """Any bytes give one result with a documented code; valid JSON Lines (any characters in its
    strings) is read as the table it is, never `source_unreadable`."""
    if records is not None:
        fmt, content = "jsonl", b"\n".join(dumps(r) for r in records) + b"\n"
    path = Path(settings.data_root) / f"table.{fmt}"
    path.write_bytes(content)
    result = _run(embedding_model, settings, job(table=None, source={"path": path.name}))
    _assert_one_documented_result(result)
    if records is not None:
        assert result["status"] == "ok", result
        assert result["rows"] == len(records)
