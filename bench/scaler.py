"""The autoscaler's rules, as CREMA applies them to a Cloud Run worker pool (for bench/scale.py).

CREMA (github.com/GoogleCloudPlatform/cloud-run-external-metrics-autoscaling, read at commit
b95cf54) polls KEDA scalers every `pollingInterval` seconds and, per scaled object:

- recommends ``ceil(metric / target)`` instances for an AverageValue metric (KEDA's `gcp-pubsub`
  scaler reports the subscription's `num_undelivered_messages` with target `value`);
- goes from 0 to exactly 1 instance first;
- bounds a scale-up by the stabilisation window (default 0 s) and the rate policies (default: the
  larger of +100 % and +4 instances per 15 s), and a scale-down by the largest recommendation of
  the stabilisation window (default 300 s) and its policy (default -100 % per 15 s);
- clamps to [minReplicaCount, maxReplicaCount] (default max 100).

It computes the trigger's activity (`activationValue`) but, at that commit, does not use it;
KEDA on GKE would hold the deployment at 0 while the metric is at or under activation, so that
rule is modelled as an option. The metric itself reaches the scaler late: Cloud Monitoring
ingests Pub/Sub metrics with a delay of a few minutes (CREMA's README, "Slow metrics").
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScalerRules:
    """A CREMA `ScaledObject` with one `gcp-pubsub` trigger (mode SubscriptionSize)."""

    target_per_instance: float  # trigger `value`: undelivered messages per instance
    min_instances: int = 0
    max_instances: int = 100
    activation: float = 0.0  # trigger `activationValue` (KEDA only; see module docstring)
    apply_activation: bool = False
    poll_seconds: float = 30.0  # CremaConfig `pollingInterval`
    metric_delay_seconds: float = 120.0  # Cloud Monitoring ingestion + the scaler's time horizon
    up_percent: float = 100.0
    up_instances: int = 4
    up_period_seconds: float = 15.0
    up_window_seconds: float = 0.0
    down_percent: float = 100.0
    down_period_seconds: float = 15.0
    down_window_seconds: float = 300.0

    def recommend(self, metric: float, current: int) -> int:
        """The unbounded recommendation for a metric value."""
        if self.apply_activation and current == 0 and metric <= self.activation:
            return 0
        return math.ceil(metric / self.target_per_instance) if metric > 0 else 0


@dataclass
class Scaler:
    """Stateful replay of the rules: `decide` once per poll."""

    rules: ScalerRules
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _ups: deque[tuple[float, int]] = field(default_factory=deque)
    _downs: deque[tuple[float, int]] = field(default_factory=deque)

    def decide(self, now: float, metric: float, current: int) -> int:
        r = self.rules
        if not self._recommendations:  # CREMA seeds its window with the count it found
            self._recommendations.append((now, current))
        wanted = r.recommend(metric, current)
        if current == 0 and wanted > 0:
            bounded = 1
        elif wanted > current:
            stable = max(current, self._window_min(now, wanted))
            bounded = min(wanted, stable, self._up_limit(now, current))
        elif wanted < current:
            stable = min(current, self._window_max(now, wanted))
            bounded = max(wanted, stable, self._down_limit(now, current))
        else:
            bounded = wanted
        self._recommendations.append((now, wanted))
        decided = min(max(bounded, r.min_instances), r.max_instances)
        if decided > current:
            self._ups.append((now, decided - current))
        elif decided < current:
            self._downs.append((now, current - decided))
        return decided

    def _changed(self, events: deque[tuple[float, int]], now: float, period: float) -> int:
        return sum(n for t, n in events if t > now - period)

    def _period_start(self, now: float, current: int, period: float) -> int:
        added = self._changed(self._ups, now, period)
        return current - added + self._changed(self._downs, now, period)

    def _up_limit(self, now: float, current: int) -> int:
        r = self.rules
        start = self._period_start(now, current, r.up_period_seconds)
        by_percent = math.ceil(start * (1 + r.up_percent / 100))
        return max(by_percent, start + r.up_instances)

    def _down_limit(self, now: float, current: int) -> int:
        r = self.rules
        start = self._period_start(now, current, r.down_period_seconds)
        return math.floor(start * (1 - r.down_percent / 100))

    # Recommendations (unbounded, as CREMA records them) of the stabilisation windows.
    def _window_min(self, now: float, wanted: int) -> int:
        window = [n for t, n in self._recommendations if t > now - self.rules.up_window_seconds]
        return min([wanted, *window])

    def _window_max(self, now: float, wanted: int) -> int:
        window = [n for t, n in self._recommendations if t > now - self.rules.down_window_seconds]
        return max([wanted, *window])
