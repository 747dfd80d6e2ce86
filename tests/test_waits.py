"""Durable waits in this process: ``persevere.sleep``, ``pause_flow_run``, ``suspend_flow_run``,
their answers (resume with typed input, approve, reject), timeouts, housekeeping, and the CLI.

Time is a :class:`~persevere.testing.TestClock`: a sleep of an hour moves it an
hour and returns at once, and a pause's deadline passes when the test moves
it. A flow that pauses (its process waits) runs in a thread while the test
answers; the waiting call polls every 0.2 s of real time, and the ``polls``
fixture counts (or holds) those polls so a test knows one happened. Flows
live in tests/flows/pausing.py and append ``prepare``/``publish`` to the
file PAUSING_SIDE names, so a test counts what executed and what was
replayed. Real processes (kills, workers) are in test_waits_processes.py.
"""

from __future__ import annotations

import builtins
import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import persevere
from persevere import clock
from persevere.cli import cli
from persevere.cli.output import iso
from persevere.exceptions import InputError, NonDeterminismError, RunNotResumable
from persevere.journal import FlowRun, Journal, Op, close_all, new_id
from persevere.statemachine import StateType
from persevere.testing import TestClock
from persevere.worker import deploying, execute, reruns, waits
from persevere.worker.owners import this_process

from .conftest import FLOWS, error_line, invoke, ok, wait_for
from .flows import pausing

pytestmark = pytest.mark.timeout(30)

