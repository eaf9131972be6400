"""A simple circuit breaker per upstream.

Why it works this way: docs/design-notes.md.
"""

from __future__ import annotations

import math
import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """The state of one upstream."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probe_started: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        if self.clock() - self.opened_at < self.cooldown:
            return OPEN
        return HALF_OPEN

    def allow(self) -> bool:
        """May a request go to the upstream now? (Takes the probe slot when half-open.)"""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        now = self.clock()
        if self.probe_started is not None and now - self.probe_started < self.cooldown:
            return False  # one probe at a time
        self.probe_started = now
        return True

    def retry_after(self) -> int:
        """Whole seconds until a probe may go (at least 1)."""
        if self.opened_at is None:
            return 1
        left = self.opened_at + self.cooldown - self.clock()
        if self.probe_started is not None:
            left = max(left, self.probe_started + self.cooldown - self.clock())
        return max(1, math.ceil(left))

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probe_started = None

    def record_failure(self) -> None:
        """Count a connect failure or timeout; opens the circuit at the threshold."""
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()
            self.probe_started = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


class Circuits:
    """One breaker per upstream base URL (``scheme://host:port``)."""

    def __init__(self, failures: int = 5, cooldown: float = 10.0) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, upstream: str) -> CircuitBreaker:
        breaker = self._breakers.get(upstream)
        if breaker is None:
            breaker = self._breakers[upstream] = CircuitBreaker(self.failures, self.cooldown)
        return breaker


def is_connect_failure(exc: BaseException) -> bool:
    """Refused/unreachable/DNS: nothing reached the upstream, so a retry is safe."""
    return isinstance(exc, OSError) and not isinstance(
        exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError))
