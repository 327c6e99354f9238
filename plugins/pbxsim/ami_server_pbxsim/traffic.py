"""Call traffic for load tests: inbound calls at a steady rate, seeded for repeatable runs."""

from __future__ import annotations

import random
from typing import Any, Optional

from .config import Distribution, Traffic
from .core import Simulator

#: The most calls one late timer places to catch up.
MAX_BURST = 100


class TrafficGenerator:
    """Starts ``calls_per_second`` inbound calls while fewer than ``max_concurrent`` are up.

    Callers, destinations, ring and talk times and hang-up causes are drawn
    from one ``random.Random`` seeded with the simulator's ``seed``, so two
    runs with the same seed and clock make the same calls. Call times are
    counted from the start, not from the previous timer: a late timer (a
    busy loop) places the calls that are due at once, so the offered rate is
    kept (at most :data:`MAX_BURST` calls per timer, the next one
    following at once).
    """

    def __init__(self, sim: Simulator, scenario: Traffic) -> None:
        self.sim = sim
        self.scenario = scenario
        self.rng = random.Random(sim.config.seed)
        self.running = False
        self.started = 0
        self.skipped = 0
        self._timer: Optional[Any] = None
        self._t0 = 0.0
        self._ticks = 0  # call times handled since start (placed or skipped)

    def _draw(self, dist: Distribution) -> float:
        return dist.low if dist.high == dist.low else self.rng.uniform(dist.low, dist.high)

    def start(self) -> None:
        if not self.running:
            self.running = True
            self._t0 = self.sim.monotonic()
            self._ticks = 0
            self._tick()

    def stop(self) -> None:
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self.running:
            return
        scenario = self.scenario
        interval = self.sim.config.time_scale / scenario.calls_per_second  # between call times, in clock time
        due = int((self.sim.monotonic() - self._t0) / interval + 1e-6) + 1
        for _ in range(max(1, min(due - self._ticks, MAX_BURST))):
            if scenario.total_calls and self.started >= scenario.total_calls:
                self.running = False
                return
            self._ticks += 1
            if self.sim.live_calls < scenario.max_concurrent:
                self.place_call()
            else:
                self.skipped += 1
        delay = (self._t0 + self._ticks * interval - self.sim.monotonic()) / self.sim.config.time_scale
        self._timer = self.sim.later(max(delay, 0.0), self._tick)

    def place_call(self) -> None:
        scenario, rng = self.scenario, self.rng
        caller = self.sim.config.endpoints[rng.choice(scenario.callers)]
        exten, _, context = rng.choice(scenario.destinations).partition("@")
        causes, weights = zip(*scenario.hangup_causes)
        cause = rng.choices(causes, weights)[0]
        talk = self._draw(scenario.talk_time)
        ring = self._draw(scenario.ring_time)
        self.started += 1
        self.sim.inbound_call(caller, exten, context or "default", (talk, cause), ring)
