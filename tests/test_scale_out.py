"""Many workers, one subscription, nothing lost; and the capacity model against a measured run.

Three worker processes share one jobs subscription. 3,000 jobs of 1 to 2,000 rows (some
classify, some hostile) are published at once; when a third are answered, one worker is
SIGKILLed and another SIGTERMed, a replacement starts, and a client publishes 30 of the jobs
again (a retry). Every message must get a result, no result may exist for a message that was
never published, every extra result must come from a separate delivery (a redelivery, or the
retried message), all results of one job must agree, and nothing may be dead-lettered.

TEST DOUBLE: the workers are `tests/delay_worker.py`, the real `worker.service.Service` whose
embedding model is `DelayModel`: each encode call sleeps for the time all-MiniLM-L6-v2 takes on
2 vCPUs (the capacity model's fit, bench/scale.py) instead of computing. Three real models
cannot share this machine's two cores; three sleeping ones drain a backlog like three instances
with their own CPUs, so distribution and recovery are tested at a scale the CPU cannot run.

SERVER: the project's stand-in (harness/standin.py), not the official emulator (0.8.20): it
never redelivered some messages that were in transit to a SIGKILLed subscriber
(tests/pubsub_fixture.py, `pubsub_redelivering`). (It also ignores streaming-pull flow control,
which leased the whole backlog to the first worker while the worker used streaming pull; the
worker's unary Pull asks for no more than its room.)

The measured drain time is then replayed in the capacity model's simulation (bench/drain.py)
with the same jobs, rates, flow control and event times; docs/scaling.md shows the comparison.
Set TABULAR_SCALE_REPORT=FILE to keep the figures as JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from google.cloud.pubsub_v1.subscriber.message import Message

from bench.drain import Event, Kill, ServiceRate, Simulation, Start, Terminate
from harness.pubsub import PubSubEnv, StreamCollector
from harness.worker_proc import WorkerProcess
from tests.delay_worker import MINILM
from tests.scale_ledger import (
    MAX_CELL,
    MAX_ROWS,
    Ledger,
    disagreements,
    job_mix,
    same_delivery_twice,
)

IN_FLIGHT = 32  # TABULAR_MAX_IN_FLIGHT_JOBS per worker
LEASE = 10  # TABULAR_LEASE_EXTENSION_SECONDS: a killed worker's jobs return within this
GRACE = 5  # TABULAR_SHUTDOWN_GRACE_SECONDS
WINDOW = 10  # TABULAR_UTILISATION_WINDOW_SECONDS
RETRIED = 30  # jobs a client publishes a second time


@pytest.fixture
def delay_workers(pubsub_redelivering: PubSubEnv, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    env = {
        **pubsub_redelivering.env(),
        "TABULAR_MAX_IN_FLIGHT_JOBS": str(IN_FLIGHT),
        "TABULAR_LEASE_EXTENSION_SECONDS": str(LEASE),
        "TABULAR_SHUTDOWN_GRACE_SECONDS": str(GRACE),
        "TABULAR_UTILISATION_WINDOW_SECONDS": str(WINDOW),
        "TABULAR_SCALING_MAX_INSTANCES": "3",
        "TABULAR_MAX_ROWS_PER_JOB": str(MAX_ROWS),
        "TABULAR_MAX_CELL_CHARS": str(MAX_CELL),
    }
    for n in range(4):  # three, and the replacement (started later)
        log = tmp_path / f"worker-{n}.log"
        started.append(WorkerProcess(env, log, command=("-m", "tests.delay_worker")))
    yield started
    for worker in started:
        worker.stop()


def metric(worker: WorkerProcess, name: str) -> float:
    text = worker.get("/metrics")[1].decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not exported"
    return float(match.group(1))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic()


def test_three_workers_one_subscription_kill_and_term_lose_nothing(
    pubsub_redelivering: PubSubEnv, delay_workers: list[WorkerProcess]
) -> None:
    env = pubsub_redelivering
    first, second, third, replacement = delay_workers
    for worker in (first, second, third):
        worker.start(wait_ready=0)
    for worker in (first, second, third):
        worker.wait_ready(120)
    jobs = job_mix()
    ledger = Ledger()

    def keep(message: Message, _n: int) -> str:
        ledger.record(message.message_id, message.data, dict(message.attributes))
        return "ack"

    with StreamCollector(env.subscriber(), env.results_subscription, keep):
        t0 = time.monotonic()
        publisher = env.publisher()
        futures = [publisher.publish(env.jobs_topic, job.data) for job in jobs]
        ledger.published = {f.result(60): job for f, job in zip(futures, jobs, strict=True)}
        published_s = time.monotonic() - t0

        t_event = wait_until(lambda: ledger.answered() >= len(jobs) // 3, 180, "a third")
        busy_mid = metric(third, "tabular_model_busy_ratio")
        first.proc.kill()  # type: ignore[union-attr]
        second.signal(signal.SIGTERM)
        replacement.start(wait_ready=0)
        # Small ones, so the drain time stays comparable with the simulation's.
        retried = [j for j in jobs if j.job_id and j.model_rows <= 10][::50][:RETRIED]
        again = [publisher.publish(env.jobs_topic, job.data) for job in retried]
        ledger.published |= {f.result(60): job for f, job in zip(again, retried, strict=True)}
        assert second.wait(GRACE + 3) == 0, second.logs_text()
        term_s = time.monotonic() - t_event
        replacement.wait_ready(120)
        cold_start = time.monotonic() - t_event

        wait_until(lambda: ledger.answered() == len(ledger.published), 300, "every job answered")
        drained = max(ledger.first_answers().values()) - t0
        time.sleep(LEASE + env.ack_deadline + 5)  # late duplicates of redelivered leases
        busy_idle = metric(third, "tabular_model_busy_ratio")

    groups = ledger.by_source()
    assert set(groups) == set(ledger.published), "a published job got no result"
    assert not ledger.phantoms(), "a result for a message that was never published"
    assert not ledger.unexpected()
    assert not same_delivery_twice(groups), "two results for one delivery"
    redelivered = sum(int(r.attrs["delivery_attempt"]) > 1 for g in groups.values() for r in g)
    assert redelivered > 0, "the lost workers' leases were never redelivered"
    duplicates = sum(len(g) - 1 for g in groups.values())
    assert duplicates <= 2 * IN_FLIGHT, "more duplicates than the two lost workers held"
    by_job = ledger.by_job()
    assert sum(len(g) - 1 for g in by_job.values()) == duplicates + RETRIED
    assert not disagreements(by_job)
    assert not env.drain(env.dead_letter_subscription, wait=1.0)
    assert term_s <= GRACE + 3
    # The survivors shared the work, and the gauges the scaler and on-call read are live.
    assert metric(third, "tabular_pubsub_acks_total") > 0
    assert metric(replacement, "tabular_pubsub_acks_total") > 0
    assert busy_mid > 0.5 and busy_idle < 0.2, (busy_mid, busy_idle)
    assert metric(third, "tabular_scaling_max_instances") == 3

    # The capacity model, replayed with the same jobs, rates and event times.
    rate = ServiceRate(MINILM.per_call, MINILM.per_row, batch_rows=64, in_flight=IN_FLIGHT)
    at = t_event - t0
    events: list[Event] = [Kill(at, 0), Terminate(at, 1), Start(at, cold_start)]
    simulation = Simulation([j.model_rows for j in jobs], rate, instances=3, events=events,
                            lease_seconds=LEASE, grace_seconds=GRACE)  # fmt: skip
    predicted = simulation.run(max_seconds=900).drain_seconds
    assert predicted is not None
    ratio = drained / predicted
    report = {
        "jobs": len(jobs), "rows": sum(j.model_rows for j in jobs), "published_s": published_s,
        "event_at_s": at, "cold_start_s": cold_start, "measured_drain_s": drained,
        "predicted_drain_s": predicted, "measured_over_predicted": ratio,
        "naive_drain_s": sum(j.model_rows for j in jobs) / (3 * rate.rows_per_second()),
        "redelivered": redelivered, "duplicates": duplicates, "retried": RETRIED,
        "load_average": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(report))
    if os.environ.get("TABULAR_SCALE_REPORT"):
        Path(os.environ["TABULAR_SCALE_REPORT"]).write_text(json.dumps(report, indent=2))
    assert 0.5 <= ratio <= 2.0, report


def test_job_mix_is_what_the_docstring_says() -> None:
    jobs = job_mix()
    ok = [j for j in jobs if j.expect == "ok"]
    assert len(jobs) == 3000
    assert len({j.job_id for j in jobs if j.job_id}) == len([j for j in jobs if j.job_id])
    rows = [orjson.loads(j.data)["table"]["rows"] for j in ok]
    assert min(map(len, rows)) == 1 and max(map(len, rows)) == MAX_ROWS
    assert {j.expect for j in jobs} - {"ok"} == {
        "invalid_json", "not_an_object", "ragged_rows", "empty_table", "too_many_rows",
        "cell_too_large", "unknown_type",
    }  # fmt: skip
