"""Schedule calendars: exact instants across DST changes, properties, and bad input.

Every expected instant below was worked out by hand from the zone's offsets
(noted beside each case), not by running the code under test.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persevere.statemachine import calendar
from persevere.statemachine.calendar import (
    Calendar,
    describe,
    local_iso,
    make_calendar,
    next_times,
    parse_interval,
    parse_time,
    times_before,
    times_between,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
BIG = 100_000


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Epoch ms of a UTC wall time."""
    return (
        int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.timezone.utc).timestamp()) * 1000
    )


# -- DST, by hand --------------------------------------------------------------------
#
# Europe/Berlin 2026: CET +1 -> CEST +2 at 2026-03-29 01:00Z (wall 02:00-03:00 missing);
#   CEST +2 -> CET +1 at 2026-10-25 01:00Z (wall 02:00-03:00 twice).
# America/New_York 2026: EST -5 -> EDT -4 at 2026-03-08 07:00Z (02:00-03:00 missing);
#   EDT -4 -> EST -5 at 2026-11-01 06:00Z (01:00-02:00 twice).
# Australia/Sydney 2026: AEDT +11 -> AEST +10 at 2026-04-04 16:00Z (05 Apr 02:00-03:00
#   twice); AEST +10 -> AEDT +11 at 2026-10-03 16:00Z (04 Oct 02:00-03:00 missing).
# Australia/Lord_Howe 2026: +11 -> +10:30 at 2026-04-04 15:00Z (05 Apr 01:30-02:00
#   twice); +10:30 -> +11 at 2026-10-03 15:30Z (04 Oct 02:00-02:30 missing).

