"""Automation triggers: parse a trigger spec, and judge events and time against it.

A trigger comes from a file a user writes (a JSON-able dict). :func:`parse_trigger`
checks it once; afterwards nothing raises. Five kinds:

- ``event``: ``threshold`` events matching ``match`` (within ``within``, per
  ``for_each`` group) fire. Counting is by the events' *occurred* time.
- ``absence``: an ``expect`` event did not come within ``within`` (after an
  ``after`` event, or else in back-to-back windows).
- ``deadline``: an ``expect`` event did not come by a time of day (``by``) in a
  timezone, on chosen days; the deadlines are a cron calendar, so daylight-saving
  rules are those of the schedules (:mod:`persevere.statemachine.calendar`).
- ``compound``: ``require`` of its child triggers fired (within ``within``).
- ``sequence``: its child triggers fired in order (within ``within``).

Evaluation is a fold: ``initial_state``, then ``on_event`` and ``on_time`` return
a new state and the firings; the state is plain JSON (the caller keeps it in
SQLite between passes) and the one passed in is never changed. A firing's key is
a pure function of the trigger, the events and the time, so replaying the same
events from the same state gives the same keys (an idempotency key).

Time only moves forward in a state. ``on_event`` first lets time catch up to
the event's occurred time (never past ``now_ms``), in every child of a compound
or sequence too, then applies the event: an event that occurred after a
deadline is judged after that deadline, however late ``on_time`` is called; one
that occurred before it still counts when a backlog is read after the deadline;
and a compound sees its children's firings in time order either way.

Design note. Rejected: counting by arrival (``now_ms``) instead of occurred
time, which would make a backlog read after an outage fire differently from the
same events read live; keeping every event in the state (it must stay small:
at most ``threshold`` matches per group, at most 10,000 groups and 100,000
matches); expiring ``event`` groups in ``on_time`` by the clock, which would
let the moment ``on_time`` happens to be called change what fires (they expire
by the occurred time of later events instead, so ``next_due`` is None for them).
Catching up on missed windows fires at most 100 per group per call and skips
the rest.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from .calendar import Calendar, make_calendar, next_times, parse_interval, parse_time, times_before

KINDS = ("event", "absence", "deadline", "compound", "sequence")
MAX_GROUPS = 10_000
MAX_MATCHES = 100_000
MAX_THRESHOLD = 10_000
MAX_CATCH_UP = 100
_KEYS = {
    "event": {"type", "match", "resource", "related", "threshold", "within", "for_each"},
    "absence": {"type", "expect", "after", "within", "resource", "related", "for_each"},
    "deadline": {"type", "expect", "by", "timezone", "days", "since", "resource", "related"},
    "compound": {"type", "triggers", "require", "within"},
    "sequence": {"type", "triggers", "within"},
}
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbers 0..6
_DAY_SETS = {"daily": "*", "weekdays": "1-5", "weekends": "0,6"}
_TIME_OF_DAY = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DURATION_HINT = "write e.g. 10m, 1h30m, 2d or a number of seconds"

Labels: TypeAlias = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Event:
    """One event of the journal, as triggers see it."""

    seq: int  # global order in the journal, ascending
    id: str
    event: str  # dotted name, e.g. "s3.file.arrived"
    occurred_ms: int  # UTC epoch ms
    resource: dict[str, str]  # labels; always has "id"
    related: tuple[dict[str, str], ...] = ()  # each has "id" and usually "role"
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Firing:
    """A trigger fired: what, why, when, because of which events."""

    key: str  # the same inputs always give the same key (an idempotency key)
    path: str  # which trigger: "" the top one, "0", "1", "1.0" its children
    reason: str  # one line for people
    at_ms: int  # the event's occurred time (reactive) or the deadline (time-based)
    event_ids: tuple[str, ...]
    event: Event | None  # the last event that made it fire (actions template from it)
    group: dict[str, str]  # the for_each label values of the group that fired


@dataclass(frozen=True)
class Selector:
    """Which events a trigger looks at: name patterns, and patterns of resource labels
    (every one must match) and of related resources' labels (one resource matches all)."""

    names: tuple[str, ...]
    resource: Labels = ()
    related: Labels = ()

    def accepts(self, event: Event) -> bool:
        """True if ``event`` is one of these."""
        return (
            any(matches(p, event.event) for p in self.names)
            and _labels_match(self.resource, event.resource)
            and (not self.related or any(_labels_match(self.related, r) for r in event.related))
        )


