"""Submitted calls on an executor: their own futures, contexts and cancellation."""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from typing import Any

import pytest

from persevere.worker.dispatch import Call, hand_over, submit_call

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


def _record(ran: list[str]) -> int:
    ran.append(where.get())
    where.set("changed by the call")
    return len(ran)


def _call(ran: list[str], fn: Any = _record) -> Call:
    return Call(concurrent.futures.Future(), "key", contextvars.copy_context(), fn, (ran,))


def test_a_call_runs_in_the_context_it_was_submitted_in() -> None:
    ran: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        token = where.set("submitter")
        call = _call(ran)
        where.reset(token)
        submit_call(executor, call)
        assert call.future.result(10) == 1
    assert ran == ["submitter"] and where.get() == "unset"


def test_a_call_that_raises_sets_its_future_to_the_exception() -> None:
    def broken(ran: list[str]) -> None:
        raise KeyError("no")

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        call = _call([], broken)
        submit_call(executor, call)
        with pytest.raises(KeyError):
            call.future.result(10)


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    ran: list[str] = []
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(release.wait, 10)  # the only thread is busy
        calls = [_call(ran) for _ in range(3)]
        for call in calls:
            submit_call(executor, call)
        assert calls[1].future.cancel()
        release.set()
    assert [call.future.cancelled() for call in calls] == [False, True, False]
    assert [call.future.result() for call in (calls[0], calls[2])] == [1, 2]


def test_shutting_the_executor_down_cancels_the_calls_not_started() -> None:
    ran: list[str] = []
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(release.wait, 10)
        calls = [_call(ran) for _ in range(3)]
        for call in calls:
            submit_call(executor, call)
        executor.shutdown(wait=False, cancel_futures=True)  # as a failing flow run does
        release.set()
    assert all(call.future.cancelled() for call in calls)
    assert ran == []


def test_a_handed_over_future_is_set_by_the_callback_not_when_the_call_returns() -> None:
    thens: dict[str, Any] = {}

    def finishing(key: str) -> str:
        thens["other"] = hand_over("another call", "nested", RuntimeError)
        thens[key] = hand_over(key, f"{key} is durable", lambda exc: f"{key} failed: {exc}")
        thens["again"] = hand_over(key, "twice", RuntimeError)  # handed over once only
        return "returned"

    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        calls = {
            key: Call(
                concurrent.futures.Future(), key, contextvars.copy_context(), finishing, (key,)
            )
            for key in ("ok", "lost")
        }
        for call in calls.values():
            submit_call(executor, call)
    assert thens["other"] is None and thens["again"] is None
    assert not any(call.future.done() for call in calls.values())
    thens["ok"](None)
    thens["lost"](OSError("disk full"))
    assert calls["ok"].future.result() == "ok is durable"
    assert calls["lost"].future.result() == "lost failed: disk full"
    assert hand_over("ok", "not in a call", RuntimeError) is None
