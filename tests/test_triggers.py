"""Automation triggers, as pure functions: tables for each kind, and properties (hypothesis)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persevere.statemachine.triggers import (
    MAX_CATCH_UP,
    Event,
    Firing,
    Trigger,
    describe,
    duration_ms,
    initial_state,
    matches,
    next_due,
    on_event,
    on_time,
    parse_trigger,
)

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR


def utc(*parts: int) -> int:
    """Epoch ms of a UTC date-time given as year, month, day, hour, minute."""
    return int(dt.datetime(*parts, tzinfo=dt.timezone.utc).timestamp() * 1000)  # type: ignore[misc]


_seq = iter(range(1, 10**9))


def ev(
    name: str = "s3.file.arrived",
    at: int = 0,
    rid: str = "bucket/sales",
    seq: int | None = None,
    related: tuple[dict[str, str], ...] = (),
    **labels: str,
) -> Event:
    number = next(_seq) if seq is None else seq
    return Event(number, f"e{number}", name, at, {"id": rid, **labels}, related, {"n": number})


def feed(
    trigger: Trigger, steps: list[Event | int], start: int = 0
) -> tuple[dict[str, Any], list[Firing]]:
    """Run ``steps`` (an Event is fed at now = its occurred time, an int is on_time at it)."""
    state, fired = initial_state(trigger, start), []
    for step in steps:
        if isinstance(step, Event):
            state, out = on_event(trigger, state, step, max(start, step.occurred_ms))
        else:
            state, out = on_time(trigger, state, step)
        fired += out
    return state, fired


# --- parsing -----------------------------------------------------------------------------

VALID = [
    {"match": "s3.file.*"},
    {"type": "event", "match": ["a.*", "b"], "threshold": 3, "within": "1m", "for_each": "id"},
    {"match": "a", "resource": {"id": ["bucket/*", "x"]}, "related": {"role": "flow"}},
    {"type": "absence", "expect": "job.done", "after": "job.started", "within": 600},
    {"type": "absence", "expect": "heartbeat", "within": "90s", "for_each": ["id", "zone"]},
    {
        "type": "deadline",
        "expect": "sales.refreshed",
        "by": "09:00",
        "timezone": "Europe/London",
        "days": "weekdays",
        "since": "06:00",
    },
    {"type": "deadline", "expect": "x", "by": "7:05", "days": ["sun", "mon"]},
    {"type": "compound", "triggers": [{"match": "a"}, {"match": "b"}], "require": "any"},
    {
        "type": "compound",
        "triggers": [{"match": "a"}, {"match": "b"}, {"match": "c"}],
        "require": 2,
        "within": 1.5,
    },
    {
        "type": "sequence",
        "triggers": [
            {"match": "a"},
            {"type": "compound", "triggers": [{"match": "b"}, {"match": "c"}]},
        ],
        "within": "1h",
    },
]


@pytest.mark.parametrize("spec", VALID)
def test_every_kind_parses_and_its_normal_spec_parses_to_the_same_trigger(spec: dict[str, Any]):
    trigger = parse_trigger(spec)
    assert trigger.kind == spec.get("type", "event")
    again = parse_trigger(json.loads(json.dumps(trigger.spec)))
    assert again == trigger
    assert again.spec == trigger.spec
    line = describe(trigger)
    assert line and "\n" not in line


def test_normal_spec_and_description():
    trigger = parse_trigger({"match": "s3.*", "threshold": 3, "within": 60, "for_each": "id"})
    assert trigger.spec == {
        "type": "event",
        "match": ["s3.*"],
        "threshold": 3,
        "within": "1m",
        "for_each": ["id"],
    }
    assert describe(trigger) == "3 events matching s3.* within 1m for each id"
    deadline = parse_trigger(VALID[5])
    assert describe(deadline) == (
        "expect sales.refreshed by 09:00 Europe/London on weekdays (counting from 06:00)"
    )
    assert parse_trigger(VALID[6]).spec["by"] == "07:05"
    assert parse_trigger(VALID[6]).spec["days"] == ["mon", "sun"]
    assert describe(parse_trigger(VALID[7])) == "any of [1 event matching a; 1 event matching b]"


BAD = [
    ({"match": "a", "bogus": 1}, "trigger.bogus"),
    ({"match": "a", "within": "10x"}, "trigger.within"),
    ({"match": "a", "within": 0}, "trigger.within"),
    ({"match": "a", "within": -5}, "trigger.within"),
    ({"match": "a", "within": True}, "trigger.within"),
    ({"match": "a", "threshold": 0}, "trigger.threshold"),
    ({"match": "a", "threshold": "3"}, "trigger.threshold"),
    ({"threshold": 2}, "trigger.match"),
    ({"match": []}, "trigger.match"),
    ({"match": "a", "resource": "bucket"}, "trigger.resource"),
    ({"match": "a", "resource": {"id": 3}}, "trigger.resource.id"),
    ({"match": "a", "for_each": ["id", "id"]}, "trigger.for_each"),
    ({"type": "nope", "match": "a"}, "trigger.type"),
    ({"type": "absence", "expect": "a"}, "trigger.within"),
    ({"type": "absence", "within": "1m"}, "trigger.expect"),
    ({"type": "absence", "expect": "a", "within": "1m", "threshold": 2}, "trigger.threshold"),
    (
        {"type": "deadline", "expect": "a", "by": "09:00", "timezone": "Mars/Olympus"},
        "trigger.timezone",
    ),
    ({"type": "deadline", "expect": "a", "by": "25:00"}, "trigger.by"),
    ({"type": "deadline", "expect": "a", "by": 540}, "trigger.by"),
    ({"type": "deadline", "expect": "a"}, "trigger.by"),
    ({"type": "deadline", "expect": "a", "by": "09:00", "since": "6am"}, "trigger.since"),
    ({"type": "deadline", "expect": "a", "by": "09:00", "days": "fortnightly"}, "trigger.days"),
    ({"type": "deadline", "expect": "a", "by": "09:00", "days": ["monday"]}, "trigger.days"),
    ({"type": "deadline", "expect": "a", "by": "09:00", "for_each": "id"}, "trigger.for_each"),
    ({"type": "compound", "triggers": [{"match": "a"}]}, "trigger.triggers"),
    (
        {"type": "compound", "triggers": [{"match": "a"}, {"match": "b"}], "require": 3},
        "trigger.require",
    ),
    (
        {"type": "compound", "triggers": [{"match": "a"}, {"match": "b"}], "require": "most"},
        "trigger.require",
    ),
    (
        {"type": "sequence", "triggers": [{"match": "a"}, {"match": "b", "within": "x"}]},
        "trigger.triggers[1].within",
    ),
    (
        {"type": "sequence", "triggers": [{"match": "a"}, {"match": "b"}], "require": 1},
        "trigger.require",
    ),
    ("match: a", "trigger"),
]


@pytest.mark.parametrize(("spec", "field"), BAD)
def test_bad_specs_are_refused_in_one_line_naming_the_field(spec: Any, field: str):
    with pytest.raises(ValueError) as caught:
        parse_trigger(spec)
    message = str(caught.value)
    assert message.startswith(f"{field}:"), message
    assert "\n" not in message
    assert any(hint in message for hint in ("write", "use", "takes", "mean", "give"))


def test_durations():
    assert duration_ms("90s", "f") == 90 * SEC
    assert duration_ms("1h30m", "f") == 90 * MIN
    assert duration_ms("2d", "f") == 2 * DAY
    assert duration_ms(10, "f") == 10 * SEC
    assert duration_ms(0.25, "f") == 250
    for bad in ("", "1.5m", "ten", 0, -1, float("nan"), None, [1]):
        with pytest.raises(ValueError, match=r"^x\.within: "):
            duration_ms(bad, "x.within")


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("s3.*", "s3.file.arrived", True),
        ("*.arrived", "s3.file.arrived", True),
        ("s3.file.arrived", "s3.file.arrived", True),
        ("s3.file", "s3.file.arrived", False),  # a full match
        ("s3.file.arrived", "s3Xfile.arrived", False),  # a dot is a dot
        ("s3.*.arrived", "s3.arrived", False),
        ("*", "", True),
        ("a*b*c", "aXbYc", True),
        ("a?b", "aXb", False),  # only * is special
        ("a?b", "a?b", True),
        ("[ab]", "a", False),
    ],
)
def test_patterns(pattern: str, name: str, expected: bool):
    assert matches(pattern, name) is expected


# --- event (reactive) --------------------------------------------------------------------


def test_a_single_match_fires_with_the_event():
    trigger = parse_trigger({"match": "s3.file.*"})
    event = ev(at=5 * SEC)
    _, fired = feed(trigger, [event])
    assert len(fired) == 1
    firing = fired[0]
    assert (firing.path, firing.at_ms, firing.event_ids, firing.event) == (
        "",
        5 * SEC,
        (event.id,),
        event,
    )
    assert firing.reason == "1 event matching s3.file.* (resource id=bucket/sales)"
    assert firing.group == {}


@pytest.mark.parametrize(
    "event",
    [
        ev(name="s3.bucket.created"),
        ev(rid="bucket/finance"),
        ev(related=({"id": "flow/etl", "role": "flow"},)),
        ev(related=({"id": "flow/load", "role": "task"}, {"id": "flow/etl", "role": "x"})),
    ],
)
def test_non_matching_name_resource_or_related_do_not_fire(event: Event):
    trigger = parse_trigger(
        {
            "match": "s3.file.*",
            "resource": {"id": "bucket/sales*"},
            "related": {"role": "flow", "id": "flow/load"},
        }
    )
    assert feed(trigger, [event])[1] == []
    fits = ev(related=({"id": "flow/etl", "role": "task"}, {"id": "flow/load", "role": "flow"}))
    assert len(feed(trigger, [fits])[1]) == 1


def test_a_missing_label_does_not_match_even_a_star():
    trigger = parse_trigger({"match": "*", "resource": {"zone": "*"}})
    assert feed(trigger, [ev()])[1] == []
    assert len(feed(trigger, [ev(zone="eu")])[1]) == 1


def test_threshold_within_a_window_fires_on_the_third():
    trigger = parse_trigger({"match": "s3.*", "threshold": 3, "within": "60s"})
    events = [ev(at=0), ev(at=30 * SEC), ev(at=60 * SEC), ev(at=70 * SEC)]
    _, fired = feed(trigger, events)
    assert [f.event_ids for f in fired] == [tuple(e.id for e in events[:3])]
    assert fired[0].event == events[2]
    assert fired[0].reason == "3 events matching s3.* within 1m (resource id=bucket/sales)"


def test_threshold_spread_over_more_than_the_window_does_not_fire():
    trigger = parse_trigger({"match": "s3.*", "threshold": 3, "within": "60s"})
    assert feed(trigger, [ev(at=0), ev(at=40 * SEC), ev(at=61 * SEC)])[1] == []
    # the first fell out of the window; two more within it make three
    assert len(feed(trigger, [ev(at=0), ev(at=40 * SEC), ev(at=61 * SEC), ev(at=70 * SEC)])[1]) == 1


def test_threshold_counts_by_occurred_time_even_out_of_order():
    trigger = parse_trigger({"match": "s3.*", "threshold": 3, "within": "60s"})
    late = ev(at=-90 * SEC)  # arrives third but occurred long before the others
    assert feed(trigger, [ev(at=0), ev(at=10 * SEC), late])[1] == []
    slightly = ev(at=-30 * SEC)
    _, fired = feed(trigger, [ev(at=0), ev(at=10 * SEC), slightly])
    assert len(fired) == 1
    assert fired[0].event == slightly
    assert fired[0].event_ids[0] == slightly.id  # in occurred order


def test_for_each_counts_groups_separately():
    trigger = parse_trigger({"match": "s3.*", "threshold": 2, "for_each": ["id"]})
    a1, b1, a2, b2 = ev(rid="a"), ev(rid="b"), ev(rid="a"), ev(rid="b")
    state, fired = feed(trigger, [a1, b1])
    assert fired == []
    state, fired = feed(trigger, [a1, b1, a2, b2])
    assert [(f.group, f.event_ids) for f in fired] == [
        ({"id": "a"}, (a1.id, a2.id)),
        ({"id": "b"}, (b1.id, b2.id)),
    ]
    assert state["groups"] == {}


def test_keys_differ_between_firings_and_repeat_on_replay():
    trigger = parse_trigger({"match": "s3.*", "threshold": 2, "for_each": "id"})
    events = [ev(rid="a"), ev(rid="a"), ev(rid="b"), ev(rid="b"), ev(rid="a"), ev(rid="a")]
    _, first = feed(trigger, events)
    _, again = feed(trigger, events)
    keys = [f.key for f in first]
    assert len(keys) == 3 and len(set(keys)) == 3
    assert [f.key for f in again] == keys


def test_the_same_event_fed_twice_counts_once():
    trigger = parse_trigger({"match": "s3.*", "threshold": 2})
    event = ev()
    assert feed(trigger, [event, event])[1] == []


def test_groups_are_capped_and_expire_by_occurred_time():
    trigger = parse_trigger({"match": "*", "threshold": 2, "within": "1m", "for_each": "id"})
    state, _ = feed(trigger, [ev(rid=f"r{i}", at=i) for i in range(50)])
    assert len(state["groups"]) == 50
    state, _ = on_event(trigger, state, ev(rid="late", at=2 * MIN), 2 * MIN)
    assert list(state["groups"]) == ['["late"]']
    unbounded = parse_trigger({"match": "*", "threshold": 2, "for_each": "id"})
    state = {
        "kind": "event",
        "groups": {json.dumps([f"r{i}"]): [[0, i, "x"]] for i in range(10_000)},
    }
    state, _ = on_event(unbounded, state, ev(rid="new"), 0)
    assert len(state["groups"]) == 10_000
    assert '["r0"]' not in state["groups"] and '["new"]' in state["groups"]
    assert next_due(unbounded, state) is None


# --- absence -----------------------------------------------------------------------------

AFTER = {
    "type": "absence",
    "expect": "job.done",
    "after": "job.started",
    "within": "10m",
    "for_each": "id",
}


def test_absence_met_when_the_expected_event_comes_in_time():
    trigger = parse_trigger(AFTER)
    state, fired = feed(trigger, [ev("job.started", 0, "j1"), ev("job.done", 9 * MIN, "j1"), HOUR])
    assert fired == []
    assert next_due(trigger, state) is None


def test_absence_missed_fires_once_at_the_deadline():
    trigger = parse_trigger(AFTER)
    started = ev("job.started", 1 * MIN, "j1")
    state, fired = feed(trigger, [started])
    assert next_due(trigger, state) == 11 * MIN
    assert on_time(trigger, state, 11 * MIN - 1)[1] == []
    state, fired = on_time(trigger, state, 20 * MIN)
    assert len(fired) == 1
    firing = fired[0]
    assert (firing.at_ms, firing.event, firing.event_ids) == (11 * MIN, started, (started.id,))
    assert firing.group == {"id": "j1"}
    assert firing.reason == (
        "expected job.done within 10m after job.started (resource id=j1); none arrived"
    )
    assert on_time(trigger, state, 30 * MIN)[1] == []
    assert next_due(trigger, state) is None


def test_absence_an_expect_before_the_after_event_does_not_disarm():
    trigger = parse_trigger(AFTER)
    done_before = ev("job.done", 0, "j1")
    _, fired = feed(trigger, [done_before, ev("job.started", MIN, "j1"), HOUR])
    assert [f.at_ms for f in fired] == [11 * MIN]
    # out of order: started (occurred at 1m) is fed before a done that occurred at 30s
    _, fired = feed(trigger, [ev("job.started", MIN, "j1"), ev("job.done", 30 * SEC, "j1"), HOUR])
    assert [f.at_ms for f in fired] == [11 * MIN]


def test_absence_an_expect_after_the_deadline_is_too_late():
    trigger = parse_trigger(AFTER)
    state, fired = feed(trigger, [ev("job.started", 0, "j1")])
    state, fired = on_event(trigger, state, ev("job.done", 12 * MIN, "j1"), 12 * MIN)
    assert [f.at_ms for f in fired] == [10 * MIN]


def test_absence_per_group():
    trigger = parse_trigger(AFTER)
    steps: list[Event | int] = [
        ev("job.started", 0, "a"),
        ev("job.started", 0, "b"),
        ev("job.done", 5 * MIN, "a"),
        HOUR,
    ]
    _, fired = feed(trigger, steps)
    assert [f.group for f in fired] == [{"id": "b"}]


def test_absence_a_second_after_event_keeps_the_earlier_deadline():
    trigger = parse_trigger(AFTER)
    state, _ = feed(trigger, [ev("job.started", 0, "a"), ev("job.started", 5 * MIN, "a")])
    assert next_due(trigger, state) == 10 * MIN


def test_absence_re_armed_with_the_same_deadline_fires_under_a_new_key():
    trigger = parse_trigger(AFTER)
    state, first = feed(trigger, [ev("job.started", 0, "j1"), 10 * MIN])
    # a retried job reports the same start time: armed again, with the same deadline
    state, fired = on_event(trigger, state, ev("job.started", 0, "j1"), 10 * MIN)
    assert fired == []
    state, second = on_time(trigger, state, 10 * MIN)
    assert [f.at_ms for f in first + second] == [10 * MIN, 10 * MIN]
    assert first[0].key != second[0].key


HEARTBEAT = {"type": "absence", "expect": "heartbeat", "within": "1m"}


def test_absence_without_after_fires_each_silent_window():
    trigger = parse_trigger(HEARTBEAT)
    state = initial_state(trigger, 0)
    assert next_due(trigger, state) == MIN
    assert on_time(trigger, state, MIN - 1)[1] == []
    state, fired = on_time(trigger, state, MIN)
    assert [f.at_ms for f in fired] == [MIN]
    assert fired[0].event is None and fired[0].event_ids == ()
    state, fired = on_time(trigger, state, 3 * MIN + 1)
    assert [f.at_ms for f in fired] == [2 * MIN, 3 * MIN]
    assert len({f.key for f in fired}) == 2


def test_absence_without_after_is_reset_by_events():
    trigger = parse_trigger(HEARTBEAT)
    state, fired = feed(trigger, [ev("heartbeat", 50 * SEC), ev("heartbeat", 100 * SEC), 150 * SEC])
    assert fired == []
    assert next_due(trigger, state) == 160 * SEC
    state, fired = on_time(trigger, state, 160 * SEC)
    assert [f.at_ms for f in fired] == [160 * SEC]


def test_absence_catch_up_is_capped_and_skips_to_the_current_window():
    trigger = parse_trigger(HEARTBEAT)
    state, fired = on_time(trigger, initial_state(trigger, 0), 1000 * MIN + 30 * SEC)
    assert len(fired) == MAX_CATCH_UP
    assert next_due(trigger, state) == 1001 * MIN


def test_absence_without_after_per_group_starts_at_the_first_event():
    trigger = parse_trigger({**HEARTBEAT, "for_each": "id"})
    state = initial_state(trigger, 0)
    assert next_due(trigger, state) is None
    state, _ = feed(trigger, [ev("heartbeat", 0, "a"), ev("heartbeat", 30 * SEC, "b")])
    state, fired = on_time(trigger, state, 80 * SEC)
    assert [(f.group, f.at_ms) for f in fired] == [({"id": "a"}, MIN)]
    assert "(resource id=a)" in fired[0].reason


# --- deadline ----------------------------------------------------------------------------

LONDON = {
    "type": "deadline",
    "expect": "sales.refreshed",
    "by": "09:00",
    "timezone": "Europe/London",
    "days": "weekdays",
}
SUNDAY = utc(2026, 11, 22, 12, 0)  # London is on GMT (UTC+0) in November
MONDAY_9 = utc(2026, 11, 23, 9, 0)


def test_deadline_met_by_an_event_before_it():
    trigger = parse_trigger(LONDON)
    state = initial_state(trigger, SUNDAY)
    assert next_due(trigger, state) == MONDAY_9
    state, fired = on_event(trigger, state, ev("sales.refreshed", MONDAY_9 - 30 * MIN), MONDAY_9)
    assert fired == []
    state, fired = on_time(trigger, state, MONDAY_9)
    assert fired == []
    assert next_due(trigger, state) == MONDAY_9 + DAY


def test_deadline_missed_fires_at_it_with_the_reason():
    trigger = parse_trigger(LONDON)
    state = initial_state(trigger, SUNDAY)
    assert on_time(trigger, state, MONDAY_9 - 1)[1] == []
    state, fired = on_time(trigger, state, MONDAY_9)
    assert len(fired) == 1
    assert fired[0].at_ms == MONDAY_9
    assert fired[0].event is None and fired[0].event_ids == ()
    assert fired[0].key == f"deadline::{MONDAY_9}"
    assert fired[0].reason == (
        "expected sales.refreshed by 09:00 Europe/London on Mon 2026-11-23; none arrived"
    )
    assert on_time(trigger, state, MONDAY_9 + HOUR)[1] == []


def test_deadline_none_on_the_weekend_and_friday_is_followed_by_monday():
    trigger = parse_trigger(LONDON)
    friday_10 = utc(2026, 11, 27, 10, 0)
    state = initial_state(trigger, friday_10)
    monday = utc(2026, 11, 30, 9, 0)
    assert next_due(trigger, state) == monday
    state, fired = on_time(trigger, state, monday - 1)
    assert fired == []
    state, fired = on_time(trigger, state, monday)
    assert [f.at_ms for f in fired] == [monday]


def test_deadline_an_event_after_it_counts_for_the_next_day():
    trigger = parse_trigger(LONDON)
    late = ev("sales.refreshed", MONDAY_9 + 30 * MIN)
    state, fired = feed(trigger, [late], start=SUNDAY)
    assert [f.at_ms for f in fired] == [MONDAY_9]  # judged before the event was applied
    state, fired = on_time(trigger, state, MONDAY_9 + DAY)
    assert fired == []
    # the same, with on_time called between
    state, fired = feed(trigger, [MONDAY_9 + MIN, late, MONDAY_9 + DAY], start=SUNDAY)
    assert [f.at_ms for f in fired] == [MONDAY_9]


def test_deadline_an_event_from_the_future_counts_for_its_own_window():
    # the producer's clock is ahead: the event says 09:30 while it is 08:59 here
    trigger = parse_trigger(LONDON)
    state = initial_state(trigger, SUNDAY)
    ahead = ev("sales.refreshed", MONDAY_9 + 30 * MIN)
    state, fired = on_event(trigger, state, ahead, MONDAY_9 - MIN)
    assert fired == []
    state, fired = on_time(trigger, state, MONDAY_9)
    assert [f.at_ms for f in fired] == [MONDAY_9]  # it came after Monday's deadline
    assert on_time(trigger, state, MONDAY_9 + DAY)[1] == []  # and counts for Tuesday's


def test_deadline_a_backlog_read_late_still_counts_its_events():
    trigger = parse_trigger(LONDON)
    state = initial_state(trigger, SUNDAY)
    state, fired = on_event(trigger, state, ev("sales.refreshed", MONDAY_9 - MIN), MONDAY_9 + HOUR)
    assert fired == []
    assert on_time(trigger, state, MONDAY_9 + HOUR)[1] == []


def test_deadline_an_event_from_before_the_window_does_not_count():
    trigger = parse_trigger(LONDON)
    state = initial_state(trigger, SUNDAY)
    state, _ = on_event(trigger, state, ev("sales.refreshed", SUNDAY - HOUR), SUNDAY)
    assert len(on_time(trigger, state, MONDAY_9)[1]) == 1


def test_deadline_since_bounds_the_window():
    trigger = parse_trigger({**LONDON, "since": "06:00"})
    early = ev("sales.refreshed", MONDAY_9 - 4 * HOUR)  # 05:00, before 06:00
    assert len(feed(trigger, [early, MONDAY_9], start=SUNDAY)[1]) == 1
    in_time = ev("sales.refreshed", MONDAY_9 - 2 * HOUR)
    assert feed(trigger, [in_time, MONDAY_9], start=SUNDAY)[1] == []
    overnight = parse_trigger({**LONDON, "by": "02:00", "since": "22:00"})
    sunday_23 = ev("sales.refreshed", utc(2026, 11, 22, 23, 0))
    assert feed(overnight, [sunday_23, MONDAY_9], start=SUNDAY)[1] == []  # Monday 02:00 met


def test_deadline_in_a_dst_gap_fires_when_the_gap_ends():
    # 2027-03-14: New York springs forward at 02:00 EST to 03:00 EDT; 02:30 does not exist,
    # so the deadline is 03:00 EDT = 07:00 UTC. The day before, 02:30 EST = 07:30 UTC.
    trigger = parse_trigger(
        {"type": "deadline", "expect": "x", "by": "02:30", "timezone": "America/New_York"}
    )
    state = initial_state(trigger, utc(2027, 3, 13, 12, 0))
    assert next_due(trigger, state) == utc(2027, 3, 14, 7, 0)
    state, fired = on_time(trigger, state, utc(2027, 3, 14, 7, 0))
    assert [f.at_ms for f in fired] == [utc(2027, 3, 14, 7, 0)]
    assert "by 02:30 America/New_York on Sun 2027-03-14" in fired[0].reason
    assert next_due(trigger, state) == utc(2027, 3, 15, 6, 30)  # 02:30 EDT


def test_deadline_catch_up_is_capped():
    trigger = parse_trigger({"type": "deadline", "expect": "x", "by": "09:00"})
    state, fired = on_time(trigger, initial_state(trigger, 0), 400 * DAY)
    assert len(fired) == MAX_CATCH_UP
    assert next_due(trigger, state) == 400 * DAY + 9 * HOUR


# --- compound and sequence ---------------------------------------------------------------

A, B, C = {"match": "a"}, {"match": "b"}, {"match": "c"}


def compound(require: Any = "all", within: str | None = "1m", children: Any = (A, B, C)) -> Trigger:
    spec: dict[str, Any] = {"type": "compound", "triggers": list(children), "require": require}
    if within:
        spec["within"] = within
    return parse_trigger(spec)


def test_compound_all_within_the_window():
    trigger = compound()
    a, b, c = ev("a", 0), ev("b", 20 * SEC), ev("c", 50 * SEC)
    _, fired = feed(trigger, [a, b, c])
    assert len(fired) == 1
    firing = fired[0]
    assert firing.event_ids == (a.id, b.id, c.id)
    assert firing.event == c and firing.at_ms == 50 * SEC and firing.path == ""
    assert firing.key.startswith("compound::") and "event:0:" in firing.key
    assert firing.reason.startswith("3 of 3 triggers fired within 1m: [0] 1 event matching a")


def test_compound_all_not_outside_the_window():
    assert feed(compound(), [ev("a", 0), ev("b", 20 * SEC), ev("c", 61 * SEC)])[1] == []
    # a fell out of the window, then came again: all three within it
    late_a = ev("a", 70 * SEC)
    _, fired = feed(compound(), [ev("a", 0), ev("b", 20 * SEC), ev("c", 61 * SEC), late_a])
    assert len(fired) == 1 and fired[0].event == late_a


def test_compound_without_a_window_waits_for_ever():
    _, fired = feed(compound(within=None), [ev("a", 0), ev("b", DAY), ev("c", 9 * DAY)])
    assert len(fired) == 1


def test_compound_any_and_n():
    _, fired = feed(compound("any"), [ev("a", 0), ev("c", 1)])
    assert len(fired) == 2
    _, fired = feed(compound(2), [ev("a", 0), ev("a", 1), ev("c", 2), ev("b", 3)])
    assert [len(f.event_ids) for f in fired] == [2]  # a (its latest) and c; then b alone
    assert fired[0].event_ids[1].startswith("e")


def test_compound_of_time_based_children():
    trigger = compound(children=[{"type": "absence", "expect": "hb", "within": "1m"}, A])
    _, fired = feed(trigger, [ev("a", 30 * SEC), MIN])
    assert len(fired) == 1
    assert fired[0].at_ms == MIN
    assert "absence:0::60000" in fired[0].key


def test_compound_sees_its_children_catch_up_on_time_before_the_event():
    # an event at 2m, read without on_time since 0: the heartbeat's windows to 1m and 2m
    # were silent; the compound pairs the event with the latest (2m), as if on_time had run
    trigger = compound(children=[A, {"type": "absence", "expect": "hb", "within": "1m"}])
    event = ev("a", 2 * MIN)
    _, fired = feed(trigger, [event])
    _, stepped = feed(trigger, [2 * MIN, event])
    assert fired == stepped
    assert [f.at_ms for f in fired] == [2 * MIN]
    assert "absence:1::120000" in fired[0].key


def sequence(within: str | None = "1m") -> Trigger:
    spec: dict[str, Any] = {"type": "sequence", "triggers": [A, B, C]}
    if within:
        spec["within"] = within
    return parse_trigger(spec)


def test_sequence_in_order_fires():
    a, b, c = ev("a", 0), ev("b", 10 * SEC), ev("c", 20 * SEC)
    _, fired = feed(sequence(), [a, b, c])
    assert len(fired) == 1
    assert fired[0].event_ids == (a.id, b.id, c.id)
    assert fired[0].key.startswith("sequence::")


def test_sequence_out_of_order_does_not_fire():
    assert feed(sequence(), [ev("b", 0), ev("a", 1), ev("c", 2)])[1] == []
    assert feed(sequence(), [ev("a", 0), ev("c", 1), ev("b", 2)])[1] == []
    # a later b restarts nothing; a later a restarts the sequence
    assert len(feed(sequence(), [ev("a", 0), ev("b", 1), ev("a", 2), ev("c", 3)])[1]) == 0
    assert (
        len(feed(sequence(), [ev("a", 0), ev("b", 1), ev("a", 2), ev("b", 3), ev("c", 4)])[1]) == 1
    )


def test_sequence_too_slow_is_abandoned():
    assert feed(sequence(), [ev("a", 0), ev("b", 30 * SEC), ev("c", 61 * SEC)])[1] == []
    assert len(feed(sequence(None), [ev("a", 0), ev("b", HOUR), ev("c", DAY)])[1]) == 1


def test_nested_compound_of_a_sequence():
    trigger = parse_trigger(
        {
            "type": "compound",
            "triggers": [{"type": "sequence", "triggers": [A, B]}, C],
            "within": "1h",
        }
    )
    assert feed(trigger, [ev("b", 0), ev("a", 1), ev("c", 2)])[1] == []
    _, fired = feed(trigger, [ev("c", 0), ev("a", 1), ev("b", 2)])
    assert len(fired) == 1
    assert "sequence:0:" in fired[0].key and "event:0.1:" in fired[0].key
    assert "event:1:" in fired[0].key


def test_a_state_of_another_trigger_starts_afresh():
    trigger = compound()
    assert next_due(trigger, {"kind": "event", "groups": {}}) == 0
    state, fired = on_event(trigger, {"kind": "event", "groups": {}}, ev("a", 0), 0)
    assert fired == [] and state["kind"] == "compound"


# --- properties --------------------------------------------------------------------------

PROPERTY_SPECS = [
    {"match": "a*", "threshold": 2, "within": "1m", "for_each": "id"},
    {"match": ["a", "b"], "threshold": 3},
    {"type": "absence", "expect": "b", "after": "a", "within": "2m", "for_each": "id"},
    {"type": "absence", "expect": "a", "within": "90s"},
    {"type": "absence", "expect": "b", "within": "1m", "for_each": "id"},
    {"type": "deadline", "expect": "b", "by": "01:00", "since": "00:30"},
    {"type": "deadline", "expect": "a", "by": "00:10", "days": ["mon", "tue", "fri"]},
    {
        "type": "compound",
        "triggers": [{"match": "a"}, {"type": "absence", "expect": "b", "within": "1m"}],
        "require": "all",
        "within": "5m",
    },
    {
        "type": "sequence",
        "triggers": [
            {"match": "a"},
            {"match": "b", "threshold": 2},
            {"type": "compound", "triggers": [{"match": "a"}, {"match": "c"}], "require": "any"},
        ],
        "within": "10m",
    },
]
TRIGGERS = [parse_trigger(spec) for spec in PROPERTY_SPECS]

step_strategy = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from(["a", "b", "c", "ab"]),
        st.sampled_from(["x", "y"]),
        st.sampled_from([0, SEC, 20 * SEC, MIN, 5 * MIN, HOUR, 7 * HOUR]),
        st.integers(-30 * SEC, 0),  # jitter: slightly out of occurred order
    ),
    st.tuples(st.just("time"), st.sampled_from([0, SEC, 30 * SEC, 2 * MIN, 3 * HOUR, DAY])),
)


def run(trigger: Trigger, steps: list[tuple[Any, ...]], check: Any = None) -> list[Firing]:
    """Drive ``trigger`` through ``steps``; ``check(state, call, result)`` sees every call."""
    now, seq = 1_000 * DAY, 0
    state = initial_state(trigger, now)
    fired: list[Firing] = []
    for step in steps:
        if step[0] == "event":
            _, name, rid, advance, jitter = step
            now, seq = now + advance, seq + 1
            event = Event(seq, f"e{seq}", name, now + jitter, {"id": rid}, (), {"seq": seq})
            call: Any = lambda s, e=event, n=now: on_event(trigger, s, e, n)  # noqa: E731
        else:
            now += step[1]
            if step[0] == "wait":  # the clock moves, nobody calls on_time
                continue
            call = lambda s, n=now: on_time(trigger, s, n)  # noqa: E731
        result = call(state)
        if check is not None:
            check(state, call, result)
        state, out = result
        fired += out
    return fired


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TRIGGERS), st.lists(step_strategy, max_size=40))
def test_state_is_plain_json_and_round_trips(trigger: Trigger, steps: list[tuple[Any, ...]]):
    def check(state: dict[str, Any], call: Any, result: Any) -> None:
        copied = json.loads(json.dumps(state))
        assert copied == state
        assert call(copied) == result  # the same firings from the stored state
        assert json.loads(json.dumps(result[0])) == result[0]

    run(trigger, steps, check)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TRIGGERS), st.lists(step_strategy, max_size=40))
def test_keys_are_never_repeated_and_the_input_state_is_never_changed(
    trigger: Trigger, steps: list[tuple[Any, ...]]
):
    def check(state: dict[str, Any], call: Any, result: Any) -> None:
        before = copy.deepcopy(state)
        call(state)
        assert state == before

    fired = run(trigger, steps, check)
    keys = [f.key for f in fired]
    assert len(keys) == len(set(keys))
    for firing in fired:
        assert "\n" not in firing.reason and firing.path == ""


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TRIGGERS), st.lists(step_strategy, max_size=30))
def test_on_time_between_events_changes_nothing_for_event_triggers(
    trigger: Trigger, steps: list[tuple[Any, ...]]
):
    """Extra on_time calls at arbitrary moments: reactive firings stay the same, and no key
    repeats for any kind."""
    events = [s if s[0] == "event" else ("wait", s[1]) for s in steps]
    mixed = run(trigger, steps)
    assert len({f.key for f in mixed}) == len(mixed)
    if trigger.kind == "event":
        assert [f.key for f in run(trigger, events)] == [f.key for f in mixed]


calm_step = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["x", "y"]),
        st.sampled_from([0, SEC, 20 * SEC, MIN, 5 * MIN]),
        st.just(0),  # in occurred order, read live
    ),
    st.tuples(st.just("time"), st.sampled_from([0, SEC, 30 * SEC, 2 * MIN, 5 * MIN])),
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TRIGGERS), st.lists(calm_step, max_size=19))
def test_when_on_time_is_called_does_not_change_what_fires(
    trigger: Trigger, steps: list[tuple[Any, ...]]
):
    """Events read live, with or without on_time between them: the same firings. (At most
    95 minutes pass, under the catch-up cap; the run starts at midnight UTC, so the 01:00
    deadline falls inside.)"""
    waits = [s if s[0] == "event" else ("wait", s[1]) for s in steps]
    alone = run(trigger, [*waits, ("time", 0)])
    assert run(trigger, [*steps, ("time", 0)]) == alone


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.booleans(), st.integers(0, 10 * DAY)), max_size=60),
)
def test_threshold_without_a_window_fires_once_per_threshold_matches(
    threshold: int, items: list[tuple[bool, int]]
):
    trigger = parse_trigger({"match": "hit.*", "threshold": threshold})
    state, fired, hits = initial_state(trigger, 0), [], 0
    for seq, (hit, at) in enumerate(items):
        name = "hit.one" if hit else "miss.one"
        hits += hit
        state, out = on_event(trigger, state, Event(seq, f"e{seq}", name, at, {"id": "r"}, ()), at)
        fired += out
        state, out = on_time(trigger, state, at + HOUR)
        fired += out
    assert len(fired) == hits // threshold
    assert len(state["groups"].get("", [])) == hits % threshold