@dataclass(frozen=True)
class EventTrigger:
    """Fires when ``threshold`` matching events occur (within ``within_ms``), per group."""

    kind: ClassVar[str] = "event"
    select: Selector
    threshold: int = 1
    within_ms: int | None = None
    for_each: tuple[str, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class AbsenceTrigger:
    """Fires when no ``expect`` event comes within ``within_ms`` (after an ``after`` event)."""

    kind: ClassVar[str] = "absence"
    expect: Selector
    within_ms: int
    after: Selector | None = None
    for_each: tuple[str, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class DeadlineTrigger:
    """Fires when no ``expect`` event comes by ``by`` (HH:MM) in ``timezone`` on its days."""

    kind: ClassVar[str] = "deadline"
    expect: Selector
    by: str
    calendar: Calendar  # the deadlines, a cron calendar
    days: str = "daily"  # as written: daily, weekdays, weekends or "mon,wed"
    since: str | None = None
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CompoundTrigger:
    """Fires when ``require`` of its children fired (within ``within_ms``)."""

    kind: ClassVar[str] = "compound"
    triggers: tuple[Trigger, ...]
    require: int
    within_ms: int | None = None
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SequenceTrigger:
    """Fires when its children fired in order (the last within ``within_ms`` of the first)."""

    kind: ClassVar[str] = "sequence"
    triggers: tuple[Trigger, ...]
    within_ms: int | None = None
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


Trigger: TypeAlias = (
    EventTrigger | AbsenceTrigger | DeadlineTrigger | CompoundTrigger | SequenceTrigger
)
_Combined: TypeAlias = CompoundTrigger | SequenceTrigger
_Step: TypeAlias = Callable[["Trigger", Any, str], tuple[dict[str, Any], list[Firing]]]


# --- parsing -----------------------------------------------------------------------------


def parse_trigger(spec: Mapping[str, Any]) -> Trigger:
    """Validate a trigger spec and return its :data:`Trigger`; ``.spec`` is the normalized dict.

    Raises:
        ValueError: one line naming the field, what is wrong and what to write instead.
    """
    return _parse(spec, "trigger")


def duration_ms(value: Any, field: str) -> int:
    """Milliseconds in ``value``: ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2d"`` or seconds (a number).

    Raises:
        ValueError: not a positive duration; the message starts with ``field``.
    """
    if isinstance(value, str):
        try:
            return parse_interval(value) * 1000
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: {value!r} is not a duration; {_DURATION_HINT}")
    if not math.isfinite(value) or round(value * 1000) <= 0:
        raise ValueError(f"{field}: {value!r} must be more than 0 seconds; {_DURATION_HINT}")
    if value > 100 * 366 * 86400:
        raise ValueError(f"{field}: {value!r} is longer than 100 years; {_DURATION_HINT}")
    return round(value * 1000)


@functools.lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def matches(pattern: str, name: str) -> bool:
    """True if ``name`` matches ``pattern`` whole: ``*`` is any run of characters, dots
    included (``s3.*`` matches ``s3.file.arrived``); every other character is literal."""
    return _pattern(pattern).fullmatch(name) is not None


def _parse(spec: Any, where: str) -> Trigger:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: {spec!r} is not a mapping; write e.g. {{match: s3.file.*}}")
    kind = spec.get("type", "event")
    if kind not in KINDS:
        raise ValueError(f"{where}.type: {kind!r} is not a trigger type; use {', '.join(KINDS)}")
    for key in spec:
        if key not in _KEYS[kind]:
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise ValueError(f"{where}.{key}: unknown key; a {kind!r} trigger takes {allowed}")
    parsers: dict[str, Callable[[Mapping[str, Any], str], Trigger]] = {
        "event": _parse_event,
        "absence": _parse_absence,
        "deadline": _parse_deadline,
        "compound": _parse_combined,
        "sequence": _parse_combined,
    }
    return parsers[kind](spec, where)


def _parse_event(spec: Mapping[str, Any], where: str) -> Trigger:
    select = _selector(spec, "match", where)
    threshold = spec.get("threshold", 1)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"{where}.threshold: {threshold!r} is not a whole number; write e.g. 3")
    if not 1 <= threshold <= MAX_THRESHOLD:
        raise ValueError(
            f"{where}.threshold: {threshold} is out of range; write 1 to {MAX_THRESHOLD}"
        )
    within = _optional_duration(spec, "within", where)
    for_each = _for_each(spec.get("for_each"), where)
    normal = {"type": "event", **_select_spec(select, "match"), "threshold": threshold}
    normal.update(_extra_spec(within, for_each))
    return EventTrigger(select, threshold, within, for_each, normal)


def _parse_absence(spec: Mapping[str, Any], where: str) -> Trigger:
    expect = _selector(spec, "expect", where)
    after = _selector(spec, "after", where) if spec.get("after") is not None else None
    if spec.get("within") is None:
        raise ValueError(f"{where}.within: an absence trigger needs a window; write e.g. 10m")
    within = duration_ms(spec["within"], f"{where}.within")
    for_each = _for_each(spec.get("for_each"), where)
    normal = {"type": "absence", **_select_spec(expect, "expect")}
    if after is not None:
        normal["after"] = list(after.names)
    normal.update(_extra_spec(within, for_each))
    return AbsenceTrigger(expect, within, after, for_each, normal)


def _parse_deadline(spec: Mapping[str, Any], where: str) -> Trigger:
    expect = _selector(spec, "expect", where)
    if spec.get("by") is None:
        raise ValueError(f"{where}.by: a deadline trigger needs a time of day; write e.g. '09:00'")
    by = _time_of_day(spec["by"], f"{where}.by")
    since = _time_of_day(spec["since"], f"{where}.since") if spec.get("since") else None
    timezone = spec.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise ValueError(f"{where}.timezone: {timezone!r} is not a zone; write e.g. Europe/London")
    days, dow = _days(spec.get("days", "daily"), f"{where}.days")
    hour, minute = by.split(":")
    try:
        calendar = make_calendar("cron", f"{int(minute)} {int(hour)} * * {dow}", timezone)
    except ValueError as exc:
        raise ValueError(f"{where}.timezone: {exc}") from None
    normal = {"type": "deadline", **_select_spec(expect, "expect"), "by": by}
    normal.update({"timezone": timezone, "days": days if isinstance(days, str) else list(days)})
    if since is not None:
        normal["since"] = since
    label = days if isinstance(days, str) else ",".join(days)
    return DeadlineTrigger(expect, by, calendar, label, since, normal)


def _parse_combined(spec: Mapping[str, Any], where: str) -> Trigger:
    kind = spec["type"]
    children = spec.get("triggers")
    if not isinstance(children, list | tuple) or len(children) < 2:
        raise ValueError(
            f"{where}.triggers: a {kind} trigger needs a list of 2 or more triggers; "
            "write triggers: [{match: a.*}, {match: b.*}]"
        )
    triggers = tuple(_parse(child, f"{where}.triggers[{i}]") for i, child in enumerate(children))
    within = _optional_duration(spec, "within", where)
    normal: dict[str, Any] = {"type": kind, "triggers": [t.spec for t in triggers]}
    if within is not None:
        normal["within"] = _format_duration(within)
    if kind == "sequence":
        return SequenceTrigger(triggers, within, normal)
    require = spec.get("require", "all")
    count = (
        {"all": len(triggers), "any": 1}.get(require, require)
        if isinstance(require, str)
        else require
    )
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(triggers):
        raise ValueError(
            f"{where}.require: {require!r} is not valid; write all, any or 1 to {len(triggers)}"
        )
    normal["require"] = require
    return CompoundTrigger(triggers, count, within, normal)


def _selector(spec: Mapping[str, Any], key: str, where: str) -> Selector:
    names = _patterns(spec.get(key), f"{where}.{key}")
    resource = _label_patterns(spec.get("resource"), f"{where}.resource")
    return Selector(names, resource, _label_patterns(spec.get("related"), f"{where}.related"))


def _patterns(value: Any, field: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(p, str) and p for p in items)
    ):
        raise ValueError(
            f"{field}: {value!r} is not a name pattern or a list of them; write e.g. s3.file.*"
        )
    return tuple(items)


