"""Outcomes of submitted calls: set once, waited for alone or together, cancelled."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from persevere.worker.outcomes import Outcome, as_completed, finished, wait_all


def _later(seconds: float, outcome: Outcome[int], value: int) -> None:
    threading.Timer(seconds, outcome.set_result, (value,)).start()


def test_result_waits_for_the_value_or_raises_the_exception() -> None:
    ok, broken = Outcome[int](), Outcome[int]()
    _later(0.05, ok, 7)
    assert ok.result(10) == 7 and ok.done()
    broken.set_exception(KeyError("no"))
    with pytest.raises(KeyError):
        broken.result()
    assert finished(3).result() == 3


def test_result_times_out_and_a_later_result_still_arrives() -> None:
    outcome = Outcome[int]()
    with pytest.raises(TimeoutError):
        outcome.result(0.05)
    outcome.set_result(1)
    assert outcome.result(0) == 1


def test_an_outcome_is_set_once() -> None:
    outcome = Outcome[int]()
    outcome.set_result(1)
    with pytest.raises(concurrent.futures.InvalidStateError):
        outcome.set_result(2)
    assert outcome.result() == 1


def test_cancel_only_before_the_call_starts() -> None:
    waiting, started = Outcome[int](), Outcome[int]()
    assert started.set_running_or_notify_cancel()
    assert not started.cancel() and not started.cancelled()
    assert waiting.cancel() and waiting.cancel() and waiting.cancelled() and waiting.done()
    assert not waiting.set_running_or_notify_cancel()  # the call must not run
    with pytest.raises(concurrent.futures.CancelledError):
        waiting.result()


def test_wait_all_returns_when_the_last_one_ends_or_at_the_timeout() -> None:
    outcomes = [Outcome[int]() for _ in range(3)]
    outcomes[0].set_result(0)
    _later(0.05, outcomes[1], 1)
    _later(0.1, outcomes[2], 2)
    wait_all(outcomes, 10)
    assert all(o.done() for o in outcomes)
    stuck = Outcome[int]()
    started = time.monotonic()
    wait_all([stuck, outcomes[0]], 0.05)
    assert not stuck.done() and time.monotonic() - started < 5
    stuck.set_result(9)  # nobody waits any more: no callback left behind fails
    assert stuck.result() == 9


def test_as_completed_yields_in_the_order_they_end() -> None:
    slow, fast, done = Outcome[int](), Outcome[int](), finished(0)
    _later(0.15, slow, 2)
    _later(0.05, fast, 1)
    assert [o.result() for o in as_completed([slow, fast, done], 10)] == [0, 1, 2]


def test_as_completed_raises_timeout_error_for_what_has_not_ended() -> None:
    never = Outcome[int]()
    seen = []
    with pytest.raises(TimeoutError, match="1 of the calls"):
        for outcome in as_completed([finished(1), never], 0.05):
            seen.append(outcome.result())
    assert seen == [1]
    never.cancel()
