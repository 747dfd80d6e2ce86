"""Automation triggers: parse a trigger spec, and judge events and time against it.

The kinds, their parsing and their one-line descriptions are in
:mod:`persevere.statemachine.trigger_specs` (re-exported here); this module
evaluates them.

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
import json
import zoneinfo
from collections.abc import Callable
from typing import Any, TypeAlias

from .calendar import next_times, parse_time, times_before
from .trigger_specs import (
    DAY_NAMES,
    KINDS,
    MAX_CATCH_UP,
    MAX_GROUPS,
    MAX_MATCHES,
    MAX_THRESHOLD,
    AbsenceTrigger,
    CompoundTrigger,
    DeadlineTrigger,
    Event,
    EventTrigger,
    Firing,
    Selector,
    SequenceTrigger,
    Trigger,
    describe,
    duration_ms,
    duration_text,
    matches,
    names_of,
    names_text,
    parse_trigger,
    within_text,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

__all__ = [
    "KINDS",
    "MAX_CATCH_UP",
    "MAX_GROUPS",
    "MAX_MATCHES",
    "MAX_THRESHOLD",
    "AbsenceTrigger",
    "CompoundTrigger",
    "DeadlineTrigger",
    "Event",
    "EventTrigger",
    "Firing",
    "Selector",
    "SequenceTrigger",
    "Trigger",
    "describe",
    "duration_ms",
    "initial_state",
    "matches",
    "names_of",
    "next_due",
    "on_event",
    "on_time",
    "parse_trigger",
]

_Combined: TypeAlias = CompoundTrigger | SequenceTrigger
_Step: TypeAlias = Callable[["Trigger", Any, str], tuple[dict[str, Any], list[Firing]]]


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
    labels = _labels_text(group, event)
    reason = f"{count} matching {names_text(trigger.select)}{within_text(within)} ({labels})"
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
    within = duration_text(trigger.within_ms)
    if event is not None and trigger.after is not None:
        reason = (
            f"expected {names_text(trigger.expect)} within {within} after {event.event} "
            f"({_labels_text(group, event)}); none arrived"
        )
        key_text = f"absence:{path}:{key}:{deadline}:{event.seq}"
    else:
        labels = f" ({_labels_text(group, None)})" if group else ""
        reason = (
            f"expected {names_text(trigger.expect)} every {within}{labels}; none arrived in the "
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
    day = f"{DAY_NAMES[(local.weekday() + 1) % 7].title()} {local.date().isoformat()}"
    return Firing(
        key=f"deadline:{path}:{deadline}",
        path=path,
        reason=(
            f"expected {names_text(trigger.expect)} by {trigger.by} {zone} on {day}; none arrived"
        ),
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
        reason=f"{head}{within_text(trigger.within_ms)}: {parts}",
        at_ms=max(records[k]["at"] for k in order),
        event_ids=tuple(ids),
        event=latest,
        group={},
    )


# --- helpers -----------------------------------------------------------------------------


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