def _label_patterns(value: Any, field: str) -> Labels:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"{field}: {value!r} is not a mapping of labels; write e.g. {{id: bucket/*}}"
        )
    for label in value:
        if not isinstance(label, str) or not label:
            raise ValueError(f"{field}: label {label!r} is not a name; write e.g. {{id: bucket/*}}")
    return tuple(sorted((k, _patterns(v, f"{field}.{k}")) for k, v in value.items()))


def _for_each(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(label, str) and label for label in items)
        or len(set(items)) != len(items)
    ):
        raise ValueError(
            f"{where}.for_each: {value!r} is not a list of distinct resource labels; "
            "write e.g. [id]"
        )
    return tuple(items)


def _optional_duration(spec: Mapping[str, Any], key: str, where: str) -> int | None:
    value = spec.get(key)
    return None if value is None else duration_ms(value, f"{where}.{key}")


def _time_of_day(value: Any, field: str) -> str:
    found = _TIME_OF_DAY.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        yaml = " in quotes (YAML reads 9:00 as a number)" if isinstance(value, int) else ""
        raise ValueError(
            f"{field}: {value!r} is not a time of day; write HH:MM, e.g. '09:00'{yaml}"
        )
    return f"{int(found.group(1)):02d}:{found.group(2)}"


def _days(value: Any, field: str) -> tuple[str | tuple[str, ...], str]:
    """The days as normalized (a set's name, or day names in week order), and cron's field."""
    if isinstance(value, str) and value in _DAY_SETS:
        return value, _DAY_SETS[value]
    items = value if isinstance(value, list | tuple) else None
    if not items or not all(isinstance(d, str) and d.lower() in _DAY_NAMES for d in items):
        raise ValueError(
            f"{field}: {value!r} is not days; write daily, weekdays, weekends or a list "
            "like [mon, thu]"
        )
    numbers = sorted({_DAY_NAMES.index(d.lower()) for d in items})
    week = sorted(numbers, key=lambda n: (n + 6) % 7)  # mon first
    return tuple(_DAY_NAMES[n] for n in week), ",".join(map(str, numbers))


