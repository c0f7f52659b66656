"""The drain simulation behind the capacity model (bench/scale.py, docs/scaling.md).

Time moves in steps of `dt`. Each instance leases at most `in_flight` jobs from the
subscription (flow control, TABULAR_MAX_IN_FLIGHT_JOBS) and, once ready, encodes their rows
oldest-first in calls of at most `batch_rows` rows (TABULAR_BATCH_MAX_ROWS); a call of n rows
takes ``per_call + n * per_row`` seconds, the service rate measured in docs/benchmarks.md, and its
rows are done when it returns. A job is acked when its last row is done. An instance starts
`cold_start` seconds after it is asked for. A SIGKILLed instance's leased jobs come back after
`lease_seconds` (its leases stop being extended); a SIGTERMed one stops pulling, finishes what
it can within `grace_seconds`, and nacks the rest, which come back at once. With `ScalerRules`
the instance count follows the autoscaler (bench/scaler.py) on the backlog it saw
`metric_delay_seconds` earlier; without, it follows the given events. tests/test_scale_out.py
replays its measured multi-worker run here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.scaler import Scaler, ScalerRules


@dataclass(frozen=True)
class ServiceRate:
    """One instance's model cost: an encode call of n rows takes per_call + n * per_row s."""

    per_call: float
    per_row: float
    batch_rows: int = 64
    in_flight: int = 64

    def rows_per_second(self) -> float:
        """Rows/s of one instance kept busy with full batches."""
        return self.batch_rows / (self.per_call + self.batch_rows * self.per_row)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    at: float
    instance: int  # index in start order (the first instances are 0..instances-1)


@dataclass(frozen=True)
class Terminate:
    at: float
    instance: int


@dataclass(frozen=True)
class Start:
    at: float
    cold_start: float


Event = Kill | Terminate | Start


# --- the simulation ---------------------------------------------------------------------------


@dataclass
class _Instance:
    started: float
    ready_at: float
    # [job index, rows not yet in an encode call, rows not yet encoded], oldest first
    leases: list[list[int]] = field(default_factory=list)
    call: list[tuple[list[int], int]] = field(default_factory=list)  # (lease, rows) encoding
    call_left: float = 0.0  # model seconds the call in progress still needs
    pulling: bool = True
    stop_at: float | None = None
    gone: bool = False


@dataclass
class Drain:
    drain_seconds: float | None  # None: not drained within max_seconds
    instance_seconds: float
    peak_instances: int
    answered: int
    timeline: list[tuple[float, int, int]]  # (t, backlog jobs, ready instances), every second


