"""Schedules for ``Flow.deploy(schedules=[...])``: ``Cron``, ``Interval`` and ``RRule``.

>>> from persevere import Cron, Interval
>>> weekday_mornings = Cron("0 7 * * 1-5", timezone="Europe/Berlin")
>>> every_quarter_hour = Interval("15m", parameters={"full": False}, catchup="skip")

Each is checked when it is deployed (the calendar, the timezone, the
parameters against the flow). ``import persevere`` does not load this module
(nor the calendar): the names are looked up on first use.

Options every kind takes (keyword only):

- ``timezone``: the IANA zone its times are read in (``"UTC"``);
- ``parameters``: laid over the deployment's defaults for its runs;
- ``catchup``: which overdue times still run after a scheduler was down or
  no worker took them: ``"latest"`` (the newest; default), ``"skip"``
  (none) or ``"all"`` (the newest ``catchup_cap``, 100 by default);
- ``grace_seconds``: a run not started this long after its time is Late
  (60); past it, catch-up decides whether it still runs;
- ``active``: False adds it paused (one that is there already, deployed
  before, keeps its state: ``persevere deployments pause-schedule`` and
  ``resume-schedule`` change it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .worker.scheduling import ScheduleSpec

__all__ = ["Cron", "Interval", "RRule"]


@dataclass(frozen=True, kw_only=True)
class _Options:
    timezone: str = "UTC"
    parameters: Mapping[str, Any] = field(default_factory=dict)
    catchup: str = "latest"
    catchup_cap: int = 100
    grace_seconds: float = 60.0
    active: bool = True

    def _spec(self, kind: str, expression: str, anchor: Any = None) -> ScheduleSpec:
        return ScheduleSpec(
            kind=kind,
            expression=expression,
            timezone=self.timezone,
            anchor=anchor,
            parameters=dict(self.parameters),
            catchup=self.catchup,
            catchup_cap=self.catchup_cap,
            grace=self.grace_seconds,
            active=self.active,
        )


@dataclass(frozen=True)
class Cron(_Options):
    """Runs at the times of a cron expression, on the wall clock of ``timezone``.

    ``Cron("0 7 * * 1-5", timezone="Europe/Berlin")``: 07:00 Berlin time on
    weekdays, summer and winter. Five fields, or ``@daily`` and its kin.
    """

    expression: str

    def spec(self) -> ScheduleSpec:
        """The schedule as deploying reads it."""
        return self._spec("cron", self.expression)


@dataclass(frozen=True)
class Interval(_Options):
    """Runs every ``every`` (``"15m"``, ``"1h30m"``, ``"2d"``, seconds, or a timedelta),
    counted from ``anchor`` (default 2000-01-01T00:00 in ``timezone``).

    Whole days step in wall-clock days (``"1d"`` anchored at 07:00 runs at
    07:00 local all year); shorter intervals are elapsed time.
    """

    every: str | int | float | dt.timedelta
    anchor: dt.datetime | str | None = None

    def spec(self) -> ScheduleSpec:
        """The schedule as deploying reads it."""
        every = self.every
        if isinstance(every, dt.timedelta):
            every = every.total_seconds()
        if isinstance(every, float) and every.is_integer():
            every = int(every)
        return self._spec("interval", str(every), self.anchor)


@dataclass(frozen=True)
class RRule(_Options):
    """Runs at the times of an RFC 5545 recurrence rule, e.g. ``"FREQ=WEEKLY;BYDAY=MO"``.

    Without DTSTART in the rule, it counts from ``anchor``, or from midnight
    (in ``timezone``) of the day it is first deployed.
    """

    rule: str
    anchor: dt.datetime | str | None = None

    def spec(self) -> ScheduleSpec:
        """The schedule as deploying reads it."""
        return self._spec("rrule", self.rule, self.anchor)


#: What ``Flow.deploy(schedules=...)`` takes.
Schedule = Cron | Interval | RRule