FLOW_FILE = FLOWS / "pausing.py"
START = "2026-03-28T12:00:00+00:00"
HOUR_MS = 3_600_000
NO_INPUT = object()


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what loading entrypoints (a resume) does to the process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(builtins, "print", builtins.print)
    for name in ("PAUSING_KEY", "PAUSING_FAIL", "PERSEVERE_SUSPEND_AFTER_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("pausing", "persevere_entrypoint")):
            del sys.modules[name]


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side.txt"
    monkeypatch.setenv("PAUSING_SIDE", str(path))
    return path


@pytest.fixture
def tclock(db: Path) -> Iterator[TestClock]:
    """A test clock in place of the system clock, for the engine and the journal."""
    test_clock = TestClock(START)
    previous = clock.use(test_clock)
    yield test_clock
    close_all()  # by the clock its leases were renewed by
    clock.use(previous)


class Polls:
    """Stands in for the ``time`` module of ``waits``: counts the polls of a waiting
    pause, and holds them (the process alive, but not looking) while ``held``."""

    def __init__(self) -> None:
        self.count = 0
        self.released = threading.Event()
        self.released.set()
        self.interrupt = False

    def sleep(self, seconds: float) -> None:
        self.count += 1
        self.released.wait(10)
        if self.interrupt:  # the waiting process is stopped (Ctrl-C) while it waits
            self.interrupt = False
            raise KeyboardInterrupt
        time.sleep(seconds)

    def two_more(self) -> None:
        """Wait until a poll began and ended after now (it saw what the test did)."""
        target = self.count + 2
        wait_for(lambda: self.count >= target, timeout=5)


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> Polls:
    counter = Polls()
    monkeypatch.setattr(waits, "time", counter)
    return counter


def executed(side: Path) -> Counter[str]:
    return Counter(side.read_text().splitlines() if side.exists() else [])


class InThread:
    """A call in a thread, so that a pause in it can wait while the test answers."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._call, args=(call,), daemon=True)
        self.thread.start()

    def _call(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 10) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.value


def in_thread(flow: Any, **params: Any) -> InThread:
    """Call a flow in a thread; ``result()`` is its final State."""
    return InThread(lambda: flow(return_state=True, **params))


def paused_at(journal: Journal, key: str, flow_name: str | None = None) -> FlowRun:
    """Wait for the newest run (of ``flow_name``) to be paused at the pause ``key``."""

    def find() -> FlowRun | None:
        found = journal.list_flow_runs(StateType.PAUSED, flow_name, 1)
        if not found:
            return None
        pause = journal.pauses.open_pause(found[0].id)
        return found[0] if pause is not None and pause.task_key == key else None

    run = wait_for(find, timeout=10)
    assert isinstance(run, FlowRun)
    return run


def tasks_of(journal: Journal, run_id: str) -> list[tuple[str, str, str]]:
    """(task key, kind, state name) of each task run, in call order."""
    return [(t.task_key, t.kind, t.state_name) for t in journal.task_runs(run_id)]


def state_after(journal: Journal, run_id: str) -> tuple[str, StateType]:
    run = journal.get_flow_run(run_id)
    return run.state_name, run.state_type


def result_of(journal: Journal, run_id: str) -> Any:
    run = journal.get_flow_run(run_id)
    assert run.state_name == "Completed", (run.state_name, run.state_message)
    return journal.load_result(run.result_id) if run.result_id else None


def suspend(journal: Journal, flow: Any, **params: Any) -> FlowRun:
    """Call a flow that suspends itself; the run as the journal has it then."""
    state = flow(return_state=True, **params)
    assert (state.type, state.name) == (StateType.PAUSED, "Suspended"), state
    assert isinstance(state.data, persevere.RunSuspended)
    run = journal.get_flow_run(state.run_id)
    assert run.lease_token is None  # its process let go
    return run


def claim_and_execute(journal: Journal, worker: str = "w1") -> FlowRun:
    """Play a worker: claim the next due run and execute it here; the run after."""
    run = journal.workers.claim(worker, [], this_process(), new_id())
    assert run is not None, "no run to claim"
    flow = pausing.sleepy
    _, ended = execute(journal, flow, run, deploying.run_parameters(journal, flow, run))
    return ended


# -- persevere.sleep ---------------------------------------------------------------------


def test_a_sleep_journals_its_wake_time_and_completes(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    start = tclock.now_ms()
    state = pausing.sleepy(seconds=3600, return_state=True)
    assert state.type is StateType.COMPLETED and state.data == 3
    assert tclock.now_ms() - start == HOUR_MS  # slept by the test clock, not for real
    assert tasks_of(journal, state.run_id) == [
        ("prepare", "task", "Completed"),
        ("sleep", "sleep", "Completed"),
        ("publish", "task", "Completed"),
    ]
    sleep = journal.task_runs(state.run_id)[1]
    assert sleep.next_attempt_ms == start + HOUR_MS
    assert sleep.state_message == "slept until 2026-03-28T13:00:00+00:00"


def test_a_completed_sleep_is_replayed_not_slept_again(
    journal: Journal, tclock: TestClock, side: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail = tmp_path / "fail"
    fail.touch()
    monkeypatch.setenv("PAUSING_FAIL", str(fail))
    start = tclock.now_ms()
    state = pausing.sleep_then_check(seconds=3600, return_state=True)
    assert state.type is StateType.FAILED  # after the sleep
    assert tclock.now_ms() == start + HOUR_MS
    fail.unlink()

    resumed, _ = reruns.resume(journal, state.run_id)
    assert resumed.type is StateType.COMPLETED and resumed.data == 3
    assert tclock.now_ms() == start + HOUR_MS  # the clock did not move: no second sleep
    assert executed(side) == {"prepare": 1, "publish": 1}
    sleep = journal.task_runs(state.run_id)[1]
    assert (sleep.kind, sleep.state_name, sleep.attempt) == ("sleep", "Completed", 1)


class KilledInSleep(TestClock):
    """A test clock whose first wait is cut short after ``seconds``: the process
    "dies" there (KeyboardInterrupt), leaving the sleep's task run unfinished."""

    def __init__(self, seconds: float) -> None:
        super().__init__(START)
        self.cut: float | None = seconds

    def sleep(self, seconds: float) -> None:
        if self.cut is not None:
            self.advance(self.cut)
            self.cut = None
            raise KeyboardInterrupt
        super().sleep(seconds)


@pytest.mark.parametrize(
    ("down_seconds", "then_sleeps_ms"),
    [(0, 2_600_000), (1_000, 1_600_000), (2_600, 0), (9_000, 0)],
    ids=["resumed-at-once", "resumed-later", "resumed-at-wake", "resumed-past-wake"],
)
def test_a_sleep_cut_short_sleeps_only_the_rest_after_a_resume(
    db: Path, journal: Journal, side: Path, down_seconds: float, then_sleeps_ms: int
) -> None:
    killer = KilledInSleep(1_000)  # 1000 s of the hour slept, then the "kill"
    previous = clock.use(killer)
    try:
        start = killer.now_ms()
        with pytest.raises(persevere.RunInterrupted) as interrupted:
            pausing.sleepy(seconds=3600)
        run_id = interrupted.value.run_id
        sleep = journal.task_runs(run_id)[1]
        assert (sleep.kind, sleep.state_name) == ("sleep", "Running")  # unfinished
        assert sleep.next_attempt_ms == start + HOUR_MS  # the wake-up time, journaled

        killer.advance(down_seconds)  # the run stays down a while
        before = killer.now_ms()
        state, _ = reruns.resume(journal, run_id)
        assert state.type is StateType.COMPLETED and state.data == 3
        assert killer.now_ms() - before == then_sleeps_ms  # only what was left, if anything
        assert killer.now_ms() == max(start + HOUR_MS, before)
    finally:
        clock.use(previous)
    assert executed(side) == {"prepare": 1, "publish": 1}
    assert journal.task_runs(run_id)[1].state_name == "Completed"


def test_a_sleep_inside_a_task_is_a_plain_sleep(journal: Journal, tclock: TestClock) -> None:
    start = tclock.now_ms()
    state = pausing.task_sleeps(seconds=3600, return_state=True)
    assert state.data == "slept"
    assert tclock.now_ms() - start == HOUR_MS  # it still waits, by the same clock
    assert tasks_of(journal, state.run_id) == [("sleeps_inside", "task", "Completed")]


def test_a_pause_inside_a_task_is_refused(journal: Journal, tclock: TestClock) -> None:
    state = pausing.task_pauses(return_state=True)
    assert state.type is StateType.FAILED
    assert "pause_flow_run() pauses a flow run: call it in a flow's body" in state.message
    assert tasks_of(journal, state.run_id) == [("pauses_inside", "task", "Failed")]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: persevere.sleep(-1), "sleep of -1 s"),
        (lambda: persevere.pause_flow_run(on_timeout="explode"), "give 'fail' or 'cancel'"),
        (lambda: persevere.suspend_flow_run(timeout=0), "timeout=0"),
    ],
    ids=["negative-sleep", "bad-on-timeout", "zero-timeout"],
)
def test_bad_arguments_fail_the_run_with_the_reason(
    journal: Journal, tclock: TestClock, call: Any, message: str
) -> None:
    @persevere.flow
    def waits_badly() -> None:
        call()

    state = waits_badly(return_state=True)
    assert state.type is StateType.FAILED
    assert message in state.message
    assert journal.task_runs(state.run_id) == []  # nothing journaled for the call