BERLIN, NEW_YORK, SYDNEY, LORD_HOWE = (
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",
)
Case = tuple[str, str, str, "int | None", int, int, list[int]]
DST_CASES: dict[str, Case] = {
    # Berlin, spring forward
    "berlin-spring-daily-in-gap": (
        "cron", "30 2 * * *", BERLIN, None, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12),
        # 28th 02:30 CET; 29th 02:30 missing -> 03:00 CEST; 30th 02:30 CEST
        [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
    ),
    "berlin-spring-four-in-the-gap-fire-once": (
        "cron", "*/15 2 * * *", BERLIN, None, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12),
        [utc(2026, 3, 29, 1)],
    ),
    "berlin-spring-every-15m": (
        "cron", "*/15 * * * *", BERLIN, None, utc(2026, 3, 29, 0, 20), utc(2026, 3, 29, 1, 20),
        # 01:30, 01:45 CET; 02:00-02:45 and 03:00 CEST all at 01:00Z; 03:15 CEST
        [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1),
         utc(2026, 3, 29, 1, 15)],
    ),
    "berlin-spring-hourly": (
        "cron", "0 * * * *", BERLIN, None, utc(2026, 3, 28, 22, 30), utc(2026, 3, 29, 2, 30),
        # 00:00, 01:00 CET; 02:00 missing and 03:00 CEST both 01:00Z; 04:00 CEST
        [utc(2026, 3, 28, 23), utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)],
    ),
    "berlin-spring-1d-at-07": (
        "interval", "1d", BERLIN, utc(2026, 1, 5, 6), utc(2026, 3, 27, 12), utc(2026, 3, 30, 12),
        [utc(2026, 3, 28, 6), utc(2026, 3, 29, 5), utc(2026, 3, 30, 5)],
    ),
    "berlin-spring-1d-at-0230": (
        "interval", "1d", BERLIN, utc(2026, 1, 5, 1, 30), utc(2026, 3, 27, 12),
        utc(2026, 3, 30, 12),
        [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
    ),
    "berlin-spring-15m-elapsed": (
        # the default anchor, 2000-01-01 00:00 CET = 1999-12-31 23:00Z, is on the 15m grid
        "interval", "15m", BERLIN, None, utc(2026, 3, 29, 0, 40), utc(2026, 3, 29, 1, 40),
        [utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 15),
         utc(2026, 3, 29, 1, 30)],
    ),
    "berlin-spring-rrule-daily-in-gap": (
        "rrule", "DTSTART:20260320T023000\nRRULE:FREQ=DAILY", BERLIN, None,
        utc(2026, 3, 27, 12), utc(2026, 3, 30, 12),
        [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
    ),
    # Berlin, fall back
    "berlin-fall-daily-in-overlap": (
        "cron", "30 2 * * *", BERLIN, None, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12),
        # 24th 02:30 CEST; 25th 02:30 first pass (CEST); 26th 02:30 CET
        [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
    ),
    "berlin-fall-every-15m": (
        "cron", "*/15 * * * *", BERLIN, None, utc(2026, 10, 24, 23, 40), utc(2026, 10, 25, 2, 20),
        # 01:45 .. 02:45 CEST, then nothing for the second pass, then 03:00 CET
        [utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 15),
         utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 2),
         utc(2026, 10, 25, 2, 15)],
    ),
    "berlin-fall-hourly": (
        "cron", "0 * * * *", BERLIN, None, utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3, 30),
        # 01:00, 02:00 CEST; 03:00, 04:00 CET
        [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)],
    ),
    "berlin-fall-1d-at-07": (
        "interval", "1d", BERLIN, utc(2026, 1, 5, 6), utc(2026, 10, 23, 12), utc(2026, 10, 26, 12),
        [utc(2026, 10, 24, 5), utc(2026, 10, 25, 6), utc(2026, 10, 26, 6)],
    ),
    "berlin-fall-1d-at-0230": (
        "interval", "1d", BERLIN, utc(2026, 1, 5, 1, 30), utc(2026, 10, 23, 12),
        utc(2026, 10, 26, 12),
        [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
    ),
    "berlin-fall-15m-elapsed": (
        "interval", "15m", BERLIN, None, utc(2026, 10, 25, 0, 40), utc(2026, 10, 25, 1, 40),
        [utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 15),
         utc(2026, 10, 25, 1, 30)],
    ),
    "berlin-fall-rrule-hourly": (
        # DTSTART from the anchor: 2026-10-25 00:00 CEST
        "rrule", "FREQ=HOURLY", BERLIN, utc(2026, 10, 24, 22), utc(2026, 10, 24, 21),
        utc(2026, 10, 25, 3, 30),
        [utc(2026, 10, 24, 22), utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 2),
         utc(2026, 10, 25, 3)],
    ),
    # New York, spring forward
    "new-york-spring-daily-in-gap": (
        "cron", "30 2 * * *", NEW_YORK, None, utc(2026, 3, 6, 12), utc(2026, 3, 9, 12),
        # 7th 02:30 EST; 8th missing -> 03:00 EDT; 9th 02:30 EDT
        [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
    ),
    "new-york-spring-every-15m": (
        "cron", "*/15 * * * *", NEW_YORK, None, utc(2026, 3, 8, 6, 20), utc(2026, 3, 8, 7, 20),
        [utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7),
         utc(2026, 3, 8, 7, 15)],
    ),
    "new-york-spring-hourly": (
        "cron", "0 * * * *", NEW_YORK, None, utc(2026, 3, 8, 5, 30), utc(2026, 3, 8, 8, 30),
        [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)],
    ),
    "new-york-spring-1d-at-07": (
        "interval", "1d", NEW_YORK, utc(2026, 1, 5, 12), utc(2026, 3, 6, 14), utc(2026, 3, 9, 12),
        [utc(2026, 3, 7, 12), utc(2026, 3, 8, 11), utc(2026, 3, 9, 11)],
    ),
    "new-york-spring-90m-elapsed": (
        # anchor 00:00 EST; 01:30 EST, then 04:00 and 05:30 EDT
        "interval", "90m", NEW_YORK, utc(2026, 3, 8, 5), utc(2026, 3, 8, 5), utc(2026, 3, 8, 10),
        [utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 8), utc(2026, 3, 8, 9, 30)],
    ),
    "new-york-spring-rrule-daily-in-gap": (
        "rrule", "FREQ=DAILY;BYHOUR=2;BYMINUTE=30", NEW_YORK, utc(2026, 3, 1, 5),
        utc(2026, 3, 6, 12), utc(2026, 3, 9, 12),
        [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
    ),
    # New York, fall back
    "new-york-fall-daily-in-overlap": (
        "cron", "30 1 * * *", NEW_YORK, None, utc(2026, 10, 30, 12), utc(2026, 11, 2, 12),
        # 31st 01:30 EDT; 1st first pass (EDT); 2nd 01:30 EST
        [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
    ),
    "new-york-fall-every-15m": (
        "cron", "*/15 * * * *", NEW_YORK, None, utc(2026, 11, 1, 4, 50), utc(2026, 11, 1, 7, 20),
        [utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 15), utc(2026, 11, 1, 5, 30),
         utc(2026, 11, 1, 5, 45), utc(2026, 11, 1, 7), utc(2026, 11, 1, 7, 15)],
    ),
    "new-york-fall-hourly": (
        "cron", "0 * * * *", NEW_YORK, None, utc(2026, 11, 1, 3, 30), utc(2026, 11, 1, 8, 30),
        [utc(2026, 11, 1, 4), utc(2026, 11, 1, 5), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8)],
    ),
    "new-york-fall-1d-at-07": (
        "interval", "1d", NEW_YORK, utc(2026, 1, 5, 12), utc(2026, 10, 30, 14),
        utc(2026, 11, 2, 14),
        [utc(2026, 10, 31, 11), utc(2026, 11, 1, 12), utc(2026, 11, 2, 12)],
    ),
    "new-york-fall-90m-elapsed": (
        # anchor 00:00 EDT; 01:30 EDT, then 02:00 and 03:30 EST
        "interval", "90m", NEW_YORK, utc(2026, 11, 1, 4), utc(2026, 11, 1, 4), utc(2026, 11, 1, 9),
        [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7), utc(2026, 11, 1, 8, 30)],
    ),
    "new-york-fall-rrule-hourly-at-30": (
        "rrule", "DTSTART:20261031T000000\nRRULE:FREQ=HOURLY;BYMINUTE=30", NEW_YORK, None,
        utc(2026, 11, 1, 4, 50), utc(2026, 11, 1, 7, 40),
        [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 7, 30)],
    ),
    # Sydney (southern hemisphere: fall back in April, spring forward in October)
    "sydney-april-daily-in-overlap": (
        "cron", "30 2 * * *", SYDNEY, None, utc(2026, 4, 3, 12), utc(2026, 4, 6, 0),
        [utc(2026, 4, 3, 15, 30), utc(2026, 4, 4, 15, 30), utc(2026, 4, 5, 16, 30)],
    ),
    "sydney-april-every-30m": (
        "cron", "*/30 * * * *", SYDNEY, None, utc(2026, 4, 4, 14, 40), utc(2026, 4, 4, 17, 10),
        # 02:00, 02:30 AEDT, nothing for the second pass, 03:00 AEST
        [utc(2026, 4, 4, 15), utc(2026, 4, 4, 15, 30), utc(2026, 4, 4, 17)],
    ),
    "sydney-october-daily-in-gap": (
        "cron", "30 2 * * *", SYDNEY, None, utc(2026, 10, 2, 12), utc(2026, 10, 5, 0),
        [utc(2026, 10, 2, 16, 30), utc(2026, 10, 3, 16), utc(2026, 10, 4, 15, 30)],
    ),
    "sydney-april-1d-at-07": (
        "interval", "1d", SYDNEY, utc(2026, 1, 5, 20), utc(2026, 4, 3, 12), utc(2026, 4, 5, 12),
        [utc(2026, 4, 3, 20), utc(2026, 4, 4, 21)],
    ),
    "sydney-1d-at-07-october": (
        "interval", "1d", SYDNEY, utc(2026, 1, 5, 20), utc(2026, 10, 2, 12), utc(2026, 10, 4, 12),
        [utc(2026, 10, 2, 21), utc(2026, 10, 3, 20)],
    ),
    # Lord Howe (a 30-minute change)
    "lord-howe-april-every-15m": (
        "cron", "*/15 * * * *", LORD_HOWE, None, utc(2026, 4, 4, 14, 10), utc(2026, 4, 4, 15, 40),
        # 01:15, 01:30, 01:45 at +11; the second pass of 01:30-02:00 at +10:30 fires nothing
        [utc(2026, 4, 4, 14, 15), utc(2026, 4, 4, 14, 30), utc(2026, 4, 4, 14, 45),
         utc(2026, 4, 4, 15, 30)],
    ),
    "lord-howe-october-every-15m": (
        "cron", "*/15 * * * *", LORD_HOWE, None, utc(2026, 10, 3, 15, 10), utc(2026, 10, 3, 16),
        # 01:45 at +10:30; 02:00, 02:15 missing and 02:30 at +11 all at 15:30Z
        [utc(2026, 10, 3, 15, 15), utc(2026, 10, 3, 15, 30), utc(2026, 10, 3, 15, 45),
         utc(2026, 10, 3, 16)],
    ),
    "lord-howe-october-daily-in-gap": (
        "cron", "15 2 * * *", LORD_HOWE, None, utc(2026, 10, 2, 12), utc(2026, 10, 5, 0),
        [utc(2026, 10, 2, 15, 45), utc(2026, 10, 3, 15, 30), utc(2026, 10, 4, 15, 15)],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DST_CASES), ids=list(DST_CASES))
