"""Test flows, schedules and waits in milliseconds: a temporary database and a clock you drive.

>>> from persevere.testing import harness
>>> with harness(start="2026-03-28T12:00:00+00:00") as h:
...     h.clock.advance(hours=2)
...     h.clock.iso()
'2026-03-28T14:00:00+00:00'

Inside :func:`harness` every journal write reads the test clock, and every
durable wait of the engine (a retry's backoff, ``persevere.sleep``) moves
the clock forward instead of waiting: a flow that sleeps a day returns at
once, a day later by the clock. :meth:`Harness.tick` runs one pass of the
scheduler (runs made ahead, Late runs, woken sleeps, timed-out pauses) at
the clock's time.

With pytest, the ``persevere_harness`` fixture gives the same, undone after
each test (the plugin is registered by installing persevere).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import clock as _clock
from .journal import Journal, close_all, open_journal

__all__ = ["Harness", "TestClock", "harness"]


class TestClock:
    """A clock that moves only when told to, or when the engine waits on it.

    ``sleep`` advances it by the time asked (and returns at once), so code
    that waits for a wake-up time gets there without waiting. It is safe to
    use from several threads.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, start: dt.datetime | str | int | float | None = None) -> None:
        self._lock = threading.Lock()
        self._ms = _to_ms(start) if start is not None else 1_767_225_600_000  # 2026-01-01 UTC

    def now_ms(self) -> int:
        with self._lock:
            return self._ms

    def sleep(self, seconds: float) -> None:
        self.advance(seconds=max(0.0, seconds))

    def advance(self, seconds: float = 0, **delta: float) -> int:
        """Move forward by ``seconds`` (and/or ``minutes=``, ``hours=``, ``days=``, ``weeks=``)."""
        step = dt.timedelta(seconds=seconds, **delta)
        if step < dt.timedelta(0):
            raise ValueError("a test clock moves forward only; give a positive amount")
        with self._lock:
            self._ms += round(step.total_seconds() * 1000)
            return self._ms

    def set(self, when: dt.datetime | str | int | float) -> int:
        """Move to a given instant (an aware datetime, ISO text, or epoch milliseconds)."""
        target = _to_ms(when)
        with self._lock:
            if target < self._ms:
                raise ValueError(f"a test clock moves forward only; {when!r} is in its past")
            self._ms = target
            return self._ms

    @property
    def now(self) -> dt.datetime:
        """The clock's time, as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.timezone.utc)

    def iso(self) -> str:
        return self.now.isoformat()


def _to_ms(when: dt.datetime | str | int | float) -> int:
    if isinstance(when, (int, float)):
        return int(when)
    if isinstance(when, str):  # Python 3.10 reads no trailing Z
        when = dt.datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no timezone; give an aware time, e.g. ...+00:00")
    return round(when.timestamp() * 1000)


@dataclass
class Harness:
    """What :func:`harness` hands out: the database, its journal and the clock."""

    path: Path
    clock: TestClock

    @property
    def journal(self) -> Journal:
        return open_journal(self.path)

    def tick(self) -> list[str]:
        """One pass of the scheduler at the clock's time; returns what it did, a line each."""
        # Deferred: the scheduler's calendar is loaded only by the tests that use it.
        from .worker.scheduler import Scheduler

        return Scheduler(self.journal).tick()


@contextmanager
def harness(
    start: dt.datetime | str | int | None = None, directory: Path | str | None = None
) -> Iterator[Harness]:
    """A temporary database made the default (``PERSEVERE_DB``) and a :class:`TestClock`.

    Both are undone on exit: the environment, the system clock, the journals.
    """
    test_clock = TestClock(start)
    with tempfile.TemporaryDirectory(prefix="persevere-test-", dir=directory) as folder:
        path = Path(folder) / "persevere.db"
        saved = {k: os.environ.get(k) for k in ("PERSEVERE_DB", "PERSEVERE_HOME")}
        os.environ["PERSEVERE_DB"] = str(path)
        os.environ["PERSEVERE_HOME"] = str(Path(folder) / "home")
        previous = _clock.use(test_clock)
        try:
            yield Harness(path, test_clock)
        finally:
            close_all([path.absolute()])
            _clock.use(previous)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