def test_a_pause_outside_a_flow_is_refused(db: Path) -> None:
    with pytest.raises(RuntimeError, match="call it in a flow's body"):
        persevere.pause_flow_run()


def test_suspend_in_a_subflow_is_refused_with_a_clear_error(
    journal: Journal, tclock: TestClock
) -> None:
    state = pausing.parent_of_suspender(return_state=True)
    assert state.type is StateType.FAILED
    assert "suspend_flow_run() lets the whole process go" in state.message
    assert "in a subflow, use pause_flow_run()" in state.message
    [child] = [r for r in journal.list_flow_runs() if r.parent_flow_run_id == state.run_id]
    assert child.state_name == "Failed"  # nothing left Suspended under a running parent


# -- pauses: typed input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "given", "expected"),
    [
        ("dataclass", {"approved": True, "comment": "ok"},
         ("Approval", {"approved": True, "comment": "ok"})),
        ("model", {"item": "pen", "quantity": 2}, ("Order", {"item": "pen", "quantity": 2})),
        ("bool", False, ("bool", False)),
        ("none", NO_INPUT, ("NoneType", None)),
    ],
    ids=["dataclass", "pydantic-model", "bool", "no-input"],
)  # fmt: skip
def test_a_resumed_pause_returns_the_input_as_its_type(
    journal: Journal, tclock: TestClock, side: Path, kind: str, given: Any, expected: Any
) -> None:
    call = in_thread(pausing.typed_gate, kind=kind)
    run = paused_at(journal, "pause")
    assert run.state_name == "Paused" and run.lease_token is not None  # its process waits
    if given is NO_INPUT:
        answered = persevere.resume_flow_run(run.id)
    else:
        answered = persevere.resume_flow_run(run.id, given)
    assert answered.state_name == "Running"  # back to the process that waits for it
    state = call.result()
    assert state.data == {"type": expected[0], "value": expected[1], "y": 2}
    assert tasks_of(journal, run.id) == [
        ("prepare", "task", "Completed"),
        ("pause", "pause", "Completed"),
    ]
    messages = [t.message for t in journal.history(run.id)]
    assert any(m.startswith("resumed by ") for m in messages), messages
    assert executed(side) == {"prepare": 1}


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"item": "pen", "quantity": 0}, "field 'quantity': 0 is less than the minimum of 1"),
        ({"item": "pen", "quantity": "two"}, "field 'quantity': 'two' is not of type 'integer'"),
        ({"quantity": 2}, "'item' is a required property"),
        ([1, 2], "the input: [1, 2] is not of type 'object'"),
    ],
    ids=["below-minimum", "wrong-type", "missing-field", "not-an-object"],
)
def test_a_bad_input_is_refused_naming_the_field_and_the_run_stays_paused(
    journal: Journal, tclock: TestClock, bad: Any, named: str
) -> None:
    call = in_thread(pausing.typed_gate, kind="model")
    run = paused_at(journal, "pause")
    with pytest.raises(InputError, match="the run stays Paused") as refused:
        persevere.resume_flow_run(run.id, bad)
    assert named in str(refused.value)
    still = journal.get_flow_run(run.id)
    assert (still.state_name, still.version) == ("Paused", run.version)
    assert journal.pauses.open_pause(run.id) is not None  # the pause call still waits

    persevere.resume_flow_run(run.id, {"item": "ink", "quantity": 3})
    assert call.result().data["value"] == {"item": "ink", "quantity": 3}


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"start": "someday"}, "field 'start': 'someday' is not a 'date'"),
        ({"start": "2026-02-30"}, "field 'start': '2026-02-30' is not a 'date'"),
        ({"start": "2026-04-01", "at": "9 o'clock"}, "field 'at': "),
        ({"start": "2026-04-01", "ticket": "T-1"}, "field 'ticket': "),
    ],
    ids=["date", "impossible-date", "date-time", "uuid"],
)
def test_a_string_in_a_bad_format_is_refused_before_the_flow_sees_it(
    journal: Journal, tclock: TestClock, bad: Any, named: str
) -> None:
    """JSON Schema does not check ``format`` unless asked: a date the pause call's
    type would refuse must be refused by the resume, not fail the run later."""
    call = in_thread(pausing.typed_gate, kind="window")
    run = paused_at(journal, "pause")
    with pytest.raises(InputError, match="the run stays Paused") as refused:
        persevere.resume_flow_run(run.id, bad)
    assert named in str(refused.value)
    assert journal.get_flow_run(run.id).state_name == "Paused"

    good = {"start": "2026-04-01", "at": "2026-04-01T09:00:00Z", "ticket": str(uuid.UUID(int=7))}
    persevere.resume_flow_run(run.id, good)
    state = call.result()
    assert state.type is StateType.COMPLETED, state.message
    assert state.data["value"] == {**good, "at": "2026-04-01T09:00:00Z"}