def test_dst_changes_fire_at_these_exact_instants(case: str) -> None:
    kind, expression, zone, anchor, after, until, expected = DST_CASES[case]
    cal = make_calendar(kind, expression, zone, anchor)
    assert times_between(cal, after, until) == expected
    assert times_before(cal, until, after, len(expected) + 5) == expected
    assert times_before(cal, until, after, 1) == expected[-1:]
    assert next_times(cal, after, len(expected)) == expected


def test_a_restart_inside_the_repeated_hour_waits_for_its_end() -> None:
    cal = make_calendar("cron", "*/15 * * * *", BERLIN)
    second_pass_0230 = utc(2026, 10, 25, 1, 30)  # 02:30 CET, the hour's second pass
    assert next_times(cal, second_pass_0230, 2) == [utc(2026, 10, 25, 2), utc(2026, 10, 25, 2, 15)]
    # the first pass of 02:30 and 02:45 (00:30Z, 00:45Z) are already past
    assert times_before(cal, second_pass_0230, 0, 2) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 0, 45),
    ]


def test_previews_print_local_time_with_its_offset() -> None:
    assert local_iso(utc(2026, 3, 29, 1), BERLIN) == "2026-03-29T03:00:00+02:00"
    assert local_iso(utc(2026, 3, 29, 0, 59), BERLIN) == "2026-03-29T01:59:00+01:00"
    assert local_iso(utc(2026, 11, 1, 7) + 5, NEW_YORK) == "2026-11-01T02:00:00.005-05:00"
    assert local_iso(0, "UTC") == "1970-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("2026-03-29T02:30", BERLIN, utc(2026, 3, 29, 1)),  # missing: the gap's end
        ("2026-10-25T02:30", BERLIN, utc(2026, 10, 25, 0, 30)),  # twice: the first
        ("2026-03-01", NEW_YORK, utc(2026, 3, 1, 5)),
        ("2026-03-01T07:00+01:00", NEW_YORK, utc(2026, 3, 1, 6)),
        ("2026-03-01T07:00Z", BERLIN, utc(2026, 3, 1, 7)),
        (" 2026-07-01 07:00:30 ", "UTC", utc(2026, 7, 1, 7) + 30_000),
    ],
)
def test_parse_time_reads_naive_times_in_the_zone(text: str, zone: str, expected: int) -> None:
    assert parse_time(text, zone) == expected