class Simulation:
    def __init__(
        self,
        jobs: Sequence[int],
        rate: ServiceRate,
        *,
        instances: int = 1,
        warm: int = 0,
        cold_start: float = 0.0,
        scaler: ScalerRules | None = None,
        events: Sequence[Event] = (),
        lease_seconds: float = 10.0,
        grace_seconds: float = 8.0,
        arrival_per_second: float | None = None,
        dt: float = 0.05,
    ) -> None:
        self.rows = list(jobs)
        self.rate = rate
        self.cold_start = cold_start
        self.scaler = Scaler(scaler) if scaler is not None else None
        self.rules = scaler
        self.events = sorted(events, key=lambda e: e.at)
        self.lease_seconds, self.grace_seconds = lease_seconds, grace_seconds
        self.arrival = arrival_per_second
        self.dt = dt
        self.queue: deque[int] = deque()
        self.returning: list[tuple[float, int]] = []  # (when, job) of a killed instance's leases
        self.released = 0
        self.answered = 0
        # `warm` instances are up at t=0; `instances` more are asked for at t=0 and start cold.
        self.fleet = [_Instance(0.0, 0.0) for _ in range(warm)]
        self.fleet += [_Instance(0.0, cold_start) for _ in range(instances)]
        self.history: deque[tuple[float, int]] = deque()  # (t, backlog) for the delayed metric

    def run(self, max_seconds: float = 86_400.0) -> Drain:
        t, next_poll, instance_seconds, peak = 0.0, 0.0, 0.0, 0
        timeline: list[tuple[float, int, int]] = []
        drained: float | None = None
        while t < max_seconds:
            self._arrive(t)
            self._apply_events(t)
            self._return_leases(t)
            backlog = self._backlog()
            self.history.append((t, backlog))
            if self.scaler is not None and t >= next_poll:
                self._autoscale(t)
                next_poll = t + self._rules().poll_seconds
            alive = [i for i in self.fleet if not i.gone]
            peak = max(peak, len(alive))
            instance_seconds += len(alive) * self.dt
            if not timeline or t - timeline[-1][0] >= 1.0 - 1e-9:
                timeline.append((round(t, 3), backlog, sum(t >= i.ready_at for i in alive)))
            for instance in alive:
                self._step(instance, t)
            t += self.dt
            if self.answered == len(self.rows):
                drained = t if drained is None else drained
                # With an autoscaler, run on until it is back at its minimum: that tail is paid.
                if self.scaler is None or not self._any_running():
                    break
        return Drain(drained, instance_seconds, peak, self.answered, timeline)

    # --- per step ---------------------------------------------------------------------------

    def _arrive(self, t: float) -> None:
        due = len(self.rows) if self.arrival is None else min(len(self.rows), int(t * self.arrival))
        while self.released < due:
            self.queue.append(self.released)
            self.released += 1

    def _apply_events(self, t: float) -> None:
        while self.events and self.events[0].at <= t:
            event = self.events.pop(0)
            if isinstance(event, Start):
                self.fleet.append(_Instance(t, t + event.cold_start))
            elif isinstance(event, Kill):
                self._kill(self.fleet[event.instance], t)
            else:
                self._terminate(self.fleet[event.instance], t)

    def _kill(self, instance: _Instance, t: float) -> None:
        instance.gone = True
        self.returning += [(t + self.lease_seconds, lease[0]) for lease in instance.leases]
        instance.leases, instance.call = [], []

    def _terminate(self, instance: _Instance, t: float) -> None:
        instance.pulling = False
        instance.stop_at = t + self.grace_seconds

    def _return_leases(self, t: float) -> None:
        back = sorted(job for when, job in self.returning if when <= t)
        self.returning = [(when, job) for when, job in self.returning if when > t]
        self.queue.extendleft(reversed(back))  # redelivered ahead of newer messages

    def _backlog(self) -> int:
        """num_undelivered_messages: published and not yet acked."""
        return self.released - self.answered

    def _step(self, instance: _Instance, t: float) -> None:
        if t < instance.ready_at:
            return
        if instance.stop_at is not None and t >= instance.stop_at:
            self.queue.extendleft(reversed([lease[0] for lease in instance.leases]))
            instance.leases, instance.call, instance.gone = [], [], True
            return
        if instance.pulling:
            while len(instance.leases) < self.rate.in_flight and self.queue:
                job = self.queue.popleft()
                instance.leases.append([job, self.rows[job], self.rows[job]])
        self._encode(instance, self.dt)

    def _encode(self, instance: _Instance, budget: float) -> None:
        """Spend `budget` model seconds: finish the call in progress, start the next ones."""
        self._ack_finished(instance)
        while budget > 0:
            if not instance.call and not self._start_call(instance):
                return
            spent = min(budget, instance.call_left)
            budget -= spent
            instance.call_left -= spent
            if instance.call_left <= 1e-12:
                for lease, rows in instance.call:
                    lease[2] -= rows
                instance.call = []
                self._ack_finished(instance)

    def _start_call(self, instance: _Instance) -> bool:
        """The next encode call: up to batch_rows rows, oldest job first, like the batcher."""
        size = 0
        for lease in instance.leases:
            take = min(lease[1], self.rate.batch_rows - size)
            if take:
                instance.call.append((lease, take))
                lease[1] -= take
                size += take
            if size == self.rate.batch_rows:
                break
        instance.call_left = self.rate.per_call + size * self.rate.per_row
        return size > 0

    def _ack_finished(self, instance: _Instance) -> None:
        done = [lease for lease in instance.leases if lease[2] == 0]
        if done:
            instance.leases = [lease for lease in instance.leases if lease[2] > 0]
            self.answered += len(done)

    # --- autoscaling --------------------------------------------------------------------------

    def _rules(self) -> ScalerRules:
        assert self.rules is not None
        return self.rules

    def _autoscale(self, t: float) -> None:
        assert self.scaler is not None
        seen = t - self._rules().metric_delay_seconds
        while len(self.history) > 1 and self.history[1][0] <= seen:
            self.history.popleft()
        metric = self.history[0][1] if self.history[0][0] <= seen else 0
        serving = [i for i in self.fleet if not i.gone and i.stop_at is None]
        wanted = self.scaler.decide(t, metric, len(serving))
        for _ in range(wanted - len(serving)):
            self.fleet.append(_Instance(t, t + self.cold_start))
        for instance in serving[wanted:][::-1]:  # newest go first
            self._terminate(instance, t)

    def _any_running(self) -> bool:
        floor = self._rules().min_instances
        return sum(not i.gone for i in self.fleet) > floor