# -- approve and reject -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "yes", "text", "expected"),
    [
        ("bool", True, None, ("bool", True)),
        ("bool", False, "no", ("bool", False)),
        ("dataclass", True, "lgtm", ("Approval", {"approved": True, "comment": "lgtm"})),
        ("dataclass", False, "too big", ("Approval", {"approved": False, "comment": "too big"})),
        ("decision", True, None, ("Decision", {"approved": True, "reason": None})),
        ("decision", False, "later", ("Decision", {"approved": False, "reason": "later"})),
        ("none", True, "fine", ("NoneType", None)),
    ],
    ids=[
        "bool-yes", "bool-no", "dataclass-yes-comment", "dataclass-no-comment",
        "model-yes", "model-no-reason", "no-input-yes",
    ],
)  # fmt: skip
def test_approve_and_reject_answer_each_input_shape(
    journal: Journal, tclock: TestClock, kind: str, yes: bool, text: str | None, expected: Any
) -> None:
    call = in_thread(pausing.typed_gate, kind=kind)
    run = paused_at(journal, "pause")
    if yes:
        persevere.approve_flow_run(run.id, text)
    else:
        persevere.reject_flow_run(run.id, text)
    assert call.result().data == {"type": expected[0], "value": expected[1], "y": 2}


def test_a_rejected_pause_without_input_raises_pause_rejected_which_the_flow_may_catch(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    call = in_thread(pausing.rejectable)
    run = paused_at(journal, "check")
    persevere.reject_flow_run(run.id, "not today")
    state = call.result()
    assert state.type is StateType.COMPLETED
    assert state.data == "rejected: not today"
    assert tasks_of(journal, run.id)[1] == ("check", "pause", "Failed")
    assert executed(side) == {"prepare": 1}  # publish was not reached


def test_a_rejection_the_flow_does_not_catch_fails_the_run(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    call = in_thread(pausing.gate)
    run = paused_at(journal, "gate")
    persevere.reject_flow_run(run.id, "wrong numbers")
    state = call.result()
    assert state.type is StateType.FAILED
    assert isinstance(state.data, persevere.PauseRejected)
    assert f"pause 'gate' of run {run.id} was rejected" in state.message
    assert state.message.endswith(": wrong numbers")
    assert state.data.reason == "wrong numbers" and state.data.by == this_process().label()
    assert executed(side) == {"prepare": 1}


def test_a_rejection_without_a_reason_says_who(journal: Journal, tclock: TestClock) -> None:
    call = in_thread(pausing.gate)
    run = paused_at(journal, "gate")
    persevere.reject_flow_run(run.id)
    state = call.result()
    assert state.data.reason == ""
    assert state.message.endswith(f"was rejected by {this_process().label()}")


def test_approve_is_refused_for_an_input_of_its_own_shape(
    journal: Journal, tclock: TestClock
) -> None:
    call = in_thread(pausing.typed_gate, kind="model")
    run = paused_at(journal, "pause")
    for answer in (persevere.approve_flow_run, persevere.reject_flow_run):
        with pytest.raises(InputError, match="waits for an input of its own shape"):
            answer(run.id)
        assert journal.get_flow_run(run.id).version == run.version
    persevere.resume_flow_run(run.id, {"item": "pen", "quantity": 1})
    assert call.result().type is StateType.COMPLETED


def test_input_for_a_pause_waiting_for_none_and_none_for_one_waiting_are_refused(
    journal: Journal, tclock: TestClock
) -> None:
    gate = in_thread(pausing.gate)
    run = paused_at(journal, "gate")
    with pytest.raises(InputError, match="its pause waits for no input"):
        persevere.resume_flow_run(run.id, {"approved": True})
    assert journal.get_flow_run(run.id).version == run.version
    persevere.resume_flow_run(run.id)
    assert gate.result().type is StateType.COMPLETED

    typed = in_thread(pausing.typed_gate, kind="dataclass")
    run = paused_at(journal, "pause", "typed_gate")
    with pytest.raises(InputError, match=r"waits for input \(\{approved: boolean, comment"):
        persevere.resume_flow_run(run.id)
    persevere.approve_flow_run(run.id)
    assert typed.result().type is StateType.COMPLETED


def test_answers_to_a_run_that_is_not_paused_are_refused(
    journal: Journal, tclock: TestClock
) -> None:
    done = pausing.sleepy(seconds=1, return_state=True)
    for answer in (
        lambda: persevere.resume_flow_run(done.run_id),
        lambda: persevere.approve_flow_run(done.run_id),
        lambda: persevere.reject_flow_run(done.run_id),
    ):
        with pytest.raises(RunNotResumable, match="is Completed, not Paused: nothing to answer"):
            answer()


# -- two pauses, replay ---------------------------------------------------------------


def test_a_flow_that_pauses_twice_with_two_keys(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    call = in_thread(pausing.two_gates)
    run = paused_at(journal, "first")
    persevere.resume_flow_run(run.id)
    again = paused_at(journal, "second")
    assert again.id == run.id
    assert again.state_message == "paused at 'second' until 2026-03-28T13:00:00+00:00"
    persevere.approve_flow_run(run.id)
    assert call.result().data == 4
    assert tasks_of(journal, run.id) == [
        ("prepare", "task", "Completed"),
        ("first", "pause", "Completed"),
        ("publish", "task", "Completed"),
        ("second", "pause", "Completed"),
        ("publish", "task", "Completed"),
    ]
    assert executed(side) == {"prepare": 1, "publish": 2}


def test_a_changed_pause_key_at_a_recorded_position_is_non_determinism(
    journal: Journal, tclock: TestClock, side: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = suspend(journal, pausing.keyed)
    assert journal.pauses.open_pause(run.id).task_key == "first"  # type: ignore[union-attr]
    persevere.resume_flow_run(run.id)
    monkeypatch.setenv("PAUSING_KEY", "second")  # the code now pauses elsewhere
    state, _ = reruns.resume(journal, run.id)
    assert state.type is StateType.FAILED
    assert isinstance(state.data, NonDeterminismError)
    assert "call #1 was task 'pause first' when recorded" in state.message
    assert "the flow now calls 'pause second' there" in state.message
    assert executed(side) == {"prepare": 1}


@pytest.mark.parametrize(
    ("down_seconds", "deadline_after_resume"), [(30, 30), (90, 60)], ids=["kept", "renewed"]
)
def test_a_pause_interrupted_with_its_run_pauses_again_when_resumed(
    journal: Journal,
    tclock: TestClock,
    side: Path,
    polls: Polls,
    down_seconds: float,
    deadline_after_resume: float,
) -> None:
    """With its first deadline if that has not passed, else a whole new timeout."""
    call = in_thread(pausing.gate, timeout=60)
    run = paused_at(journal, "gate")
    first_deadline = run.pause_deadline_ms
    polls.interrupt = True
    with pytest.raises(persevere.RunInterrupted):
        call.result()
    assert journal.get_flow_run(run.id).state_name == "Crashed"
    tclock.advance(down_seconds)

    again = InThread(lambda: reruns.resume(journal, run.id))
    paused = paused_at(journal, "gate")
    assert paused.pause_deadline_ms == tclock.now_ms() + deadline_after_resume * 1000
    if deadline_after_resume == 30:
        assert paused.pause_deadline_ms == first_deadline
    persevere.approve_flow_run(run.id)
    again.result()
    assert result_of(journal, run.id) == 3
    assert executed(side) == {"prepare": 1, "publish": 1}


def test_a_rejection_is_the_runs_answer_and_a_resume_does_not_ask_again(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    call = in_thread(pausing.gate)
    run = paused_at(journal, "gate")
    persevere.reject_flow_run(run.id, "no")
    assert call.result().type is StateType.FAILED

    state, _ = reruns.resume(journal, run.id)  # replays the rejection: no new pause
    assert state.type is StateType.FAILED and isinstance(state.data, persevere.PauseRejected)
    assert tasks_of(journal, run.id) == [
        ("prepare", "task", "Completed"),
        ("gate", "pause", "Failed"),
    ]
    assert executed(side) == {"prepare": 1}


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_timeout", "state_type", "name"),
    [("fail", StateType.FAILED, "TimedOut"), ("cancel", StateType.CANCELLED, "Cancelled")],
)
def test_a_pause_that_times_out_fails_or_cancels_the_run(
    journal: Journal,
    tclock: TestClock,
    side: Path,
    polls: Polls,
    on_timeout: str,
    state_type: StateType,
    name: str,
) -> None:
    call = in_thread(pausing.gate, timeout=60, on_timeout=on_timeout)
    run = paused_at(journal, "gate")
    assert run.pause_deadline_ms == tclock.now_ms() + 60_000
    tclock.advance(59)
    polls.two_more()
    assert journal.get_flow_run(run.id).state_name == "Paused"  # not yet
    tclock.advance(2)
    state = call.result()
    assert (state.type, state.name, state.message) == (state_type, name, "the pause timed out")
    assert tasks_of(journal, run.id)[1] == ("gate", "pause", "TimedOut")
    assert executed(side) == {"prepare": 1}
    with pytest.raises(RunNotResumable, match="not Paused"):
        persevere.approve_flow_run(run.id)


# -- housekeeping (what a scheduler does each round) ---------------------------------


@pytest.mark.parametrize(("on_timeout", "name"), [("fail", "TimedOut"), ("cancel", "Cancelled")])
def test_housekeeping_ends_a_suspended_pause_past_its_deadline(
    journal: Journal, tclock: TestClock, on_timeout: str, name: str
) -> None:
    run = suspend(journal, pausing.approval, timeout=60, on_timeout=on_timeout)
    tclock.advance(59)
    assert waits.housekeeping(journal) == []
    tclock.advance(2)
    assert waits.housekeeping(journal) == [f"run {run.id} (approval) {name}: its pause timed out"]
    ended = journal.get_flow_run(run.id)
    assert (ended.state_name, ended.state_message) == (name, "its pause timed out")
    assert tasks_of(journal, run.id)[1] == ("review", "pause", name)
    assert waits.housekeeping(journal) == []  # once


def test_an_answer_after_the_deadline_is_refused_and_ends_the_run(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    run = suspend(journal, pausing.approval, timeout=60)
    tclock.advance(61)  # before any housekeeping came round
    with pytest.raises(RunNotResumable, match="pause timed out; the run is TimedOut"):
        persevere.approve_flow_run(run.id)
    assert state_after(journal, run.id) == ("TimedOut", StateType.FAILED)
    assert executed(side) == {"prepare": 1}


def test_an_answer_while_the_pause_is_timing_out_says_so(
    journal: Journal, tclock: TestClock
) -> None:
    run = suspend(journal, pausing.approval, timeout=60)
    pause = journal.pauses.open_pause(run.id)
    assert pause is not None
    # The waiting process has ended the pause call (TimedOut), not yet the run.
    journal.flush(
        [
            Op(
                "UPDATE task_runs SET state_type = 'FAILED', state_name = 'TimedOut' WHERE id = ?",
                (pause.id,),
            )
        ]
    )
    with pytest.raises(RunNotResumable, match="pause timed out just now; it is ending"):
        persevere.approve_flow_run(run.id)


def test_housekeeping_wakes_a_suspended_sleep_whose_time_came(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    deployment = journal.deployments.put(
        flow_name="sleepy",
        name="test",
        entrypoint=f"{FLOW_FILE}:sleepy",
        parameters={},
        signature={},
        work_queue="default",
    )
    run = journal.deployments.schedule_run(deployment, json.dumps({"seconds": 3600}))
    start = tclock.now_ms()
    slept = claim_and_execute(journal)  # an hour > PERSEVERE_SUSPEND_AFTER_SECONDS (60)
    assert (slept.state_name, slept.lease_token) == ("Suspended", None)  # the slot is free
    assert slept.scheduled_ms == start + HOUR_MS
    assert tclock.now_ms() == start  # it did not sleep in its process
    assert tasks_of(journal, run.id)[1] == ("sleep", "sleep", "Scheduled")
    with pytest.raises(RunNotResumable, match="suspended in a sleep"):
        persevere.resume_flow_run(run.id)
    text = ok("runs", "show", run.id).stdout
    assert "  wakes:      " in text and "resume:" not in text
    shown = json.loads(ok("runs", "show", run.id, "--json").stdout)
    assert shown["pause"]["wakes"] == iso(start + HOUR_MS)

    tclock.advance(3599)
    assert waits.housekeeping(journal) == []
    assert journal.workers.claim("w2", [], this_process(), new_id()) is None  # not due
    tclock.advance(1)
    assert waits.housekeeping(journal) == [f"run {run.id} (sleepy) woken: its sleep is over"]
    woken = journal.get_flow_run(run.id)
    assert (woken.state_name, woken.worker_name) == ("Scheduled", None)

    done = claim_and_execute(journal, "w2")
    assert done.state_name == "Completed" and journal.load_result(done.result_id) == 3
    assert tclock.now_ms() == start + HOUR_MS  # no second sleep
    assert executed(side) == {"prepare": 1, "publish": 1}
    assert tasks_of(journal, run.id)[1] == ("sleep", "sleep", "Completed")


def test_housekeeping_leaves_alone_a_paused_run_whose_process_waits(
    journal: Journal, tclock: TestClock, polls: Polls
) -> None:
    call = in_thread(pausing.gate, timeout=60)
    run = paused_at(journal, "gate")
    polls.released.clear()  # the process is alive, but does not look for a while
    tclock.advance(120)
    assert waits.housekeeping(journal) == []
    assert journal.get_flow_run(run.id).state_name == "Paused"
    polls.released.set()
    state = call.result()
    # It was the waiting process that ended its own run.
    assert (state.name, state.message) == ("TimedOut", "the pause timed out")


# -- cancel ------------------------------------------------------------------------------


def test_cancel_of_a_paused_run_ends_it_and_the_waiting_call_returns(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    call = in_thread(pausing.gate)
    run = paused_at(journal, "gate")
    result = ok("runs", "cancel", run.id)
    assert result.stderr.strip().endswith(f"run {run.id} Cancelled")
    state = call.result()
    assert (state.type, state.name) == (StateType.CANCELLED, "Cancelled")
    assert tasks_of(journal, run.id)[1] == ("gate", "pause", "Cancelled")
    assert executed(side) == {"prepare": 1}
    # The process let go of the run's lease: it renews it no more (nor finds it "lost").
    tclock.advance(journal.settings.lease_seconds)
    journal.writer.flush_in_background()
    assert not journal.writer.lost(run.id)


def test_cancel_of_a_paused_run_runs_its_on_cancellation_hooks_as_a_timeout_does(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    """The waiting process ends the run either way; its hooks run either way."""
    timed_out = in_thread(pausing.hooked_gate, timeout=60, on_timeout="cancel")
    paused_at(journal, "gate")
    tclock.advance(61)
    assert timed_out.result().name == "Cancelled"
    assert executed(side) == {"prepare": 1, "on_cancellation": 1}

    cancelled = in_thread(pausing.hooked_gate, x=2)
    run = paused_at(journal, "gate")
    ok("runs", "cancel", run.id)
    assert cancelled.result().name == "Cancelled"
    assert executed(side) == {"prepare": 2, "on_cancellation": 2}
    journal.flush()
    assert journal.hooks.owed(run.id) == {}  # run, and marked done


# -- the command line ---------------------------------------------------------------------


def test_persevere_run_exits_3_when_the_run_suspends_itself(
    journal: Journal, tclock: TestClock
) -> None:
    result = invoke("run", f"{FLOW_FILE}:approval")
    assert result.exit_code == 3, result.output
    assert " Suspended: paused at 'review', waiting for input" in result.stderr
    assert "it goes on after `persevere runs resume " in result.stderr
    [run] = journal.list_flow_runs()
    assert run.state_name == "Suspended"


def test_cli_resume_with_input_goes_on_here(
    journal: Journal, tclock: TestClock, side: Path
) -> None:
    run = suspend(journal, pausing.approval, x=5)
    result = ok("runs", "resume", run.id, "--input", '{"approved": true, "comment": "ok"}')
    assert f"run {run.id} resumed: executing it here" in result.stderr
    assert json.loads(result.stdout) == {"published": 11, "comment": "ok"}
    assert executed(side) == {"prepare": 1, "publish": 1}


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ('{"approved": "yes"}', "field 'approved': 'yes' is not of type 'boolean'"),
        ('{"comment": "ok"}', "the input: 'approved' is a required property"),
        ('{"approved": true, "comment": 3}', "field 'comment': 3 is not of type 'string'"),
    ],
)
def test_cli_resume_with_a_bad_input_is_one_line_and_the_run_stays_paused(
    journal: Journal, tclock: TestClock, side: Path, given: str, named: str
) -> None:
    run = suspend(journal, pausing.approval)
    line = error_line(invoke("runs", "resume", run.id, "--input", given))
    assert named in line and line.endswith("the run stays Paused")
    still = journal.get_flow_run(run.id)
    assert (still.state_name, still.version) == ("Suspended", run.version)
    assert executed(side) == {"prepare": 1}


def test_cli_resume_with_an_input_file_or_stdin(
    journal: Journal, tclock: TestClock, tmp_path: Path
) -> None:
    first = suspend(journal, pausing.approval, x=1)
    answer = tmp_path / "answer.json"
    answer.write_text('{"approved": true, "comment": "from a file"}')
    result = ok("runs", "resume", first.id, "--input-file", str(answer))
    assert json.loads(result.stdout) == {"published": 3, "comment": "from a file"}

    second = suspend(journal, pausing.approval, x=2)
    piped = CliRunner().invoke(
        cli,
        ["runs", "resume", second.id, "--input-file", "-"],
        input='{"approved": false, "comment": "from stdin"}',
        catch_exceptions=False,
    )
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout) == {"published": None, "comment": "from stdin"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", "{}", "--input-file", "-"], "not both"),
        (["--input", "{approved: true}"], "the input is not JSON (Expecting property name"),
        (["--input", ""], "the input is not JSON (Expecting value at line 1 column 1)"),
    ],
    ids=["both", "bad-json", "empty"],
)
def test_cli_resume_input_errors_are_one_line(
    journal: Journal, tclock: TestClock, args: list[str], expected: str
) -> None:
    run = suspend(journal, pausing.approval)
    assert expected in error_line(invoke("runs", "resume", run.id, *args))
    assert journal.get_flow_run(run.id).version == run.version


def test_cli_resume_input_for_a_run_that_is_not_paused(journal: Journal, tclock: TestClock) -> None:
    done = pausing.sleepy(seconds=1, return_state=True)
    line = error_line(invoke("runs", "resume", done.run_id, "--input", "true"))
    assert "is Completed, not Paused: --input is for paused runs" in line


@pytest.mark.parametrize(
    ("verb", "extra", "expected"),
    [("approve", [], 3), ("reject", ["--reason", "no"], "stopped")],
)
def test_cli_approve_and_reject_a_yes_no_pause(
    journal: Journal, tclock: TestClock, verb: str, extra: list[str], expected: object
) -> None:
    run = suspend(journal, pausing.yes_no)
    result = ok("runs", verb, run.id, *extra)
    assert json.loads(result.stdout) == expected
    assert result_of(journal, run.id) == expected


def test_cli_reject_with_a_reason_reaches_the_flow(journal: Journal, tclock: TestClock) -> None:
    run = suspend(journal, pausing.approval)
    result = ok("runs", "reject", run.id, "--reason", "numbers are off")
    assert json.loads(result.stdout) == {"published": None, "comment": "numbers are off"}


def test_cli_approve_of_a_process_that_waits_says_who_goes_on(
    journal: Journal, tclock: TestClock
) -> None:
    call = in_thread(pausing.gate)
    run = paused_at(journal, "gate")
    result = ok("runs", "approve", run.id)
    assert result.stdout == ""
    assert result.stderr.startswith(f"run {run.id} resumed: ")
    assert result.stderr.strip().endswith("goes on with it")
    assert call.result().type is StateType.COMPLETED


def test_cli_show_says_how_a_paused_run_goes_on(journal: Journal, tclock: TestClock) -> None:
    run = suspend(journal, pausing.approval, timeout=600, on_timeout="cancel")
    text = ok("runs", "show", run.id).stdout
    assert "Suspended (PAUSED)" in text
    assert "  waits for:  {approved: boolean, comment: string?}\n" in text
    assert "  times out:  " in text and "(then cancelled)\n" in text
    assert f"  resume:     persevere runs resume {run.id} --input JSON\n" in text

    doc = json.loads(ok("runs", "show", run.id, "--json").stdout)
    assert doc["pause"] == {
        "input_schema": json.loads(run.pause_input or "null"),
        "times_out": iso(tclock.now_ms() + 600_000),
        "on_timeout": "cancel",
        "wakes": None,
    }
    assert doc["pause"]["input_schema"]["required"] == ["approved"]


def test_cli_show_of_a_pause_without_input_or_deadline(journal: Journal, tclock: TestClock) -> None:
    call = in_thread(pausing.typed_gate, kind="none", timeout=None)
    run = paused_at(journal, "pause")
    text = ok("runs", "show", run.id).stdout
    assert "waits for:" not in text and "times out:" not in text
    assert f"  resume:     persevere runs resume {run.id} or approve/reject\n" in text
    doc = json.loads(ok("runs", "show", run.id, "--json").stdout)
    assert doc["pause"] == {
        "input_schema": None,
        "times_out": None,
        "on_timeout": None,
        "wakes": None,
    }
    ok("runs", "approve", run.id)
    assert call.result().type is StateType.COMPLETED
    assert "pause" not in json.loads(ok("runs", "show", run.id, "--json").stdout)
