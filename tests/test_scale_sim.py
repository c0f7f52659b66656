"""The capacity model: the drain simulation (bench/drain.py) against cases worked out by hand,
and the autoscaler's rules (bench/scaler.py) against CREMA's behaviour (read from its source)."""

from __future__ import annotations

import pytest

from bench.drain import Kill, ServiceRate, Simulation, Start, Terminate
from bench.scale import BACKENDS, cost_per_million_rows, instances_for, main, rate_table
from bench.scaler import Scaler, ScalerRules

# A batch of 64 rows costs 0.01 + 64 * 0.001 = 0.074 s.
RATE = ServiceRate(per_call=0.01, per_row=0.001, batch_rows=64, in_flight=4)
DT = 0.01


def test_one_instance_drains_at_its_service_rate() -> None:
    result = Simulation([64] * 100, RATE, instances=1, dt=DT).run()
    assert result.drain_seconds == pytest.approx(7.4, abs=2 * DT)
    assert result.instance_seconds == pytest.approx(7.4, abs=2 * DT)
    assert RATE.rows_per_second() == pytest.approx(64 / 0.074)


def test_cold_start_and_more_instances() -> None:
    cold = Simulation([64] * 100, RATE, instances=1, cold_start=5.0, dt=DT).run()
    assert cold.drain_seconds == pytest.approx(12.4, abs=2 * DT)
    two = Simulation([64] * 100, RATE, instances=2, dt=DT).run()
    assert two.drain_seconds == pytest.approx(3.7, abs=2 * DT)


def test_jobs_of_a_killed_instance_come_back_after_the_lease() -> None:
    # One 640-row job each (0.74 s); instance 0 dies at 0.3 s, its job returns at 2.3 s and the
    # survivor, idle since 0.74 s, runs it again from the start.
    one_each = ServiceRate(per_call=0.01, per_row=0.001, batch_rows=64, in_flight=1)
    sim = Simulation([640, 640], one_each, instances=2, events=[Kill(0.3, 0)],
                     lease_seconds=2.0, dt=DT)  # fmt: skip
    assert sim.run().drain_seconds == pytest.approx(3.04, abs=3 * DT)


def test_a_terminated_instance_nacks_what_it_cannot_finish_in_its_grace() -> None:
    one_each = ServiceRate(per_call=0.01, per_row=0.001, batch_rows=64, in_flight=1)
    sim = Simulation([640, 640], one_each, instances=2, events=[Terminate(0.0, 0)],
                     grace_seconds=0.2, dt=DT)  # fmt: skip
    assert sim.run().drain_seconds == pytest.approx(1.48, abs=3 * DT)
    # A second instance asked for at 0.1 s is ready at 0.6 s and takes the second job.
    started = Simulation([640, 640], one_each, instances=1, events=[Start(0.1, 0.5)], dt=DT)
    assert started.run().drain_seconds == pytest.approx(0.6 + 0.74, abs=3 * DT)


def test_flow_control_keeps_a_new_instance_idle() -> None:
    """With leases for the whole backlog on one instance, a second one has nothing to take."""
    greedy = ServiceRate(per_call=0.01, per_row=0.001, batch_rows=64, in_flight=100)
    sim = Simulation([64] * 100, greedy, instances=1, events=[Start(0.5, 0.0)], dt=DT)
    assert sim.run().drain_seconds == pytest.approx(7.4, abs=2 * DT)
    sim = Simulation([64] * 100, RATE, instances=1, events=[Start(0.5, 0.0)], dt=DT)
    assert sim.run().drain_seconds == pytest.approx(0.5 + 6.9 / 2, abs=4 * DT)


# --- the autoscaler's rules -------------------------------------------------------------------


def test_scale_up_goes_to_one_first_then_by_policy_and_up_to_max() -> None:
    scaler = Scaler(ScalerRules(target_per_instance=10, max_instances=12))
    assert scaler.decide(0, 1000, 0) == 1  # 0 -> 1 first, whatever the backlog
    assert scaler.decide(30, 1000, 1) == 5  # max(+100 %, +4) per 15 s
    assert scaler.decide(40, 1000, 5) == 5  # the 15 s period that began at 1 is not over
    assert scaler.decide(60, 1000, 5) == 10
    assert scaler.decide(90, 1000, 10) == 12  # max_instances


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    scaler = Scaler(ScalerRules(target_per_instance=10, min_instances=1))
    assert scaler.decide(0, 100, 10) == 10
    assert scaler.decide(30, 0, 10) == 10  # the 300 s window still holds 10
    assert scaler.decide(301, 0, 10) == 1  # then straight down (-100 %/15 s) to min
    assert scaler.decide(400, 25, 1) == 3


def test_activation_holds_zero_only_when_applied() -> None:
    keda = ScalerRules(target_per_instance=10, activation=5, apply_activation=True)
    assert Scaler(keda).decide(0, 5, 0) == 0
    assert Scaler(keda).decide(0, 6, 0) == 1
    crema = ScalerRules(target_per_instance=10, activation=5)
    assert Scaler(crema).decide(0, 5, 0) == 1


def test_autoscaled_drain_waits_for_the_metric_and_the_cold_start() -> None:
    rules = ScalerRules(target_per_instance=10, max_instances=4, poll_seconds=1,
                        metric_delay_seconds=3, down_window_seconds=5)  # fmt: skip
    sim = Simulation([64] * 200, RATE, instances=0, cold_start=2.0, scaler=rules, dt=0.05)
    result = sim.run(max_seconds=120)
    ready = [(t, n) for t, _, n in result.timeline if n > 0]
    assert ready[0][0] == pytest.approx(3 + 2, abs=1.0)  # metric delay, then cold start
    assert result.peak_instances == 4
    assert result.drain_seconds is not None and result.drain_seconds < 14.8 / 4 * 2 + 8
    # It runs on until the autoscaler is back at its minimum (0), and no longer.
    assert not [i for i in sim.fleet if not i.gone]
    assert result.timeline[-1][0] < 40


# --- the report ---------------------------------------------------------------------------------


def test_rates_and_costs() -> None:
    minilm = BACKENDS["minilm-torch"].rate
    assert minilm is not None
    assert 240 < minilm.rows_per_second() < 270  # docs/benchmarks.md: ~250 rows/s at batch 32
    assert instances_for(1000, minilm) == 5
    # 2.5 vCPU and 4.5 GiB at $0.000018 and $0.000002 a second: $0.000054 a second.
    assert cost_per_million_rows(minilm) == pytest.approx(1e6 / minilm.rows_per_second() * 5.4e-5)
    table = "\n".join(rate_table())
    assert "to be measured" in table and "BAAI/bge-m3" in table


def test_cli_drain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drain", "--backend", "minilm-torch", "--jobs", "50", "--instances", "2",
                 "--cold-start", "0"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "drained in" in out and "peak 2 instances" in out