def _select_spec(select: Selector, key: str) -> dict[str, Any]:
    normal: dict[str, Any] = {key: list(select.names)}
    for name, labels in (("resource", select.resource), ("related", select.related)):
        if labels:
            normal[name] = {label: list(patterns) for label, patterns in labels}
    return normal


def _extra_spec(within: int | None, for_each: tuple[str, ...]) -> dict[str, Any]:
    normal: dict[str, Any] = {}
    if within is not None:
        normal["within"] = _format_duration(within)
    if for_each:
        normal["for_each"] = list(for_each)
    return normal


def _format_duration(ms: int) -> str | float:
    if ms % 1000:
        return ms / 1000
    seconds, parts = ms // 1000, []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        number, seconds = divmod(seconds, size)
        if number:
            parts.append(f"{number}{unit}")
    return "".join(parts)


def _duration_text(ms: int) -> str:
    text = _format_duration(ms)
    return f"{text:g}s" if isinstance(text, float) else text


# --- describing --------------------------------------------------------------------------


def describe(trigger: Trigger) -> str:
    """One line for people, e.g. ``3 events matching s3.file.* within 1m for each id``."""
    if isinstance(trigger, EventTrigger):
        count = "1 event" if trigger.threshold == 1 else f"{trigger.threshold} events"
        text = f"{count} matching {_names(trigger.select)}{_where(trigger.select)}"
        return text + _within(trigger.within_ms) + _per(trigger.for_each)
    if isinstance(trigger, AbsenceTrigger):
        text = f"no {_names(trigger.expect)}{_where(trigger.expect)}"
        if trigger.after is None:
            text += f" for {_duration_text(trigger.within_ms)}"
        else:
            text += f" within {_duration_text(trigger.within_ms)} after {_names(trigger.after)}"
        return text + _per(trigger.for_each)
    if isinstance(trigger, DeadlineTrigger):
        since = f" (counting from {trigger.since})" if trigger.since else ""
        return (
            f"expect {_names(trigger.expect)}{_where(trigger.expect)} by {trigger.by} "
            f"{trigger.calendar.timezone} {_days_text(trigger.days)}{since}"
        )
    children = "; ".join(describe(child) for child in trigger.triggers)
    if isinstance(trigger, SequenceTrigger):
        return f"in order [{children}]{_within(trigger.within_ms)}"
    n, require = len(trigger.triggers), trigger.require
    head = "all" if require == n else "any" if require == 1 else str(require)
    return f"{head} of [{children}]{_within(trigger.within_ms)}"


def _names(select: Selector) -> str:
    return " or ".join(select.names)


def _where(select: Selector) -> str:
    text = ""
    for name, labels in (("resource", select.resource), ("related", select.related)):
        if labels:
            text += f" ({name} " + ", ".join(f"{k}={'|'.join(v)}" for k, v in labels) + ")"
    return text


