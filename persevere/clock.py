"""The one clock persevere reads: UTC epoch milliseconds, and the one way it waits.

Everything that needs "now" calls :func:`now_ms`, and every durable wait of
the engine (a retry's delay, ``persevere.sleep``) calls :func:`sleep`, so a
test can put a clock of its own in their place with :func:`use` (see
``persevere.testing``): schedules, Late runs, backoff and sleeps then take
milliseconds, not the hours they stand for.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What stands in for the system clock."""

    def now_ms(self) -> int: ...

    def sleep(self, seconds: float) -> None: ...


_clock: Clock | None = None


def now_ms() -> int:
    """Milliseconds since the epoch, UTC."""
    if _clock is None:
        return time.time_ns() // 1_000_000
    return _clock.now_ms()


def sleep(seconds: float) -> None:
    """Wait ``seconds`` (by this clock's reckoning)."""
    if seconds <= 0:
        return
    if _clock is None:
        time.sleep(seconds)
    else:
        _clock.sleep(seconds)


def use(clock: Clock | None) -> Clock | None:
    """Read time from ``clock`` from now on (None: the system clock); returns the one before."""
    global _clock
    previous, _clock = _clock, clock
    return previous
