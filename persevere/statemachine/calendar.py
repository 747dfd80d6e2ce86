"""The times a schedule fires: cron, interval or rrule, in a timezone, as a pure function.

Instants are UTC epoch milliseconds. Cron and rrule are evaluated in the
**wall-clock time** of the schedule's timezone: their naive local date-times
are iterated, then each is mapped to an instant by these rules:

- A wall time that does not exist (the spring-forward gap, e.g. 02:30 on
  2026-03-29 in Europe/Berlin) fires once, at the first instant after it: the
  instant the gap ends (03:00 CEST, 01:00 UTC). Several wall times inside one
  gap (``*/15 2 * * *``), and the wall time the gap ends at, collapse to that
  one instant, which fires once.
- A wall time that occurs twice (fall back, e.g. 02:30 on 2026-10-25 in
  Europe/Berlin) fires once, at its first occurrence (``fold=0``, CEST); the
  repeated hour's second pass fires nothing.
- The instants are strictly ascending, without duplicates.

Interval: a whole number of days (``1d``, ``7d``, ``2w``) steps in
wall-clock days from the anchor's local wall time, mapped by the rules above
(``1d`` anchored at 07:00 Europe/Berlin fires at 07:00 local all year); any
other interval is fixed elapsed time, ``anchor + n * interval`` for n >= 0
(``15m`` fires every 15 real minutes across a DST change). The default anchor
is 2000-01-01T00:00 local time in the timezone. Nothing fires before it.

Cron: five fields (minute hour day-of-month month day-of-week) or one of
@yearly @annually @monthly @weekly @daily @midnight @hourly, as croniter reads
them (names, ranges, steps, ``L``, ``W``, ``#``); when both day fields are
restricted, either one matching suffices (classic cron). Refused: seconds (6 or
7 fields), and croniter's hashed ``H`` and random ``R`` fields, because a
schedule must fire at the same times every time it is read.

rrule: RFC 5545 text read by dateutil's ``rrulestr``, one ``FREQ=...`` line or
a block of DTSTART/RRULE/RDATE/EXDATE lines (EXRULE, deprecated, is
refused). A DTSTART without a zone is a wall time in the schedule's
timezone, and so is ``DTSTART;TZID=<that timezone>``; a TZID naming another
zone, or a DTSTART in UTC (``Z``) when the schedule's timezone is not UTC, is
refused: the zone is said once, as
``timezone``. UNTIL is local time when DTSTART has no zone and UTC (``Z``)
when it has one (RFC 5545). Without DTSTART, ``anchor_ms`` gives it (its local
wall time) and UNTIL may be either. COUNT with UNTIL (RFC 5545 forbids it) and
a rule that never fires are refused. dateutil cannot iterate backwards, so an
rrule is walked forward from its DTSTART: a minutely rrule over years costs
seconds (use cron for that).

Design note. croniter can iterate zone-aware datetimes, and dateutil an aware
DTSTART, but each applies its own (and, for croniter, historically buggy) DST
policy; iterating naive wall time and mapping it here gives one policy for
both. Backwards, cron uses croniter's ``get_prev`` and intervals arithmetic,
so "the last run before now" costs the same after a year of downtime as
after a minute. Nothing here reads a clock: a rule without DTSTART would make
dateutil read ``datetime.now()``, so one is always given.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import itertools
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

KINDS = ("cron", "interval", "rrule")
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_RANGES = ("0-59", "0-23", "1-31, L, W", "1-12 or jan-dec", "0-7 or sun-sat, L, #")
_HASH_OR_RANDOM = re.compile(r"(?:^|[^a-z])[hr](?:[^a-z]|$)", re.IGNORECASE)
_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_INTERVAL = re.compile(
    r"(?:([0-9]+)w)? *(?:([0-9]+)d)? *(?:([0-9]+)h)? *(?:([0-9]+)m)? *(?:([0-9]+)s)?"
)
_MAX_INTERVAL = 100 * 366 * 86400
_DAY = 86400
_DTSTART = re.compile(r"^\s*DTSTART([^:]*):(.*)$", re.IGNORECASE | re.MULTILINE)
_TZID = re.compile(r"TZID=([^:;\n]+)", re.IGNORECASE)
_UNTIL_UTC = re.compile(r"UNTIL=[0-9T]+Z", re.IGNORECASE)
_RULE_INTERVAL = re.compile(r"(?:^|[;:])\s*INTERVAL=([^;\s]*)", re.IGNORECASE | re.MULTILINE)
_UTC_NAMES = ("UTC", "Etc/UTC")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MS = dt.timedelta(milliseconds=1)
_ZERO = dt.timedelta(0)


@dataclass(frozen=True)
class Calendar:
    """When a schedule fires; build one with :func:`make_calendar`, which validates it.

    Attributes:
        kind: ``"cron"``, ``"interval"`` or ``"rrule"``.
        expression: the cron text; the interval in whole seconds (``"900"``);
            or the RFC 5545 rule text as given.
        timezone: an IANA zone name; cron and rrule run on its wall clock.
        anchor_ms: interval: where counting starts (None: 2000-01-01T00:00
            local); rrule without DTSTART: its DTSTART; cron: always None.
    """

    kind: str
    expression: str
    timezone: str = "UTC"
    anchor_ms: int | None = None


def make_calendar(
    kind: str, expression: str, timezone: str = "UTC", anchor_ms: int | None = None
) -> Calendar:
    """Validate a schedule's parts and return its :class:`Calendar`.

    An interval may be written ``15m``, ``1h30m``, ``1h 30m``, ``2d``, ``1w`` or in
    seconds; the calendar holds whole seconds. ``anchor_ms`` is dropped where it
    means nothing (cron; an rrule with its own DTSTART).

    Raises:
        ValueError: one line naming what is wrong and what to write instead.
    """
    if kind not in KINDS:
        raise ValueError(f"schedule kind {kind!r} is not one of {', '.join(KINDS)}")
    _zone(timezone)
    if anchor_ms is not None and (isinstance(anchor_ms, bool) or not isinstance(anchor_ms, int)):
        raise ValueError(f"anchor_ms={anchor_ms!r} must be epoch milliseconds (an int)")
    text = " ".join(str(expression).split()) if kind != "rrule" else str(expression).strip()
    if kind == "cron":
        return Calendar(kind, _check_cron(text), timezone, None)
    if kind == "interval":
        return Calendar(kind, str(parse_interval(text)), timezone, anchor_ms)
    if _DTSTART.search(text):
        anchor_ms = None
    rule, _ = _parse_rrule(text, timezone, anchor_ms)
    try:
        first = next(iter(rule), None)
    except TypeError:  # dateutil compares a zoned and a zone-less date-time
        raise ValueError(
            f"rrule {text!r} mixes date-times with and without a zone; give every one "
            f"without a zone (they are read in {timezone})"
        ) from None
    if first is None:
        raise ValueError(f"rrule {text!r} never fires; check its BY* parts, COUNT and UNTIL")
    return Calendar(kind, text, timezone, anchor_ms)


def parse_interval(text: str) -> int:
    """Whole seconds in ``text``: ``900``, ``90s``, ``15m``, ``1h30m``, ``1h 30m``, ``2d``, ``1w``.

    Raises:
        ValueError: not a duration, not positive, or longer than 100 years.
    """
    raw = str(text).strip().lower()
    sign, body = (-1, raw[1:]) if raw.startswith("-") else (1, raw.removeprefix("+"))
    found = _INTERVAL.fullmatch(body)
    if body.isascii() and body.isdigit():
        seconds = sign * int(body)
    elif body and found:
        numbers = [int(n or 0) for n in found.groups()]
        seconds = sign * sum(n * size for n, (_, size) in zip(numbers, _UNITS, strict=True))
    else:
        raise ValueError(
            f"interval {text!r} is not a duration; write seconds (900) or w/d/h/m/s in that "
            "order (15m, 1h30m, 2d, 1w)"
        )
    if seconds <= 0:
        raise ValueError(f"interval {text!r} must be longer than 0 seconds")
    if seconds > _MAX_INTERVAL:
        raise ValueError(f"interval {text!r} is longer than 100 years")
    return seconds


def times_between(cal: Calendar, after_ms: int, until_ms: int, limit: int = 1000) -> list[int]:
    """The first ``limit`` instants t with ``after_ms < t <= until_ms``, ascending."""
    _check_count("limit", limit)
    if until_ms <= after_ms:
        return []
    return list(
        itertools.islice(
            itertools.takewhile(lambda t: t <= until_ms, _instants(cal, after_ms)), limit
        )
    )


def times_before(cal: Calendar, at_ms: int, after_ms: int, count: int) -> list[int]:
    """The last ``count`` instants t with ``after_ms < t <= at_ms``, ascending.

    Cron walks backwards from ``at_ms`` and intervals are arithmetic, so a huge
    range costs no more than a small one; an rrule is walked forward (dateutil).
    """
    _check_count("count", count)
    if count == 0 or at_ms <= after_ms:
        return []
    if cal.kind == "rrule":  # keep the last ones seen on the way
        return list(
            collections.deque(
                itertools.takewhile(lambda t: t <= at_ms, _instants(cal, after_ms)), count
            )
        )
    backwards = itertools.takewhile(lambda t: t > after_ms, _instants(cal, at_ms, backward=True))
    return list(itertools.islice(backwards, count))[::-1]


def next_times(cal: Calendar, after_ms: int, count: int) -> list[int]:
    """The first ``count`` instants after ``after_ms`` (fewer if the schedule ends)."""
    _check_count("count", count)
    return list(itertools.islice(_instants(cal, after_ms), count))


def describe(cal: Calendar) -> str:
    """One line for people: ``cron '0 7 * * 1-5' in Europe/Berlin``, ``every 15m from ...``."""
    tz = _zone(cal.timezone)
    if cal.kind == "interval":
        every = _format_interval(parse_interval(cal.expression))
        return f"every {every} from {_format_wall(_wall(_anchor_ms(cal, tz), tz))} {cal.timezone}"
    text = f"{cal.kind} {cal.expression!r} in {cal.timezone}"
    if cal.kind == "rrule" and cal.anchor_ms is not None:
        text += f" from {_format_wall(_wall(cal.anchor_ms, tz))}"
    return text


def local_iso(ms: int, timezone: str) -> str:
    """``ms`` as ISO 8601 local time with its offset, e.g. ``2026-03-29T03:00:00+02:00``."""
    moment = (_EPOCH + ms * _MS).astimezone(_zone(timezone))
    return moment.isoformat(timespec="seconds" if ms % 1000 == 0 else "milliseconds")


def parse_time(text: str, timezone: str) -> int:
    """Epoch ms of an ISO date or date-time; one without an offset is read in ``timezone``.

    A local time in a DST gap means the instant the gap ends; one that occurs twice,
    its first occurrence (the module's rules).

    Raises:
        ValueError: not an ISO date or date-time, or an unknown timezone.
    """
    tz = _zone(timezone)
    raw = str(text).strip()
    if raw.endswith(("z", "Z")):  # Python 3.10's fromisoformat knows no Z
        raw = raw[:-1] + "+00:00"
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"time {text!r} is not an ISO date or date-time; write 2026-03-01 or "
            "2026-03-01T07:00, optionally with an offset (+01:00 or Z)"
        ) from None
    if value.tzinfo is None:
        return _instant(value, tz)
    return (value - _EPOCH) // _MS


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        pass
    import difflib  # only on this error path

    by_lower = {known.lower(): known for known in zoneinfo.available_timezones()}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(by_lower[c] for c in close) + "?"
    else:
        hint = "give an IANA name such as Europe/Berlin, America/New_York or UTC"
    raise ValueError(f"unknown timezone {name!r}; {hint}")


def _wall(ms: int, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """The local wall time of an instant (naive; ``fold`` says if it is the second pass)."""
    return (_EPOCH + ms * _MS).astimezone(tz).replace(tzinfo=None)


def _instant(wall: dt.datetime, tz: zoneinfo.ZoneInfo) -> int:
    """The instant a local wall time fires at: its first occurrence, or the end of its gap."""
    ms = (wall.replace(tzinfo=tz, fold=0) - _EPOCH) // _MS
    if _wall(ms, tz) == wall:
        return ms
    # In a gap, fold=1 reads the wall time with the offset after the change (an
    # instant before it) and fold=0 with the one before (an instant after it):
    # the gap ends at the first instant between them whose wall time is >= wall.
    before = (wall.replace(tzinfo=tz, fold=1) - _EPOCH) // _MS
    while ms - before > 1:
        middle = (before + ms) // 2
        if _wall(middle, tz) >= wall:
            ms = middle
        else:
            before = middle
    return ms


def _instants(cal: Calendar, ms: int, backward: bool = False) -> Iterator[int]:
    """Instants after ``ms`` ascending, or at or before it descending; no duplicates."""
    tz = _zone(cal.timezone)
    seconds = parse_interval(cal.expression) if cal.kind == "interval" else 0
    if seconds % _DAY:  # elapsed time: arithmetic on instants
        yield from _steps(_anchor_ms(cal, tz), seconds * 1000, ms, backward)
        return
    local = (_EPOCH + ms * _MS).astimezone(tz)
    start = local.replace(tzinfo=None, fold=0)  # no later wall time maps to ms or before
    if backward and local.fold:  # in a second pass, every first-pass wall time is past too
        start += (local.replace(fold=0).utcoffset() or _ZERO) - (local.utcoffset() or _ZERO)
    if cal.kind == "cron":
        walls = _cron_walls(cal.expression, start + _MS if backward else start, backward)
    elif cal.kind == "interval":
        origin = _wall(_anchor_ms(cal, tz), tz).replace(fold=0)
        walls = _steps(origin, dt.timedelta(seconds=seconds), start, backward)
    else:
        walls = _rrule_walls(cal, tz, start)
    last = ms + 1 if backward else ms
    for wall in walls:
        t = _instant(wall, tz)
        # drops a gap's duplicates, and (forward) a repeated hour's second pass
        if (t < last) if backward else (t > last):
            last = t
            yield t


def _check_cron(text: str) -> str:
    from croniter import CroniterBadDateError, croniter  # deferred: ~45 ms

    example = "give 5 fields: minute hour day-of-month month day-of-week, e.g. '0 7 * * 1-5'"
    if text.lower() in CRON_ALIASES:
        return text.lower()
    if text.startswith("@"):
        raise ValueError(f"cron {text!r} is not an alias; use {', '.join(CRON_ALIASES)}")
    fields = text.split(" ")
    if len(fields) != 5:
        seconds = " (seconds are not supported)" if len(fields) in (6, 7) else ""
        raise ValueError(f"cron {text!r} has {len(fields)} fields{seconds}; {example}")
    for index, field in enumerate(fields):
        if _HASH_OR_RANDOM.search(field):
            raise ValueError(
                f"cron {text!r}: hashed (H) and random (R) fields are not supported, a "
                "schedule must fire at the same times whenever it is read"
            )
        alone = " ".join(field if i == index else "*" for i in range(5))
        if not croniter.is_valid(alone):
            raise ValueError(
                f"cron {text!r}: {_CRON_FIELDS[index]} field {field!r} is not valid "
                f"(allowed: {_CRON_RANGES[index]}, with * , - /)"
            )
    if not croniter.is_valid(text):
        raise ValueError(f"cron {text!r} is not valid; {example}")
    try:
        croniter(text, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValueError(f"cron {text!r} never fires (no such date); check day and month") from None
    return text


def _cron_walls(expression: str, start: dt.datetime, backward: bool) -> Iterator[dt.datetime]:
    """Wall times after ``start`` (before, if ``backward``), read by croniter on naive time."""
    from croniter import croniter

    it = croniter(expression, start.replace(fold=0))  # naive: croniter does no zone arithmetic
    step = it.get_prev if backward else it.get_next
    try:
        while True:
            yield step(dt.datetime)
    except (ValueError, OverflowError):  # CroniterBadDateError: no more dates, year 1 or 9999
        return


def _steps(origin: Any, step: Any, start: Any, backward: bool) -> Iterator[Any]:
    """``origin + n * step`` (instants or wall times) for n >= 0, after ``start``, or at or
    before it if ``backward``."""
    n = (start - origin) // step  # the last n at or before start
    try:
        for k in range(n, -1, -1) if backward else itertools.count(max(0, n + 1)):
            yield origin + k * step
    except OverflowError:  # past year 9999
        return


def _rrule_walls(cal: Calendar, tz: zoneinfo.ZoneInfo, start: dt.datetime) -> Iterator[dt.datetime]:
    rule, zoned = _parse_rrule(cal.expression, cal.timezone, cal.anchor_ms)
    bound = start.replace(tzinfo=zoned, fold=0)  # same tzinfo object: compared as wall times
    try:
        for value in rule.xafter(bound):
            if value.tzinfo is None or value.tzinfo is zoned:
                yield value.replace(tzinfo=None)
            else:  # a UTC date-time in a UTC schedule
                yield value.astimezone(tz).replace(tzinfo=None, fold=0)
    except OverflowError:
        return


@functools.lru_cache(maxsize=64)
def _parse_rrule(text: str, timezone: str, anchor_ms: int | None) -> tuple[Any, Any]:
    """The dateutil rule set for ``text``, and the tzinfo its date-times carry (or None)."""
    from dateutil.rrule import rrulestr  # deferred: ~10 ms, and its date parser ~35 ms

    tz = _zone(timezone)
    lines = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    if "FREQ=" not in lines.upper():
        raise ValueError(f"rrule {text!r} has no FREQ; write e.g. 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=7'")
    if "EXRULE" in lines.upper():  # dateutil may then search to year 9999 for a next time
        raise ValueError(
            f"rrule {text!r} has an EXRULE, which RFC 5545 deprecates; leave times out "
            "with EXDATE, or narrow the RRULE"
        )
    if "COUNT=" in lines.upper() and "UNTIL=" in lines.upper():
        raise ValueError(f"rrule {text!r} has COUNT and UNTIL; RFC 5545 allows one of them")
    for every in _RULE_INTERVAL.findall(lines):  # dateutil loops for ever on INTERVAL=0
        if not (every.isascii() and every.isdigit() and int(every) >= 1):
            raise ValueError(
                f"rrule {text!r}: INTERVAL={every} must be a whole number of at least 1"
            )
    found = _DTSTART.search(lines)
    extra: dict[str, Any] = {}
    if found:
        utc = found.group(2).strip().upper().endswith("Z")
        if utc and timezone not in _UTC_NAMES:
            raise ValueError(
                f"rrule {text!r}: DTSTART is in UTC (Z) but the schedule's timezone is {timezone}; "
                "write DTSTART without Z, as local time"
            )
        zoned = tz if utc or "TZID=" in found.group(1).upper() else None
    elif anchor_ms is None:
        raise ValueError(
            f"rrule {text!r} has no DTSTART; add one (DTSTART:20260301T070000) or pass anchor_ms"
        )
    else:
        zoned = tz if _UNTIL_UTC.search(lines) else None
        extra["dtstart"] = _wall(anchor_ms, tz).replace(microsecond=0, tzinfo=zoned, fold=0)
    for tzid in _TZID.findall(lines):
        if tzid != timezone:
            raise ValueError(
                f"rrule {text!r} has TZID={tzid} but the schedule's timezone is {timezone}; "
                "drop the TZID or make it the schedule's timezone"
            )
    try:
        rule = rrulestr(lines, forceset=True, unfold=True, tzids=lambda _: tz, **extra)
    except (ValueError, TypeError, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if "UNTIL" in reason:
            reason = "UNTIL must end in Z (UTC) when DTSTART has a zone, and must not otherwise"
        raise ValueError(f"rrule {text!r} does not parse: {reason}") from None
    return rule, zoned


def _anchor_ms(cal: Calendar, tz: zoneinfo.ZoneInfo) -> int:
    if cal.anchor_ms is not None:
        return cal.anchor_ms
    return _instant(dt.datetime(2000, 1, 1), tz)


def _check_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name}={value} must be >= 0")


def _format_interval(seconds: int) -> str:
    parts = []
    for unit, size in _UNITS:
        number, seconds = divmod(seconds, size)
        if number:
            parts.append(f"{number}{unit}")
    return "".join(parts)


def _format_wall(wall: dt.datetime) -> str:
    return wall.isoformat(timespec="seconds" if wall.second else "minutes")