def _within(within_ms: int | None) -> str:
    return "" if within_ms is None else f" within {_duration_text(within_ms)}"


def _per(for_each: tuple[str, ...]) -> str:
    return f" for each {', '.join(for_each)}" if for_each else ""


def _days_text(days: str) -> str:
    return {"daily": "daily", "weekdays": "on weekdays", "weekends": "on weekends"}.get(
        days, f"on {days}"
    )


# --- evaluating --------------------------------------------------------------------------


def initial_state(trigger: Trigger, now_ms: int) -> dict[str, Any]:
    """The state of a trigger that starts watching at ``now_ms`` (plain JSON)."""
    if isinstance(trigger, EventTrigger):
        return {"kind": "event", "groups": {}}
    if isinstance(trigger, AbsenceTrigger):
        groups: dict[str, Any] = {}
        if trigger.after is None and not trigger.for_each:
            groups[""] = {"deadline": now_ms + trigger.within_ms, "armed_ms": None, "event": None}
        return {"kind": "absence", "groups": groups}
    if isinstance(trigger, DeadlineTrigger):
        deadline, start = _following(trigger, now_ms, now_ms)
        return {
            "kind": "deadline",
            "deadline": deadline,
            "start": start,
            "met": False,
            "last_ms": None,
        }
    children = [initial_state(child, now_ms) for child in trigger.triggers]
    return {"kind": trigger.kind, "children": children, "records": {}}


def on_event(
    trigger: Trigger, state: dict[str, Any], event: Event, now_ms: int
) -> tuple[dict[str, Any], list[Firing]]:
    """Judge one event (time-based kinds first catch up to its occurred time, at most
    ``now_ms``). Returns the new state and the firings, ascending by time."""
    return _on_event(trigger, state, event, now_ms, "")


def on_time(
    trigger: Trigger, state: dict[str, Any], now_ms: int
) -> tuple[dict[str, Any], list[Firing]]:
    """Let time pass up to ``now_ms``: deadlines at or before it fire or move on."""
    return _on_time(trigger, state, now_ms, "")


def next_due(trigger: Trigger, state: dict[str, Any]) -> int | None:
    """The earliest ``now_ms`` at which :func:`on_time` would do anything; None if never."""
    if not _usable(trigger, state):
        return 0  # on_time starts it afresh
    if isinstance(trigger, EventTrigger):
        return None
    if isinstance(trigger, AbsenceTrigger):
        return min((g["deadline"] for g in state["groups"].values()), default=None)
    if isinstance(trigger, DeadlineTrigger):
        deadline: int | None = state["deadline"]
        return deadline
    dues = [next_due(c, s) for c, s in zip(trigger.triggers, state["children"], strict=True)]
    return min((due for due in dues if due is not None), default=None)


def _usable(trigger: Trigger, state: Any) -> bool:
    """False for a state that is not this trigger's (another kind, or another shape)."""
    if not isinstance(state, dict) or state.get("kind") != trigger.kind:
        return False
    if isinstance(trigger, CompoundTrigger | SequenceTrigger):
        children = state.get("children")
        return isinstance(children, list) and len(children) == len(trigger.triggers)
    return True


def _on_event(
    trigger: Trigger, state: Any, event: Event, now_ms: int, path: str
) -> tuple[dict[str, Any], list[Firing]]:
    if not _usable(trigger, state):
        state = initial_state(trigger, now_ms)
    if isinstance(trigger, EventTrigger):
        return _count(trigger, state, event, path)
    # Time first (every child, so that a compound sees its children's firings in time
    # order), then the event.
    state, fired = _on_time(trigger, state, min(now_ms, event.occurred_ms), path)
    if isinstance(trigger, CompoundTrigger | SequenceTrigger):
        step: _Step = lambda c, s, p: _on_event(c, s, event, now_ms, p)  # noqa: E731
        state, more = _combine(trigger, state, path, step)
        return state, fired + more
    if isinstance(trigger, AbsenceTrigger):
        return _absence_event(trigger, state, event), fired
    return _deadline_event(trigger, state, event), fired


