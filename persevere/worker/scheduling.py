"""Schedules of deployments, on the side of the people who make them.

Checking what was given (a valid calendar, a known timezone, parameters the
flow takes, a catch-up policy), adding and replacing a deployment's
schedules, their next times (``preview``) and backfills. The scheduler that
makes the runs is :mod:`persevere.worker.scheduler`.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import clock
from ..journal import Journal
from ..journal.deployments import Deployment
from ..journal.schedules import NewSchedule, Schedule
from ..statemachine.calendar import (
    local_iso,
    make_calendar,
    next_times,
    parse_interval,
    parse_time,
    times_between,
)
from ..statemachine.catchup import NewRun, check_policy
from .deploying import given_parameters

__all__ = [
    "Backfill",
    "ScheduleSpec",
    "add",
    "backfill",
    "grace_ms",
    "next_run",
    "prepare",
    "prepare_all",
    "preview",
]


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as given (``persevere.Cron`` and its kin, or the command line), unchecked.

    ``anchor``: an aware datetime, ISO text (read in ``timezone`` if it has no
    offset) or epoch ms. ``grace``: seconds, or text such as ``90s`` or ``2m``.
    ``texts``: the command-line text of each parameter (see
    :func:`~persevere.worker.deploying.given_parameters`).
    """

    kind: str
    expression: str
    timezone: str = "UTC"
    anchor: dt.datetime | str | int | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    texts: Mapping[str, str] | None = None
    catchup: str = "latest"
    catchup_cap: int = 100
    grace: float | str = 60.0
    active: bool = True


def grace_ms(grace: float | str) -> int:
    """A grace period in ms from seconds (0 or more) or text (``90s``, ``2m``, ``1h``)."""
    if isinstance(grace, str):
        text = grace.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = parse_interval(text)
            except ValueError:
                if not (text[:1].isdigit() and set(text) <= set("0wdhms ")):
                    raise ValueError(
                        f"grace {grace!r} is not a duration; write seconds (90) or w/d/h/m/s "
                        "in that order (90s, 2m, 1h30m)"
                    ) from None
                seconds = 0.0  # "0s", "0m": no grace (parse_interval wants more than 0)
    else:
        seconds = float(grace)
    if not seconds >= 0:  # also NaN
        raise ValueError(f"grace {grace!r} must be 0 seconds or more")
    return round(seconds * 1000)


def anchor_ms(anchor: dt.datetime | str | int | None, timezone: str) -> int | None:
    """An anchor in epoch ms: an aware datetime, ISO text (naive: in ``timezone``), or ms."""
    if anchor is None or (isinstance(anchor, int) and not isinstance(anchor, bool)):
        return anchor
    if isinstance(anchor, dt.datetime):
        if anchor.tzinfo is None:
            return parse_time(anchor.isoformat(), timezone)
        return round(anchor.timestamp() * 1000)
    if not isinstance(anchor, str):
        raise ValueError(f"anchor {anchor!r} must be a datetime, ISO text or epoch milliseconds")
    try:
        return parse_time(anchor, timezone)
    except ValueError as exc:
        raise ValueError(f"anchor: {exc}") from None


def prepare(deployment: Deployment, spec: ScheduleSpec, now_ms: int) -> NewSchedule:
    """Check a schedule given for ``deployment``; raises ValueError (or ParameterError)
    with one line that says what is wrong.

    An rrule without DTSTART and without an anchor counts from midnight of
    today in its timezone, fixed now, so it never moves afterwards.
    """
    anchor = anchor_ms(spec.anchor, spec.timezone)
    if anchor is None and spec.kind == "rrule":
        today = local_iso(now_ms, spec.timezone)[:10]
        anchor = parse_time(today, spec.timezone)
    cal = make_calendar(spec.kind, spec.expression, spec.timezone, anchor)
    check_policy(spec.catchup, spec.catchup_cap)
    return NewSchedule(
        kind=cal.kind,
        expression=cal.expression,
        timezone=cal.timezone,
        anchor_ms=cal.anchor_ms,
        parameters=given_parameters(deployment, spec.parameters, spec.texts),
        active=spec.active,
        catchup=spec.catchup,
        catchup_cap=spec.catchup_cap,
        grace_ms=grace_ms(spec.grace),
    )


def prepare_all(
    journal: Journal, deployment: Deployment, specs: Sequence[ScheduleSpec]
) -> tuple[list[NewSchedule], list[bool]]:
    """Check schedules for :meth:`journal.schedules.replace`: each one checked, and
    whether its anchor was given (an existing schedule matches one without)."""
    now = clock.now_ms()
    return [prepare(deployment, s, now) for s in specs], [s.anchor is not None for s in specs]


def add(journal: Journal, deployment: Deployment, spec: ScheduleSpec) -> Schedule:
    """Check and add a schedule to a deployment (durable)."""
    return journal.schedules.add(deployment, prepare(deployment, spec, clock.now_ms()))


def next_run(schedule: Schedule, now_ms: int) -> int | None:
    """The schedule's first time after ``now_ms``; None if it is paused or never fires again."""
    if not schedule.is_active:
        return None
    found = next_times(schedule.calendar, now_ms, 1)
    return found[0] if found else None


def preview(schedules: Iterable[Schedule], now_ms: int, count: int) -> list[tuple[int, Schedule]]:
    """The next ``count`` times of the active ``schedules`` after ``now_ms``, merged in order."""
    streams = [
        [(t, s.id, s) for t in next_times(s.calendar, now_ms, count)]
        for s in schedules
        if s.is_active
    ]
    merged = heapq.merge(*streams, key=lambda item: (item[0], item[1]))
    return [(t, s) for t, _, s in list(merged)[:count]]


@dataclass(frozen=True)
class Backfill:
    """What a backfill did: the runs made and the times that had one already."""

    made: list[tuple[Schedule, int, str]]  # (schedule, time, run id)
    skipped: list[tuple[Schedule, int]]


def backfill(
    journal: Journal,
    deployment: Deployment,
    schedules: Sequence[Schedule],
    from_ms: int,
    to_ms: int,
    max_runs: int = 1000,
) -> Backfill:
    """Make a run for every time of ``schedules`` in ``[from_ms, to_ms]``, due now, in time
    order (durable, one transaction); a time that has a run already is skipped.

    Only times before now: the scheduler makes the rest. More than
    ``max_runs`` times is refused before anything is made.
    """
    now = clock.now_ms()
    if from_ms > to_ms:
        raise ValueError("backfill --from is after --to; give the earlier time first")
    if from_ms >= now:
        raise ValueError(
            "backfill --from is not in the past; backfill makes runs for past times "
            "(the scheduler makes the future ones)"
        )
    until = min(to_ms, now - 1)
    times = sorted(
        (t, s.id, s)
        for s in schedules
        for t in times_between(s.calendar, from_ms - 1, until, max_runs + 1)
    )
    if len(times) > max_runs:
        raise ValueError(
            f"backfill would make more than {max_runs} runs; give a shorter range or a larger --max"
        )
    items = [
        (s, NewRun(t, False, f"backfill by schedule {s.short_id} for {local_iso(t, s.timezone)}"))
        for t, _, s in times
    ]
    done = journal.schedules.backfill(deployment, items)
    return Backfill(
        made=[(s, new.time_ms, run_id) for s, new, run_id in done if run_id is not None],
        skipped=[(s, new.time_ms) for s, new, run_id in done if run_id is None],
    )
