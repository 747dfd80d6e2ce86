"""Regression tests for bugs found in review 6 of schedules."""

from __future__ import annotations

import pytest

from persevere.statemachine.calendar import make_calendar

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=WEEKLY;INTERVAL=00;BYDAY=MO",
        "DTSTART:20260101T070000\nRRULE:INTERVAL=0;FREQ=HOURLY",
        "FREQ=DAILY;INTERVAL=-1",
    ],
)
def test_an_rrule_interval_below_one_is_refused(rule: str) -> None:
    # dateutil iterates INTERVAL=0 for ever: stored, such a schedule hung every
    # scheduler pass (and every worker's loop) on its next time.
    with pytest.raises(ValueError) as raised:
        make_calendar("rrule", rule, "UTC", 0)
    assert "INTERVAL=" in str(raised.value)
    assert "must be a whole number of at least 1" in str(raised.value)
    assert "\n" not in str(raised.value)
