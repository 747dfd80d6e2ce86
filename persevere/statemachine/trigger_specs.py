"""Automation triggers as data: the five kinds, their specs parsed and checked
(:func:`parse_trigger`), and described in one line (:func:`describe`).

How a trigger judges events and time is in :mod:`persevere.statemachine.triggers`,
which also re-exports these names. Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from .calendar import Calendar, make_calendar, parse_interval

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
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbers 0..6
_DAY_SETS = {"daily": "*", "weekdays": "1-5", "weekends": "0,6"}
_TIME_OF_DAY = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
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
            and labels_match(self.resource, event.resource)
            and (not self.related or any(labels_match(self.related, r) for r in event.related))
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
    if not items or not all(isinstance(d, str) and d.lower() in DAY_NAMES for d in items):
        raise ValueError(
            f"{field}: {value!r} is not days; write daily, weekdays, weekends or a list "
            "like [mon, thu]"
        )
    numbers = sorted({DAY_NAMES.index(d.lower()) for d in items})
    week = sorted(numbers, key=lambda n: (n + 6) % 7)  # mon first
    return tuple(DAY_NAMES[n] for n in week), ",".join(map(str, numbers))


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


def duration_text(ms: int) -> str:
    text = _format_duration(ms)
    return f"{text:g}s" if isinstance(text, float) else text


# --- describing --------------------------------------------------------------------------


def describe(trigger: Trigger) -> str:
    """One line for people, e.g. ``3 events matching s3.file.* within 1m for each id``."""
    if isinstance(trigger, EventTrigger):
        count = "1 event" if trigger.threshold == 1 else f"{trigger.threshold} events"
        text = f"{count} matching {names_text(trigger.select)}{_where(trigger.select)}"
        return text + within_text(trigger.within_ms) + _per(trigger.for_each)
    if isinstance(trigger, AbsenceTrigger):
        text = f"no {names_text(trigger.expect)}{_where(trigger.expect)}"
        if trigger.after is None:
            text += f" for {duration_text(trigger.within_ms)}"
        else:
            text += f" within {duration_text(trigger.within_ms)} after {names_text(trigger.after)}"
        return text + _per(trigger.for_each)
    if isinstance(trigger, DeadlineTrigger):
        since = f" (counting from {trigger.since})" if trigger.since else ""
        return (
            f"expect {names_text(trigger.expect)}{_where(trigger.expect)} by {trigger.by} "
            f"{trigger.calendar.timezone} {_days_text(trigger.days)}{since}"
        )
    children = "; ".join(describe(child) for child in trigger.triggers)
    if isinstance(trigger, SequenceTrigger):
        return f"in order [{children}]{within_text(trigger.within_ms)}"
    n, require = len(trigger.triggers), trigger.require
    head = "all" if require == n else "any" if require == 1 else str(require)
    return f"{head} of [{children}]{within_text(trigger.within_ms)}"


def names_text(select: Selector) -> str:
    return " or ".join(select.names)


def _where(select: Selector) -> str:
    text = ""
    for name, labels in (("resource", select.resource), ("related", select.related)):
        if labels:
            text += f" ({name} " + ", ".join(f"{k}={'|'.join(v)}" for k, v in labels) + ")"
    return text


def within_text(within_ms: int | None) -> str:
    return "" if within_ms is None else f" within {duration_text(within_ms)}"


def _per(for_each: tuple[str, ...]) -> str:
    return f" for each {', '.join(for_each)}" if for_each else ""


def _days_text(days: str) -> str:
    return {"daily": "daily", "weekdays": "on weekdays", "weekends": "on weekends"}.get(
        days, f"on {days}"
    )


# --- matching ---------------------------------------------------------------------------


def names_of(trigger: Trigger) -> tuple[str, ...]:
    """Every event name pattern a trigger looks at (an event matching none is no concern)."""
    if isinstance(trigger, CompoundTrigger | SequenceTrigger):
        return tuple(n for child in trigger.triggers for n in names_of(child))
    if isinstance(trigger, EventTrigger):
        return trigger.select.names
    if isinstance(trigger, AbsenceTrigger) and trigger.after is not None:
        return trigger.expect.names + trigger.after.names
    return trigger.expect.names


def labels_match(wanted: Labels, labels: Mapping[str, str]) -> bool:
    return all(
        label in labels and any(matches(p, labels[label]) for p in patterns)
        for label, patterns in wanted
    )
