"""A clock that moves only when a test moves it: for code that takes a `clock` (key cache, open-mode
recheck, stall watchdog), so that a test advances time instead of sleeping through it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeClock:
    now: float = 1000.0
    """Seconds; any start works, as only differences are read."""

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