# -- the API's smaller promises -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("900", 900), ("15m", 900), ("1h30m", 5400), ("1h 30m", 5400), ("90s", 90),
     ("2d", 172800), ("1w", 604800), ("1W 1D", 691200), ("1h1s", 3601)],
)  # fmt: skip
def test_intervals_are_held_in_whole_seconds(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds
    assert make_calendar("interval", text, BERLIN).expression == str(seconds)


def test_describe_says_what_fires_in_one_line() -> None:
    assert describe(make_calendar("cron", "0 7 * * 1-5", BERLIN)) == (
        "cron '0 7 * * 1-5' in Europe/Berlin"
    )
    assert describe(make_calendar("interval", "900")) == "every 15m from 2000-01-01T00:00 UTC"
    assert describe(make_calendar("interval", "1d", BERLIN, utc(2026, 1, 5, 6))) == (
        "every 1d from 2026-01-05T07:00 Europe/Berlin"
    )
    assert describe(make_calendar("rrule", "DTSTART:20260105T070000\nRRULE:FREQ=DAILY")) == (
        "rrule 'DTSTART:20260105T070000\\nRRULE:FREQ=DAILY' in UTC"
    )
    weekly = make_calendar("rrule", "FREQ=WEEKLY;BYDAY=MO", "UTC", utc(2026, 1, 5, 7))
    assert describe(weekly) == "rrule 'FREQ=WEEKLY;BYDAY=MO' in UTC from 2026-01-05T07:00"


def test_an_anchor_is_kept_only_where_it_means_something() -> None:
    assert make_calendar("cron", "@daily", "UTC", 5).anchor_ms is None
    assert make_calendar("rrule", "DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "UTC", 5) == (
        Calendar("rrule", "DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "UTC", None)
    )
    assert make_calendar("interval", "1h", "UTC", 5).anchor_ms == 5


def test_an_interval_fires_nothing_before_its_anchor() -> None:
    anchor = utc(2026, 1, 1, 0, 7)
    cal = make_calendar("interval", "15m", "UTC", anchor)
    assert times_between(cal, 0, anchor + 30 * MINUTE) == [
        anchor,
        anchor + 15 * MINUTE,
        anchor + 30 * MINUTE,
    ]
    assert times_before(cal, anchor - 1, 0, 5) == []


def test_limit_and_count_take_the_first_or_the_last() -> None:
    cal = make_calendar("cron", "0 * * * *")
    start = utc(2026, 5, 1)
    assert times_between(cal, start, start + DAY, limit=3) == [start + HOUR * k for k in (1, 2, 3)]
    assert times_before(cal, start + DAY, start, 2) == [start + 23 * HOUR, start + DAY]
    assert times_between(cal, start, start + DAY, limit=0) == []
    assert times_between(cal, start + DAY, start) == []
    assert times_before(cal, start, start, 3) == []
    assert next_times(cal, start, 0) == []
    with pytest.raises(ValueError, match="count=-1 must be >= 0"):
        next_times(cal, start, -1)


@pytest.mark.parametrize(
    ("expression", "anchor", "expected"),
    [
        # COUNT ends it
        ("DTSTART:20260105T070000\nRRULE:FREQ=DAILY;COUNT=3", None,
         [utc(2026, 1, 5, 6), utc(2026, 1, 6, 6), utc(2026, 1, 7, 6)]),
        # UNTIL in UTC with a TZID'd DTSTART (RFC 5545 style)
        ("DTSTART;TZID=Europe/Berlin:20260105T070000\nRRULE:FREQ=DAILY;UNTIL=20260106T060000Z",
         None, [utc(2026, 1, 5, 6), utc(2026, 1, 6, 6)]),
        # UNTIL in UTC with the DTSTART from the anchor
        ("FREQ=DAILY;UNTIL=20260106T060000Z", utc(2026, 1, 5, 6),
         [utc(2026, 1, 5, 6), utc(2026, 1, 6, 6)]),
        # local UNTIL with a local DTSTART, and an EXDATE
        ("DTSTART:20260105T070000\nRRULE:FREQ=DAILY;UNTIL=20260108T070000\n"
         "EXDATE:20260106T070000", None,
         [utc(2026, 1, 5, 6), utc(2026, 1, 7, 6), utc(2026, 1, 8, 6)]),
        # an indented block, as written in a Python string
        ("\n    DTSTART:20260105T070000\n    RRULE:FREQ=WEEKLY;COUNT=2\n", None,
         [utc(2026, 1, 5, 6), utc(2026, 1, 12, 6)]),
    ],
)  # fmt: skip
def test_rrule_forms(expression: str, anchor: int | None, expected: list[int]) -> None:
    cal = make_calendar("rrule", expression, BERLIN, anchor)
    assert next_times(cal, 0, 10) == expected
    assert times_before(cal, utc(2027, 1, 1), 0, 10) == expected


def test_a_utc_dtstart_is_fine_in_a_utc_schedule() -> None:
    cal = make_calendar("rrule", "DTSTART:20260105T070000Z\nRRULE:FREQ=DAILY;COUNT=2", "UTC")
    assert next_times(cal, 0, 5) == [utc(2026, 1, 5, 7), utc(2026, 1, 6, 7)]


def test_the_last_run_after_a_year_down_costs_a_few_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    mapped: list[object] = []
    real = calendar._instant
    monkeypatch.setattr(calendar, "_instant", lambda *a: mapped.append(a) or real(*a))
    at = utc(2026, 6, 1, 12, 0)
    every_minute = make_calendar("cron", "* * * * *", BERLIN)
    assert times_before(every_minute, at, at - 366 * DAY, 3) == [at - 2 * MINUTE, at - MINUTE, at]
    daily = make_calendar("interval", "1d", BERLIN)
    assert times_before(daily, at, at - 3660 * DAY, 1) == [utc(2026, 5, 31, 22)]  # 00:00 CEST
    assert len(mapped) <= 6
    minutely = make_calendar("interval", "1m", BERLIN)
    assert times_before(minutely, at, 0, 2) == [at - MINUTE, at]
    assert len(times_before(minutely, at, 0, 5000)) == 5000


def test_importing_the_calendar_loads_neither_croniter_nor_dateutil() -> None:
    code = (
        "import sys, persevere.statemachine.calendar\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('croniter', 'dateutil')))"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
        env={"PYTHONPATH": root, "PATH": ""},
    )  # fmt: skip
    assert out.stdout.strip() == "[]"


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expression", "zone", "anchor", "message"),
    [
        ("cron", "0 25 * * *", "UTC", None, "hour field '25' is not valid"),
        ("cron", "61 * * * *", "UTC", None, "minute field '61' is not valid"),
        ("cron", "0 0 * 13 *", "UTC", None, "month field '13' is not valid"),
        ("cron", "0 0 * * mon-xyz", "UTC", None, "day-of-week field 'mon-xyz' is not valid"),
        ("cron", "* * * *", "UTC", None, "has 4 fields"),
        ("cron", "0 0 * * * *", "UTC", None, "seconds are not supported"),
        ("cron", "H 3 * * *", "UTC", None, "hashed (H) and random (R) fields are not supported"),
        ("cron", "0 0 30 2 *", "UTC", None, "never fires"),
        ("cron", "@reboot", "UTC", None, "is not an alias"),
        ("cron", "@daily", "Europe/Berln", None,
         "unknown timezone 'Europe/Berln'; did you mean Europe/Berlin"),
        ("cron", "@daily", "Mars/Olympus", None,
         "unknown timezone 'Mars/Olympus'; give an IANA name"),
        ("interval", "0", "UTC", None, "interval '0' must be longer than 0 seconds"),
        ("interval", "-15m", "UTC", None, "interval '-15m' must be longer than 0 seconds"),
        ("interval", "soon", "UTC", None, "interval 'soon' is not a duration"),
        ("interval", "1.5h", "UTC", None, "interval '1.5h' is not a duration"),
        ("interval", "30m1h", "UTC", None, "w/d/h/m/s in that order"),
        ("rrule", "FREQ=SOMETIMES", "UTC", 0, "does not parse: invalid 'FREQ'"),
        ("rrule", "BYDAY=MO", "UTC", 0, "has no FREQ"),
        ("rrule", "FREQ=WEEKLY;BYDAY=MO", "UTC", None, "has no DTSTART; add one"),
        ("rrule", "FREQ=DAILY;COUNT=2;UNTIL=20270101T000000", "UTC", 0, "has COUNT and UNTIL"),
        ("rrule", "DTSTART;TZID=America/New_York:20260101T070000\nRRULE:FREQ=DAILY", BERLIN, None,
         "has TZID=America/New_York but the schedule's timezone is Europe/Berlin"),
        ("rrule", "DTSTART:20260101T070000Z\nRRULE:FREQ=DAILY", BERLIN, None,
         "DTSTART is in UTC (Z) but the schedule's timezone is Europe/Berlin"),
        ("rrule", "DTSTART:20260101T070000\nRRULE:FREQ=DAILY;UNTIL=20260201T000000Z", BERLIN, None,
         "UNTIL must end in Z (UTC) when DTSTART has a zone"),
        ("rrule", "DTSTART:20260101T070000\nRRULE:FREQ=YEARLY;COUNT=3;BYMONTH=2;BYMONTHDAY=30",
         "UTC", None, "never fires"),
        ("weekly", "MO", "UTC", None, "schedule kind 'weekly' is not one of cron, interval, rrule"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_problem(
    kind: str, expression: str, zone: str, anchor: int | None, message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        make_calendar(kind, expression, zone, anchor)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_interval(""), "interval '' is not a duration"),
        (lambda: parse_interval("5000000000"), "longer than 100 years"),
        (lambda: parse_time("yesterday", "UTC"), "time 'yesterday' is not an ISO date"),
        (lambda: parse_time("2026-02-30", "UTC"), "time '2026-02-30' is not an ISO date"),
        (lambda: parse_time("2026-03-01", "Nowhere/Town"), "unknown timezone 'Nowhere/Town'"),
        (lambda: local_iso(0, "Europe/Pariss"), "did you mean Europe/Paris"),
    ],
)
def test_bad_times_and_intervals(call: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        call()  # type: ignore[operator]
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


# -- properties -----------------------------------------------------------------------

ZONES = [
    "UTC", BERLIN, "Europe/London", NEW_YORK, "America/Los_Angeles", "America/St_Johns",
    "America/Sao_Paulo", SYDNEY, LORD_HOWE, "Pacific/Chatham", "Asia/Kolkata",
    "Asia/Kathmandu", "Africa/Casablanca",
]  # fmt: skip
CRONS = [
    "*/15 * * * *", "0 * * * *", "30 2 * * *", "15,45 1-3 * * *", "0 7 * * 1-5",
    "0 12 13 * 5", "0 0 1 * *", "@daily", "5 */2 * * 0", "*/20 2 * * *", "30 1 * * *",
    "45 2 * * *",
]  # fmt: skip
INTERVALS = ["7m", "15m", "1h", "90m", "1h 1s", "1d", "2d", "1w"]
RRULES = [
    "FREQ=DAILY;BYHOUR=2,7;BYMINUTE=30",
    "FREQ=HOURLY;INTERVAL=5",
    "FREQ=WEEKLY;BYDAY=MO,FR;BYHOUR=1;BYMINUTE=45",
    "FREQ=MINUTELY;INTERVAL=20;BYHOUR=1,2,3",
]


@functools.cache
def _changes(zone: str) -> list[int]:
    """The instants (to the minute) at which ``zone`` changed its offset in 2024-2027."""
    tz = ZoneInfo(zone)

    def offset(ms: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(ms / 1000, tz).utcoffset()

    found, day = [], utc(2024, 1, 1)
    while day < utc(2028, 1, 1):
        if offset(day) != offset(day + DAY):
            before, after = day, day + DAY
            while after - before > MINUTE:
                middle = (before + after) // 2 // MINUTE * MINUTE
                before, after = (
                    (middle, after) if offset(middle) == offset(day) else (before, middle)
                )
            found.append(after)
        day += DAY
    return found


@st.composite
def moments(draw: st.DrawFn, zone: str) -> int:
    """An instant in 2024-2027; half of the time within 4 hours of one of the zone's changes."""
    if _changes(zone) and draw(st.booleans()):
        change = draw(st.sampled_from(_changes(zone)))
        return draw(st.integers(change - 4 * HOUR, change + 4 * HOUR))
    return draw(st.integers(utc(2024, 1, 1), utc(2027, 12, 1)))


zones = st.sampled_from(ZONES)


@st.composite
def calendars(draw: st.DrawFn, kinds: tuple[str, ...] = ("cron", "interval", "rrule")) -> Calendar:
    """A calendar; an rrule's DTSTART is a few days before the times drawn next (cheap)."""
    kind, zone = draw(st.sampled_from(kinds)), draw(zones)
    if kind == "cron":
        return make_calendar(kind, draw(st.sampled_from(CRONS)), zone)
    if kind == "interval":
        anchor = draw(st.none() | st.integers(utc(2023, 1, 1), utc(2028, 1, 1)))
        return make_calendar(kind, draw(st.sampled_from(INTERVALS)), zone, anchor)
    return make_calendar(kind, draw(st.sampled_from(RRULES)), zone, utc(2023, 12, 20))


def spans(longest: int) -> st.SearchStrategy[int]:
    """Lengths of time up to ``longest``, a good share of them long (hypothesis favours 0)."""
    return st.integers(0, longest) | st.integers(longest // 3, longest)


@st.composite
def windows(draw: st.DrawFn) -> tuple[Calendar, int, int]:
    """A calendar and a range of up to 3 days that starts or ends at a moment of its zone."""
    cal = draw(calendars())
    moment, span = draw(moments(cal.timezone)), draw(spans(3 * DAY))
    start = moment if draw(st.booleans()) else moment - span
    if cal.kind == "rrule":  # walked from DTSTART: start it near the window
        cal = Calendar(
            cal.kind, cal.expression, cal.timezone, start - draw(st.integers(0, 9 * DAY))
        )
    return cal, start, start + span


@settings(max_examples=60, deadline=None)
@given(windows(), st.data())
def test_instants_ascend_split_anywhere_and_agree_backwards_and_forwards(
    window: tuple[Calendar, int, int], data: st.DataObject
) -> None:
    cal, a, c = window
    everything = times_between(cal, a, c, BIG)
    assert all(a < t <= c for t in everything)
    assert all(x < y for x, y in itertools.pairwise(everything))
    b = data.draw(st.integers(a, c), label="b")
    assert times_between(cal, a, b, BIG) + times_between(cal, b, c, BIG) == everything
    n = data.draw(st.integers(1, 30), label="n")
    assert times_before(cal, c, a, n) == everything[-n:]
    if everything:  # an instant at the very end of the range counts
        assert times_before(cal, everything[-1], a, n) == everything[-n:]
    assert next_times(cal, a, n) == times_between(cal, a, a + 30 * 366 * DAY, limit=n)
    assert next_times(cal, a, n)[: len(everything)] == everything[:n]


def _values(field: str, low: int, high: int) -> set[int]:
    found: set[int] = set()
    for part in field.split(","):
        span, _, step = part.partition("/")
        first, last = (
            (low, high) if span == "*" else (int(span.split("-")[0]), int(span.split("-")[-1]))
        )
        found.update(range(first, last + 1, int(step or 1)))
    return found


def _cron_matches(expression: str, wall: dt.datetime) -> bool:
    """Classic cron, written out for the expressions above (not croniter)."""
    minute, hour, dom, month, dow = {"@daily": "0 0 * * *"}.get(expression, expression).split()
    day_ok = wall.day in _values(dom, 1, 31)
    weekday_ok = wall.isoweekday() % 7 in {v % 7 for v in _values(dow, 0, 7)}
    days = (day_ok or weekday_ok) if dom != "*" and dow != "*" else (day_ok and weekday_ok)
    return (
        wall.minute in _values(minute, 0, 59)
        and wall.hour in _values(hour, 0, 23)
        and wall.month in _values(month, 1, 12)
        and days
    )


def _local(ms: int, zone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, ZoneInfo(zone)).replace(tzinfo=None)


def _cron_by_brute_force(expression: str, zone: str, after: int, until: int) -> list[int]:
    """Minute by minute in real time: a minute fires if a wall time that maps to it matches.

    The wall times that map to an instant: its own, unless it is a repeated hour's
    second pass (fold=1); and, at the end of a gap, every wall time the gap skipped.
    """
    fired = []
    t = after - after % MINUTE + MINUTE
    previous = _local(t - MINUTE, zone)
    while t <= until:
        wall = _local(t, zone)
        covered = [] if wall.fold else [wall]
        skipped = previous + dt.timedelta(minutes=1)
        while not wall.fold and skipped < wall:
            covered.append(skipped)
            skipped += dt.timedelta(minutes=1)
        if any(_cron_matches(expression, w) for w in covered):
            fired.append(t)
        previous, t = wall, t + MINUTE
    return fired


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CRONS), zones, st.data(), spans(DAY))
def test_cron_fires_exactly_when_brute_force_says(
    expression: str, zone: str, data: st.DataObject, span: int
) -> None:
    after = data.draw(moments(zone), label="after")
    cal = make_calendar("cron", expression, zone)
    fired = times_between(cal, after, after + span, BIG)
    assert fired == _cron_by_brute_force(expression, zone, after, after + span)
    for t in fired:  # each one matches in local time, unless a gap moved it
        moved = _local(t - 1, zone) + dt.timedelta(milliseconds=1) != _local(t, zone)
        assert moved or _cron_matches(expression, _local(t, zone))


DST_ZONES = [zone for zone in ZONES if _changes(zone)]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CRONS + INTERVALS), st.sampled_from(DST_ZONES), st.data())
def test_around_a_change_looking_back_agrees_with_looking_forward(
    expression: str, zone: str, data: st.DataObject
) -> None:
    kind = "interval" if expression in INTERVALS else "cron"
    cal = make_calendar(kind, expression, zone)
    change = data.draw(st.sampled_from(_changes(zone)), label="change")
    at = change + data.draw(st.integers(-2 * HOUR, 2 * HOUR), label="at")  # often a second pass
    n = data.draw(st.integers(1, 12), label="n")
    assert times_before(cal, at, at - 2 * DAY, n) == times_between(cal, at - 2 * DAY, at, BIG)[-n:]
    assert next_times(cal, at, n) == times_between(cal, at, at + 30 * 366 * DAY, limit=n)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([i for i in INTERVALS if parse_interval(i) % 86400]),
    zones,
    st.none() | st.integers(utc(2023, 1, 1), utc(2028, 1, 1)),
    st.data(),
    spans(2 * DAY),
)
def test_a_sub_day_interval_is_elapsed_time_from_its_anchor(
    interval: str, zone: str, anchor: int | None, data: st.DataObject, span: int
) -> None:
    cal = make_calendar("interval", interval, zone, anchor)
    after = data.draw(moments(zone), label="after")
    if anchor is None:
        anchor = int(dt.datetime(2000, 1, 1, tzinfo=ZoneInfo(zone)).timestamp() * 1000)
    period = parse_interval(interval) * 1000
    first = max(0, (after - anchor) // period + 1)  # nothing before the anchor
    last = (after + span - anchor) // period
    expected = [anchor + k * period for k in range(first, last + 1)]
    assert times_between(cal, after, after + span, BIG) == expected


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["1d", "2d", "1w"]),
    st.sampled_from(DST_ZONES),
    st.none() | st.integers(utc(2020, 1, 1), utc(2026, 1, 1)),
    st.data(),
    spans(40 * DAY),
)
def test_a_whole_day_interval_keeps_the_anchors_wall_time(
    interval: str, zone: str, anchor: int | None, data: st.DataObject, span: int
) -> None:
    cal = make_calendar("interval", interval, zone, anchor)
    after = data.draw(moments(zone), label="after")
    fired = times_between(cal, after, after + span, BIG)
    seconds = parse_interval(interval)
    if anchor is None:
        anchor = int(dt.datetime(2000, 1, 1, tzinfo=ZoneInfo(zone)).timestamp() * 1000)
    origin = _local(anchor, cal.timezone)
    for t in fired:
        wall = _local(t, cal.timezone)
        assert (wall.date() - origin.date()).days % (seconds // 86400) == 0
        assert not wall.fold  # the first of a repeated hour
        if wall.time() != origin.time():  # only a gap moves it, to the gap's end
            wanted = dt.datetime.combine(wall.date(), origin.time())
            assert _local(t - 1, cal.timezone) < wanted < wall


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**8))
def test_an_interval_reads_back_from_its_description(seconds: int) -> None:
    cal = make_calendar("interval", str(seconds))
    assert cal.expression == str(seconds)
    assert parse_interval(describe(cal).split()[1]) == seconds


