"""The job mix of the multi-worker test and the ledger that checks its results.

`job_mix` makes 3,000 jobs of 1 to 2,000 rows (mostly small, a few large, like real traffic),
some of them classify jobs and some hostile (not JSON, not an object, ragged, empty, too many
rows, an oversized cell, an unknown type). `Ledger` holds what was published (by Pub/Sub message
id) and every result message received, and answers: is every job answered, was any result
published for a message never sent, which results are duplicates, and do duplicates agree.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from worker.results import decode_vectors

MAX_ROWS = 2000  # TABULAR_MAX_ROWS_PER_JOB of the test's workers
MAX_CELL = 1000  # TABULAR_MAX_CELL_CHARS of the test's workers
LABELS = ["hardware", "finance", "weather"]


@dataclass(frozen=True)
class Sent:
    data: bytes
    job_id: str | None  # None: the payload has no readable job_id
    expect: str  # "ok" or the error code
    model_rows: int  # rows the model encodes for it (labels included); 0 for errors


def _table(n: int, i: int) -> dict[str, Any]:
    words = ["red shoes", "tax refund", "rainy day", "usb cable", "bond yield", "snow storm"]
    rows = [[f"job {i} row {r}", words[(i + r) % len(words)]] for r in range(n)]
    return {"columns": ["name", "note"], "rows": rows}


def _size(rng: np.random.Generator) -> int:
    kind = rng.random()
    if kind < 0.885:
        return int(rng.integers(1, 11))
    if kind < 0.993:
        return int(rng.integers(11, 101))
    return int(np.exp(rng.uniform(np.log(101), np.log(MAX_ROWS))))


def _hostile(kind: int, i: int) -> Sent:
    job_id = f"bad-{i}"
    base: dict[str, Any] = {"job_id": job_id, "type": "embed"}
    if kind == 0:
        return Sent(b"\x00\xff not json", None, "invalid_json", 0)
    if kind == 1:
        return Sent(b"[]", None, "not_an_object", 0)
    if kind == 2:
        body = {**base, "table": {"columns": ["a", "b"], "rows": [["x", "y"], ["z"]]}}
        return Sent(orjson.dumps(body), job_id, "ragged_rows", 0)
    if kind == 3:
        body = {**base, "table": {"columns": ["a"], "rows": []}}
        return Sent(orjson.dumps(body), job_id, "empty_table", 0)
    if kind == 4:
        body = {**base, "table": _table(MAX_ROWS + 1, i)}
        return Sent(orjson.dumps(body), job_id, "too_many_rows", 0)
    if kind == 5:
        body = {**base, "table": {"columns": ["a"], "rows": [["x" * (MAX_CELL + 1)]]}}
        return Sent(orjson.dumps(body), job_id, "cell_too_large", 0)
    body = {**base, "type": "summarise", "table": _table(2, i)}
    return Sent(orjson.dumps(body), job_id, "unknown_type", 0)


def job_mix(n: int = 3000, seed: int = 15, hostile: int = 63, full: int = 4) -> list[Sent]:
    """`n` jobs in a fixed random order: `full` of MAX_ROWS rows, `hostile` bad ones, the rest
    1-10 rows (88 %), 11-100 rows (11 %) or up to MAX_ROWS rows; every tenth a classify job."""
    rng = np.random.default_rng(seed)
    sizes = [MAX_ROWS] * full + [_size(rng) for _ in range(n - full - hostile)]
    jobs: list[Sent] = []
    for i, size in enumerate(sizes):
        job_id = f"job-{i}"
        if i % 10 == 9:
            body = {"job_id": job_id, "type": "classify", "method": "zero_shot",
                    "labels": LABELS, "table": _table(size, i),
                    "output": {"embeddings": "base64"}}  # fmt: skip
            jobs.append(Sent(orjson.dumps(body), job_id, "ok", size + len(LABELS)))
        else:
            body = {"job_id": job_id, "type": "embed", "table": _table(size, i)}
            jobs.append(Sent(orjson.dumps(body), job_id, "ok", size))
    jobs += [_hostile(k % 7, k) for k in range(hostile)]
    order = rng.permutation(len(jobs))
    return [jobs[k] for k in order]


@dataclass
class Result:
    attrs: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() when received


@dataclass
class Ledger:
    """Published messages and received results; `record` is thread-safe (collector threads)."""

    published: dict[str, Sent] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)  # by result message id
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, message_id: str, data: bytes, attributes: dict[str, str]) -> None:
        result = Result(dict(attributes), orjson.loads(data), time.monotonic())
        with self._lock:
            self.results.setdefault(message_id, result)  # a re-read of one result counts once

    def by_source(self) -> dict[str, list[Result]]:
        with self._lock:
            results = list(self.results.values())
        groups: dict[str, list[Result]] = defaultdict(list)
        for r in results:
            groups[r.attrs["source_message_id"]].append(r)
        return groups

    def by_job(self) -> dict[str, list[Result]]:
        """Results per job_id (per message for payloads without one): duplicates of a job
        published twice meet here as well as redeliveries."""
        groups: dict[str, list[Result]] = defaultdict(list)
        for src, group in self.by_source().items():
            groups[self.published[src].job_id or f"message {src}"] += group
        return groups

    def answered(self) -> int:
        with self._lock:
            return len({r.attrs["source_message_id"] for r in self.results.values()})

    def first_answers(self) -> dict[str, float]:
        return {src: min(r.at for r in group) for src, group in self.by_source().items()}

    def phantoms(self) -> list[str]:
        """Results for no message that was published, or for another job than it carried."""
        bad = []
        for src, group in self.by_source().items():
            sent = self.published.get(src)
            for r in group:
                if sent is None or r.body.get("job_id") != sent.job_id:
                    bad.append(f"{src}: {r.attrs}")
        return bad

    def unexpected(self) -> list[str]:
        """Results whose status or error code is not what their job calls for."""
        bad = []
        for src, group in self.by_source().items():
            want = self.published[src].expect
            for r in group:
                got = r.body["status"] if r.body["status"] == "ok" else r.body["error"]["code"]
                if got != want:
                    bad.append(f"{self.published[src].job_id}: {got}, wanted {want}")
        return bad


def same_delivery_twice(groups: dict[str, list[Result]]) -> list[str]:
    """Pairs of results for one delivery (message id and attempt): a redelivery cannot explain
    them."""
    bad = []
    for src, group in groups.items():
        attempts = [r.attrs.get("delivery_attempt") for r in group]
        if len(set(attempts)) != len(attempts) or None in attempts:
            bad.append(f"{src}: attempts {attempts}")
    return bad


def disagreements(groups: dict[str, list[Result]]) -> list[str]:
    """Results of one job (`Ledger.by_job`) that differ in status, code, labels or vectors."""
    bad = []
    for src, group in groups.items():
        first = group[0].body
        for other in (r.body for r in group[1:]):
            if not _agree(first, other):
                bad.append(f"{src}: {first.get('job_id')}")
    return bad


def _agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def code(x: dict[str, Any]) -> str | None:
        return x["error"]["code"] if x["status"] == "error" else None

    def labels(x: dict[str, Any]) -> list[str]:
        return [p["label"] for p in x.get("predictions", [])]

    if (a["status"], code(a), labels(a)) != (b["status"], code(b), labels(b)):
        return False
    if "embeddings" not in a:
        return True
    return bool(np.array_equal(decode_vectors(a["embeddings"]), decode_vectors(b["embeddings"])))
