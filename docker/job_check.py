"""Send embed and classify jobs through Pub/Sub to a running worker and check the results.

Used by docker/image-test.sh against the Pub/Sub emulator (PUBSUB_EMULATOR_HOST). Creates the
topics and subscriptions it needs when they are missing, publishes an `embed` job, a zero-shot and
a few-shot `classify` job with fresh job_ids, and exits 0 when every result arrives within
--timeout with status "ok", the expected payload (embeddings, predictions with a label), and, when
asked, the model's source and backend (`--source cache --backend onnx`: the model came from the
shared cache, served by the ONNX engine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

from google.api_core import exceptions
from google.cloud import pubsub_v1


def _ensure(
    publisher: Any, subscriber: Any, project: str, topic: str, sub: str | None
) -> tuple[str, str | None]:
    topic_path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(request={"name": topic_path})
    except exceptions.AlreadyExists:
        pass
    if sub is None:
        return topic_path, None
    sub_path = subscriber.subscription_path(project, sub)
    try:
        subscriber.create_subscription(request={"name": sub_path, "topic": topic_path})
    except exceptions.AlreadyExists:
        pass
    return topic_path, sub_path


def _jobs(prefix: str) -> dict[str, dict[str, Any]]:
    table = {"columns": ["subject"], "rows": [["Charged twice for one order"], ["Parcel stuck"]]}
    return {
        f"{prefix}-embed": {
            "type": "embed",
            "table": {"columns": ["name", "city"], "rows": [["Ada Lovelace", "London"]]},
        },
        f"{prefix}-zero-shot": {
            "type": "classify",
            "labels": [
                {"name": "billing", "description": "invoices, charges, refunds and payments"},
                {"name": "shipping", "description": "delivery, parcels, tracking and couriers"},
            ],
            "table": table,
        },
        f"{prefix}-few-shot": {
            "type": "classify",
            "examples": [
                {"row": ["Refund my card payment"], "label": "billing"},
                {"row": ["Invoice shows the wrong amount"], "label": "billing"},
                {"row": ["Where is my package?"], "label": "shipping"},
                {"row": ["The courier never came"], "label": "shipping"},
            ],
            "table": table,
        },
    }


def _problems(result: dict[str, Any], job: dict[str, Any], args: argparse.Namespace) -> list[str]:
    if result.get("status") != "ok":
        return [f"status {result.get('status')}: {result.get('error')}"]
    problems = []
    model = result.get("model") or {}
    for key, want in (("source", args.source), ("backend", args.backend)):
        if want and model.get(key) != want:
            problems.append(f"model {key} is {model.get(key)!r}, expected {want!r}")
    rows = len(job["table"]["rows"])
    shape = (result.get("embeddings") or {}).get("shape") or [0, 0]
    if job["type"] == "embed" and (shape[0] != rows or shape[1] <= 0):
        problems.append(f"expected {rows} embeddings, got shape {shape}")
    if job["type"] == "classify":
        labels = [p.get("label") for p in result.get("predictions") or []]
        if len(labels) != rows or not all(labels):
            problems.append(f"expected {rows} labelled predictions, got {labels}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--source", default="", help="expected model source (cache, packaged...)")
    parser.add_argument("--backend", default="", help="expected inference backend (onnx, torch)")
    args = parser.parse_args(argv)
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("job_check: PUBSUB_EMULATOR_HOST is not set", file=sys.stderr)
        return 2
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "tabular-image-test"
    jobs_topic = os.environ.get("TABULAR_JOBS_TOPIC", "tabular-jobs")
    jobs_sub = os.environ.get("TABULAR_JOBS_SUBSCRIPTION", "tabular-jobs-sub")
    results_topic = os.environ.get("TABULAR_RESULTS_TOPIC", "tabular-results")

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    jobs_path, _ = _ensure(publisher, subscriber, project, jobs_topic, jobs_sub)
    _, results_sub = _ensure(
        publisher, subscriber, project, results_topic, f"{results_topic}-image-test"
    )
    assert results_sub is not None

    jobs = _jobs(f"image-test-{uuid.uuid4().hex[:12]}")
    for job_id, job in jobs.items():
        data = json.dumps({"job_id": job_id, **job}).encode()
        publisher.publish(jobs_path, data, job_id=job_id).result(timeout=30)
        print(f"job_check: published {job_id} to {jobs_path}", file=sys.stderr)

    pending = dict(jobs)
    failed = False
    deadline = time.monotonic() + args.timeout
    while pending and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": results_sub, "max_messages": 10}, timeout=10
        )
        acks = [m.ack_id for m in response.received_messages]
        for received in response.received_messages:
            try:
                result = json.loads(received.message.data)
            except ValueError:
                continue
            job_id = result.get("job_id") if isinstance(result, dict) else None
            if job_id not in pending:
                continue
            problems = _problems(result, pending.pop(job_id), args)
            failed = failed or bool(problems)
            model = result.get("model") or {}
            verdict = "; ".join(problems) or (
                f"ok (model source {model.get('source')}, backend {model.get('backend')} "
                f"{model.get('precision')})"
            )
            print(f"job_check: {job_id}: {verdict}", file=sys.stderr)
        if acks:
            subscriber.acknowledge(request={"subscription": results_sub, "ack_ids": acks})
    if pending:
        print(f"job_check: no result within {args.timeout:.0f} s for {sorted(pending)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