@settings(max_examples=100, deadline=None)
@given(zones, st.data())
def test_local_times_read_back(zone: str, data: st.DataObject) -> None:
    t = data.draw(moments(zone), label="t")
    assert parse_time(local_iso(t, zone), zone) == t
    wall = dt.datetime.fromtimestamp(t // MINUTE * 60, ZoneInfo(zone))
    naive = wall.replace(tzinfo=None).isoformat()
    first_pass = wall.replace(fold=0)
    assert parse_time(naive, zone) == int(first_pass.timestamp()) * 1000


cron_like = st.lists(
    st.sampled_from(
        ["*", "*/5", "0", "7", "1-5", "mon", "jan", "L", "5#2", "15W", "?", "60", "-", "/"]
    )
    | st.text("0123456789*,-/#?LWHRmonjaSUN", max_size=6),
    min_size=0,
    max_size=7,
).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just("cron"), cron_like | st.text(max_size=20)),
        st.tuples(st.just("interval"), st.text("0123456789wdhms +-.", max_size=10) | st.text()),
        st.tuples(st.just("rrule"), st.text("FREQ=DAILY;BYHOUR,1234:\nDTSTART", max_size=30)),
    ),
    st.sampled_from(["UTC", BERLIN]),
)
def test_any_text_gives_a_calendar_or_one_line_value_error(
    kind_and_text: tuple[str, str], zone: str
) -> None:
    kind, text = kind_and_text
    try:
        cal = make_calendar(kind, text, zone, utc(2026, 1, 1))
    except ValueError as error:
        assert "\n" not in str(error) and str(error)
        return
    assert len(next_times(cal, utc(2026, 1, 1), 3)) <= 3