def _on_time(
    trigger: Trigger, state: Any, now_ms: int, path: str
) -> tuple[dict[str, Any], list[Firing]]:
    if not _usable(trigger, state):
        state = initial_state(trigger, now_ms)
    if isinstance(trigger, EventTrigger):
        return state, []
    if isinstance(trigger, AbsenceTrigger):
        return _absence_time(trigger, state, now_ms, path)
    if isinstance(trigger, DeadlineTrigger):
        return _deadline_time(trigger, state, now_ms, path)
    return _combine(trigger, state, path, lambda c, s, p: _on_time(c, s, now_ms, p))


# --- event: count matches ----------------------------------------------------------------


def _count(
    trigger: EventTrigger, state: dict[str, Any], event: Event, path: str
) -> tuple[dict[str, Any], list[Firing]]:
    if not trigger.select.accepts(event):
        return state, []
    key, group = _group(trigger.for_each, event)
    groups: dict[str, list[list[Any]]] = dict(state["groups"])
    old = groups.pop(key, [])
    if any(m[1] == event.seq for m in old):  # seen already: a replay counts once
        return state, []
    found = sorted([*old, [event.occurred_ms, event.seq, event.id]])
    within = trigger.within_ms
    if within is not None:  # by occurred time: drop matches, and groups, out of the window
        found = [m for m in found if m[0] >= found[-1][0] - within]
        groups = {k: ms for k, ms in groups.items() if ms[-1][0] >= event.occurred_ms - within}
    found = found[-trigger.threshold :]
    if len(found) < trigger.threshold:
        groups[key] = found  # last: the most recently active group
        limit = min(MAX_GROUPS, MAX_MATCHES // trigger.threshold)
        if len(groups) > limit:
            groups = dict(list(groups.items())[-limit:])
        return {**state, "groups": groups}, []
    count = f"{len(found)} event{'s' if len(found) > 1 else ''}"
    reason = (
        f"{count} matching {_names(trigger.select)}{_within(within)} ({_labels_text(group, event)})"
    )
    firing = Firing(
        key=f"event:{path}:{key}:{event.seq}",
        path=path,
        reason=reason,
        at_ms=event.occurred_ms,
        event_ids=tuple(m[2] for m in found),
        event=event,
        group=group,
    )
    return {**state, "groups": groups}, [firing]


# --- absence: an expected event did not come -----------------------------------------------


def _absence_event(trigger: AbsenceTrigger, state: dict[str, Any], event: Event) -> dict[str, Any]:
    expected = trigger.expect.accepts(event)
    arming = trigger.after is not None and trigger.after.accepts(event)
    if not (expected or arming):
        return state
    key, _ = _group(trigger.for_each, event)
    groups: dict[str, dict[str, Any]] = dict(state["groups"])
    occurred, within = event.occurred_ms, trigger.within_ms
    armed = groups.get(key)
    if expected and trigger.after is not None:
        if armed is not None and armed["armed_ms"] <= occurred <= armed["deadline"]:
            del groups[key]  # it came in time
    elif expected:  # back-to-back windows: a new one starts at this event
        deadline = occurred + within
        if armed is not None:
            deadline = max(armed["deadline"], deadline)
        groups[key] = {"deadline": deadline, "armed_ms": None, "event": None}
    armed = groups.get(key)
    if arming and (armed is None or occurred + within < armed["deadline"]):
        groups[key] = {"deadline": occurred + within, "armed_ms": occurred, "event": _dump(event)}
    if len(groups) > MAX_GROUPS:
        groups = dict(list(groups.items())[-MAX_GROUPS:])
    return {**state, "groups": groups}


def _absence_time(
    trigger: AbsenceTrigger, state: dict[str, Any], now_ms: int, path: str
) -> tuple[dict[str, Any], list[Firing]]:
    due = sorted((g["deadline"], k) for k, g in state["groups"].items() if g["deadline"] <= now_ms)
    if not due:
        return state, []
    groups: dict[str, dict[str, Any]] = dict(state["groups"])
    within, fired = trigger.within_ms, []
    for _, key in due:
        armed = groups.pop(key)
        if trigger.after is not None:  # fires once, and is disarmed
            fired.append(_missed(trigger, key, armed["deadline"], _load(armed["event"]), path))
            continue
        deadline = armed["deadline"]
        for _ in range(MAX_CATCH_UP):
            fired.append(_missed(trigger, key, deadline, None, path))
            deadline += within
            if deadline > now_ms:
                break
        else:  # skip the windows beyond the cap
            deadline += max(0, (now_ms - deadline) // within + 1) * within
        groups[key] = {**armed, "deadline": deadline}
    fired.sort(key=lambda f: (f.at_ms, f.key))
    return {**state, "groups": groups}, fired


def _missed(
    trigger: AbsenceTrigger, key: str, deadline: int, event: Event | None, path: str
) -> Firing:
    group = _group_values(trigger.for_each, key)
    within = _duration_text(trigger.within_ms)
    if event is not None and trigger.after is not None:
        reason = (
            f"expected {_names(trigger.expect)} within {within} after {event.event} "
            f"({_labels_text(group, event)}); none arrived"
        )
        key_text = f"absence:{path}:{key}:{deadline}:{event.seq}"
    else:
        labels = f" ({_labels_text(group, None)})" if group else ""
        reason = (
            f"expected {_names(trigger.expect)} every {within}{labels}; none arrived in the "
            f"{within} to {_iso(deadline, 'UTC')}"
        )
        key_text = f"absence:{path}:{key}:{deadline}"
    return Firing(
        key=key_text,
        path=path,
        reason=reason,
        at_ms=deadline,
        event_ids=(event.id,) if event is not None else (),
        event=event,
        group=group,
    )


# --- deadline: an expected event by a time of day --------------------------------------------


def _deadline_event(
    trigger: DeadlineTrigger, state: dict[str, Any], event: Event
) -> dict[str, Any]:
    if not trigger.expect.accepts(event):
        return state
    occurred, last = event.occurred_ms, state["last_ms"]
    deadline = state["deadline"]
    inside = deadline is not None and state["start"] <= occurred <= deadline
    return {
        **state,
        "met": state["met"] or inside,
        "last_ms": occurred if last is None else max(last, occurred),
    }


def _deadline_time(
    trigger: DeadlineTrigger, state: dict[str, Any], now_ms: int, path: str
) -> tuple[dict[str, Any], list[Firing]]:
    deadline, start, met = state["deadline"], state["start"], state["met"]
    last, fired = state["last_ms"], []
    if deadline is None or deadline > now_ms:
        return state, []
    for _ in range(MAX_CATCH_UP):
        if not met:
            fired.append(_late(trigger, deadline, path))
        deadline, start = _following(trigger, deadline, deadline + 1)
        met = last is not None and deadline is not None and start <= last <= deadline
        if deadline is None or deadline > now_ms:
            break
    else:  # skip the deadlines beyond the cap, to the first after now
        previous = times_before(trigger.calendar, now_ms, deadline - 1, 1)
        if previous:
            deadline, start = _following(trigger, previous[-1], previous[-1] + 1)
            met = last is not None and deadline is not None and start <= last <= deadline
    new = {**state, "deadline": deadline, "start": start, "met": met}
    return new, fired


def _following(trigger: DeadlineTrigger, after_ms: int, start_ms: int) -> tuple[int | None, int]:
    """The first deadline after ``after_ms``, and where its window starts (``start_ms``
    unless the trigger has ``since``)."""
    found = next_times(trigger.calendar, after_ms, 1)
    if not found:
        return None, start_ms
    deadline = found[0]
    if trigger.since is None:
        return deadline, start_ms
    day = _local(deadline, trigger.calendar.timezone).date()
    if trigger.since >= trigger.by:
        day -= dt.timedelta(days=1)
    return deadline, parse_time(f"{day.isoformat()}T{trigger.since}", trigger.calendar.timezone)


def _late(trigger: DeadlineTrigger, deadline: int, path: str) -> Firing:
    zone = trigger.calendar.timezone
    local = _local(deadline, zone)
    day = f"{_DAY_NAMES[(local.weekday() + 1) % 7].title()} {local.date().isoformat()}"
    return Firing(
        key=f"deadline:{path}:{deadline}",
        path=path,
        reason=f"expected {_names(trigger.expect)} by {trigger.by} {zone} on {day}; none arrived",
        at_ms=deadline,
        event_ids=(),
        event=None,
        group={},
    )


# --- compound and sequence ---------------------------------------------------------------


def _combine(
    trigger: _Combined, state: dict[str, Any], path: str, step: _Step
) -> tuple[dict[str, Any], list[Firing]]:
    children = list(state["children"])
    fired: list[tuple[int, int, Firing]] = []
    for i, child in enumerate(trigger.triggers):
        children[i], out = step(child, children[i], f"{path}.{i}" if path else str(i))
        fired += [(f.at_ms, i, f) for f in out]
    records: dict[str, Any] = state["records"]
    out = []
    for _, i, firing in sorted(fired, key=lambda x: (x[0], x[1])):
        records, combined = _record(trigger, records, i, firing, path)
        if combined is not None:
            out.append(combined)
    return {**state, "children": children, "records": records}, out


def _record(
    trigger: _Combined, records: dict[str, Any], i: int, firing: Firing, path: str
) -> tuple[dict[str, Any], Firing | None]:
    """Record child ``i``'s firing; the records after, and the trigger's firing if any."""
    entry = {
        "at": firing.at_ms,
        "ids": list(firing.event_ids),
        "event": None if firing.event is None else _dump(firing.event),
        "key": firing.key,
        "reason": firing.reason,
    }
    within = trigger.within_ms
    if isinstance(trigger, CompoundTrigger):
        records = {**records, str(i): entry}
        if within is not None:
            newest = max(r["at"] for r in records.values())
            records = {k: r for k, r in records.items() if r["at"] >= newest - within}
        done = len(records) >= trigger.require
    else:
        if i > 0 and not all(str(j) in records for j in range(i)):
            return records, None  # out of order
        records = {**{k: r for k, r in records.items() if int(k) < i}, str(i): entry}
        if (
            within is not None
            and max(r["at"] for r in records.values()) - records["0"]["at"] > within
        ):
            return {}, None  # too slow: abandoned
        done = len(records) == len(trigger.triggers)
    return ({}, _combined(trigger, records, path)) if done else (records, None)


def _combined(trigger: _Combined, records: dict[str, Any], path: str) -> Firing:
    order = sorted(records, key=int)
    ids = dict.fromkeys(i for k in order for i in records[k]["ids"])
    events = [_load(records[k]["event"]) for k in order if records[k]["event"] is not None]
    latest = max(reversed(events), key=lambda e: e.occurred_ms) if events else None
    n = len(trigger.triggers)
    if isinstance(trigger, SequenceTrigger):
        head = f"{n} triggers fired in order"
    else:
        head = f"{len(order)} of {n} triggers fired"
    parts = "; ".join(f"[{k}] {records[k]['reason']}" for k in order)
    keys = "+".join(sorted(records[k]["key"] for k in order))
    return Firing(
        key=f"{trigger.kind}:{path}:{keys}",
        path=path,
        reason=f"{head}{_within(trigger.within_ms)}: {parts}",
        at_ms=max(records[k]["at"] for k in order),
        event_ids=tuple(ids),
        event=latest,
        group={},
    )


# --- helpers -----------------------------------------------------------------------------


def _labels_match(wanted: Labels, labels: Mapping[str, str]) -> bool:
    return all(
        label in labels and any(matches(p, labels[label]) for p in patterns)
        for label, patterns in wanted
    )


def _group(for_each: tuple[str, ...], event: Event) -> tuple[str, dict[str, str]]:
    """The group of an event: its key in the state ("" without for_each), and its labels."""
    if not for_each:
        return "", {}
    values = [str(event.resource.get(label, "")) for label in for_each]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")), dict(
        zip(for_each, values, strict=True)
    )


def _group_values(for_each: tuple[str, ...], key: str) -> dict[str, str]:
    return dict(zip(for_each, json.loads(key), strict=True)) if for_each else {}


def _labels_text(group: dict[str, str], event: Event | None) -> str:
    labels = group or ({"id": event.resource.get("id", "")} if event is not None else {})
    return "resource " + ", ".join(f"{k}={v}" for k, v in labels.items())


def _dump(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "id": event.id,
        "event": event.event,
        "occurred_ms": event.occurred_ms,
        "resource": dict(event.resource),
        "related": [dict(r) for r in event.related],
        "payload": json.loads(json.dumps(event.payload, default=str)),
    }


def _load(data: dict[str, Any]) -> Event:
    return Event(
        seq=data["seq"],
        id=data["id"],
        event=data["event"],
        occurred_ms=data["occurred_ms"],
        resource=dict(data["resource"]),
        related=tuple(dict(r) for r in data["related"]),
        payload=json.loads(json.dumps(data["payload"])),
    )


def _local(ms: int, timezone: str) -> dt.datetime:
    return (_EPOCH + dt.timedelta(milliseconds=ms)).astimezone(zoneinfo.ZoneInfo(timezone))


def _iso(ms: int, timezone: str) -> str:
    return _local(ms, timezone).isoformat(timespec="seconds")
