"""Submitted calls on an executor: drainers, their own futures, contexts and cancellation."""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from typing import Any

import pytest

from persevere.worker.dispatch import Call, CallQueue, hand_over
from persevere.worker.outcomes import Outcome

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


def _record(ran: list[str]) -> int:
    ran.append(where.get())
    where.set("changed by the call")
    return len(ran)


def _call(ran: list[str], fn: Any = _record) -> Call:
    return Call(Outcome(), "key", contextvars.copy_context(), fn, (ran,))


def test_a_call_runs_in_the_context_it_was_submitted_in() -> None:
    ran: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        token = where.set("submitter")
        call = _call(ran)
        where.reset(token)
        CallQueue(executor).put(call)
        assert call.future.result(10) == 1
    assert ran == ["submitter"] and where.get() == "unset"


def test_calls_sharing_a_snapshot_do_not_see_each_others_changes() -> None:
    ran: list[str] = []
    token = where.set("mapped")
    snapshot = contextvars.copy_context()
    where.reset(token)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        queue = CallQueue(executor)
        calls = [Call(Outcome(), str(i), snapshot, _record, (ran,)) for i in range(3)]
        for call in calls:
            queue.put(call)
        assert [call.future.result(10) for call in calls] == [1, 2, 3]
    assert ran == ["mapped"] * 3  # each ran in its own copy: none saw "changed by the call"


def test_a_call_that_raises_sets_its_future_to_the_exception() -> None:
    def broken(ran: list[str]) -> None:
        raise KeyError("no")

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        call = _call([], broken)
        CallQueue(executor).put(call)
        with pytest.raises(KeyError):
            call.future.result(10)


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    ran: list[str] = []
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(release.wait, 10)  # the only thread is busy
        queue = CallQueue(executor)
        calls = [_call(ran) for _ in range(3)]
        for call in calls:
            queue.put(call)
        assert calls[1].future.cancel()
        release.set()
    assert [call.future.cancelled() for call in calls] == [False, True, False]
    assert [call.future.result() for call in (calls[0], calls[2])] == [1, 2]


def test_shutting_the_executor_down_cancels_the_calls_not_started() -> None:
    ran: list[str] = []
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(release.wait, 10)
        queue = CallQueue(executor)
        calls = [_call(ran) for _ in range(3)]
        for call in calls:
            queue.put(call)
        queue.shutdown(wait=False, cancel_futures=True)  # as a failing flow run does
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
            key: Call(Outcome(), key, contextvars.copy_context(), finishing, (key,))
            for key in ("ok", "lost")
        }
        queue = CallQueue(executor)
        for call in calls.values():
            queue.put(call)
    assert thens["other"] is None and thens["again"] is None
    assert not any(call.future.done() for call in calls.values())
    thens["ok"](None)
    thens["lost"](OSError("disk full"))
    assert calls["ok"].future.result() == "ok is durable"
    assert calls["lost"].future.result() == "lost failed: disk full"
    assert hand_over("ok", "not in a call", RuntimeError) is None


def test_drainers_run_calls_in_order_on_every_thread_with_few_jobs() -> None:
    started: list[int] = []
    threads: set[str] = set()
    gate = threading.Barrier(4, timeout=10)

    def step(i: int) -> int:
        started.append(i)
        threads.add(threading.current_thread().name)
        if i < 4:
            gate.wait()  # the first four run at once, or this times out
        return i

    class Counting(concurrent.futures.ThreadPoolExecutor):
        jobs = 0

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            Counting.jobs += 1
            return super().submit(*args, **kwargs)

    with Counting(4) as executor:
        queue = CallQueue(executor)
        calls = [
            Call(Outcome(), str(i), contextvars.copy_context(), step, (i,)) for i in range(200)
        ]
        for call in calls:
            queue.put(call)
        assert [call.future.result(10) for call in calls] == list(range(200))
    assert sorted(started[:4]) == [0, 1, 2, 3] and started[4:] == list(range(4, 200))
    assert len(threads) == 4
    assert Counting.jobs < 50  # not one job per call


def test_a_call_queued_after_the_drainers_stopped_still_runs() -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        queue = CallQueue(executor)
        first, second = _call([]), _call([])
        queue.put(first)
        first.future.result(10)
        executor.submit(lambda: None).result(10)  # the drainer has returned by now
        queue.put(second)
        assert second.future.result(10) == 1


def test_calls_still_queued_at_shutdown_run_on_every_thread() -> None:
    together = threading.Barrier(4, timeout=10)
    busy = threading.Event()

    def meet(ran: list[str]) -> int:
        together.wait()  # breaks unless the four run at once
        return 1

    executor = concurrent.futures.ThreadPoolExecutor(4)
    for _ in range(4):
        executor.submit(busy.wait, 10)  # every thread is busy until after the shutdown
    queue = CallQueue(executor)
    calls = [_call([], meet) for _ in range(4)]
    for call in calls:
        queue.put(call)
    threading.Timer(0.2, busy.set).start()
    queue.shutdown(wait=True)  # as a flow run does when its function returns
    assert [call.future.result() for call in calls] == [1, 1, 1, 1]
    with pytest.raises(RuntimeError, match="after shutdown"):
        queue.put(_call([]))
