"""Concurrency limits in one process: the slot table's rules, and the code built on them.

A hypothesis state machine drives ``journal.limits`` directly, on a real
SQLite file, with several claimants against an in-memory model of who holds
slots and who waits in line (capacity, FIFO, dead holders, places kept
across retries). Then ``ConcurrencyLimit.draining``, ``concurrency()`` and
``rate_limit()`` in plain code, flows and tasks, tagged tasks, the holder
liveness rules, and the ``persevere concurrency-limit`` CLI as real processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from persevere import (
    ConcurrencyError,
    ConcurrencySlotTimeout,
    StateType,
    ThreadPoolTaskRunner,
    clock,
    concurrency,
    flow,
    get_run_context,
    rate_limit,
    task,
)
from persevere.journal import Journal
from persevere.journal.limits import Claimant, ConcurrencyLimit, SlotHolder
from persevere.settings import Settings
from persevere.statemachine import Owner
from persevere.worker.concurrency import holder_is_dead
from persevere.worker.owners import process_start, this_process

from .conftest import most_at_once, run_cli, wait_for

T = TypeVar("T")

# -- the slot table as a state machine -----------------------------------------

LIMITED = ("a", "b")  # names that may get a limit
NAMES = (*LIMITED, "free")  # "free" never has one
CLAIMANTS = ("c0", "c1", "c2", "c3")
STALE_MS = 1500  # a place in line not asked for again for this long lapses
EPSILON = 1e-6  # slack for float comparisons at the exact edge of a decaying limit
# What a request names: one or both limitable names, sometimes with "free"; or "free" alone.
SOME = st.lists(st.sampled_from(LIMITED), min_size=1, max_size=2, unique=True)
ASKED = st.one_of(SOME, SOME, SOME.map(lambda names: [*names, "free"]), st.just(["free"]))
GIVE_UP = st.sampled_from([False, False, False, True])  # a waiter leaves the line
LATER = st.sampled_from([0, 0, 1, 100, 250, 500, 1000])  # ms that pass before a step

_schema: bytes | None = None


def fresh_journal(folder: Path) -> Journal:
    """A journal on a new file in ``folder``; the migrated empty file is made once and copied."""
    global _schema
    path = folder / "journal.db"
    if _schema is None:
        Journal(path, Settings.from_env()).close()
        _schema = path.read_bytes()
    else:
        path.write_bytes(_schema)
    return Journal(path, Settings.from_env())


@dataclasses.dataclass
class Request:
    """A claimant's request that waits in line."""

    ticket: int
    names: list[str]
    occupy: int


class LimitsMachine(RuleBasedStateMachine):
    """``journal.limits`` on a real file against a model of held slots and the line."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="persevere-limits-"))
        try:
            self.journal = fresh_journal(self.folder)
        except BaseException:  # teardown will not run
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.now = 1_700_000_000_000
        self.dead: set[str] = set()
        self.limits: dict[str, tuple[int, float]] = {}  # name -> (slots, decay per second)
        self.decaying: dict[str, tuple[float, int]] = {}  # name -> (amount, since ms)
        self.held: dict[tuple[str, str], int] = {}  # (name, holder) -> occupy
        self.line: dict[tuple[str, int], str] = {}  # (name, ticket) -> holder
        self.seen: dict[int, int] = {}  # ticket -> when its claimant last asked
        self.last_ticket = 0
        self.waiting: dict[str, Request] = {}
        self.holding: dict[str, list[str]] = {}  # holder -> the names it asked for
        self.outcomes: set[str] = set()

    def teardown(self) -> None:
        try:
            assert self.journal.integrity_check() == "ok"
        finally:
            self.journal.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------

    def is_dead(self, held: SlotHolder, now_ms: int) -> bool:
        return held.holder in self.dead

    def claimant(self, who: str) -> Claimant:
        owner = Owner("limits-test-host", 1000 + CLAIMANTS.index(who), "boot:1")
        return Claimant(who, None, None, owner)

    def draining(self, name: str) -> float:
        amount, since = self.decaying[name]
        decay = self.limits[name][1]
        return max(0.0, amount - decay * max(0, self.now - since) / 1000) if amount else 0.0

    def in_use(self, name: str) -> float:
        held = sum(occupy for (n, _), occupy in self.held.items() if n == name)
        return held + self.draining(name)

    def free_dead(self, names: list[str]) -> set[tuple[str, str]]:
        """The model's sweep of ``names``: dead holders lose their slots of those names; a
        waiter found there that is dead, or has not asked for STALE_MS, loses its whole
        request (every name of its ticket)."""
        freed = {key for key in self.held if key[0] in names and key[1] in self.dead}
        for key in freed:
            del self.held[key]
        gone = {
            t
            for (n, t), who in self.line.items()
            if n in names and (who in self.dead or self.seen[t] < self.now - STALE_MS)
        }
        for key in [k for k in self.line if k[1] in gone]:
            del self.line[key]
        for ticket in gone:
            del self.seen[ticket]
        return freed

    def live(self, among: dict[str, Any]) -> list[str]:
        return sorted(who for who in among if who not in self.dead)

    def idle(self) -> list[str]:
        return [c for c in CLAIMANTS if c not in (*self.dead, *self.holding, *self.waiting)]

    # -- rules -----------------------------------------------------------------

    @initialize(
        a=st.tuples(st.integers(1, 3), st.sampled_from([0.0, 0.0, 2.0, 10.0])),
        b=st.none() | st.tuples(st.integers(1, 3), st.sampled_from([0.0, 5.0])),
    )
    def make_limits(self, a: tuple[int, float], b: tuple[int, float] | None) -> None:
        for name, spec in (("a", a), ("b", b)):
            if spec is not None:
                assert self.journal.limits.put(name, spec[0], spec[1], self.now) is True
                self.limits[name] = spec
                self.decaying[name] = (0.0, self.now)

    @precondition(lambda self: self.idle())
    @rule(data=st.data(), names=ASKED, occupy=st.sampled_from([1, 1, 1, 2]), ms=LATER)
    def ask(self, data: st.DataObject, names: list[str], occupy: int, ms: int) -> None:
        """``ms`` later, a claimant that neither holds nor waits asks for slots."""
        self.now += ms
        self.attempt(data.draw(st.sampled_from(self.idle())), names, occupy)

    @precondition(lambda self: self.live(self.waiting))
    @rule(data=st.data(), ms=LATER)
    def ask_again(self, data: st.DataObject, ms: int) -> None:
        """``ms`` later, the claimants in line ask again, in any order."""
        self.now += ms
        self.poll(data)

    def poll(self, data: st.DataObject) -> None:
        """Each claimant in line asks again, or (now and then) gives up its place."""
        for who in data.draw(st.permutations(self.live(self.waiting))):
            if who not in self.waiting:
                continue
            if data.draw(GIVE_UP):
                self.leave_line(who)
            else:
                self.attempt(who)

    def attempt(self, who: str, names: list[str] | None = None, occupy: int = 1) -> None:
        """``who`` asks: a new request, or (if it waits) its waiting one again."""
        assert who not in self.dead and who not in self.holding
        ticket = None
        request = self.waiting.get(who)
        if request is not None:  # asking again: the same request, under its ticket
            names, occupy, ticket = request.names, request.occupy, request.ticket
        assert names is not None
        limited = sorted(n for n in names if n in self.limits)
        freed = self.free_dead(limited)
        if ticket is not None and ticket not in self.seen:  # its place lapsed: to the back
            ticket = None
            self.outcomes.add("lapsed")
        ahead = sorted(
            {t for (n, t) in self.line if n in limited and (ticket is None or t < ticket)}
        )
        over = {n: self.in_use(n) + occupy - self.limits[n][0] for n in limited}

        attempt = self.journal.limits.try_acquire(
            names, self.claimant(who), occupy, request.ticket if request else None,
            self.is_dead, self.now, STALE_MS,
        )  # fmt: skip

        assert sorted(attempt.limits) == limited
        assert {(f.name, f.holder) for f in attempt.freed} == freed, "dead holders not freed"
        if attempt.acquired:
            assert not ahead, f"FIFO: {who} (ticket {ticket}) got {limited} while {ahead} wait"
            assert all(v <= EPSILON for v in over.values()), f"over a limit: {over}"
            assert attempt.ticket is None
            for name in limited:
                self.held[(name, who)] = occupy
            if request is not None:
                del self.waiting[who]
                for key in [k for k in self.line if k[1] == ticket]:
                    del self.line[key]
                self.seen.pop(ticket or 0, None)
            self.holding[who] = names
            self.outcomes.add("acquired after waiting" if request else "acquired")
        else:
            fits = all(v <= -EPSILON for v in over.values())
            assert ahead or not fits, f"{who} refused with room and nobody ahead: {attempt.reason}"
            assert attempt.reason.split(":")[0] in limited, attempt.reason
            if ticket is None:  # a new request, or one whose place lapsed
                assert attempt.ticket is not None
                assert attempt.ticket > self.last_ticket, "a ticket number was handed out again"
                self.last_ticket = attempt.ticket
                for name in limited:
                    self.line[(name, attempt.ticket)] = who
                self.waiting[who] = Request(attempt.ticket, names, occupy)
            else:
                assert attempt.ticket == ticket, "a retry lost its place in line"
            self.seen[attempt.ticket] = self.now
            self.outcomes.add("refused: ahead" if ahead else "refused: full")
        for name in limited:  # swept by this very attempt
            for row in self.journal.limits.holders(name) + self.journal.limits.waiters(name):
                assert row.holder not in self.dead, f"dead {row.holder} kept its {name!r} row"
                assert (row.seen_ms or self.now) >= self.now - STALE_MS, (
                    f"{row} kept a lapsed place"
                )

    @precondition(lambda self: self.live(self.holding))
    @rule(data=st.data(), ms=LATER, wake=st.booleans())
    def release(self, data: st.DataObject, ms: int, wake: bool) -> None:
        """``ms`` later, a holder gives its slots back (and, if ``wake``, those in line
        ask again at once, as a release in their process wakes them)."""
        self.now += ms
        who = data.draw(st.sampled_from(self.live(self.holding)))
        names = self.holding.pop(who)
        self.journal.limits.release(names, who, self.now)
        for name in names:
            occupy = self.held.pop((name, who), None)
            if occupy is not None and self.limits[name][1]:
                self.decaying[name] = (self.draining(name) + occupy, self.now)
        if wake:
            self.poll(data)

    def leave_line(self, who: str) -> None:
        request = self.waiting.pop(who)
        self.journal.limits.leave_line(request.ticket)
        for key in [k for k in self.line if k[1] == request.ticket]:
            del self.line[key]
        self.seen.pop(request.ticket, None)
        self.outcomes.add("left the line")

    @precondition(lambda self: len(self.dead) < 2 and self.live({**self.holding, **self.waiting}))
    @rule(data=st.data(), sweep=st.lists(st.sampled_from(LIMITED), max_size=2, unique=True))
    def die(self, data: st.DataObject, sweep: list[str]) -> None:
        """A holder's or waiter's process is gone: its rows stay until an attempt on their
        names, or a sweep of them (``free_dead``), frees them."""
        self.dead.add(data.draw(st.sampled_from(self.live({**self.holding, **self.waiting}))))
        names = [n for n in sweep if n in self.limits]
        if names:
            freed = self.journal.limits.free_dead(names, self.is_dead, self.now, STALE_MS)
            assert {(f.name, f.holder) for f in freed} == self.free_dead(names)

    # -- invariants --------------------------------------------------------------

    @invariant()
    def the_tables_are_the_model(self) -> None:
        for name in self.limits:
            held = {(h.holder, h.occupy) for h in self.journal.limits.holders(name)}
            assert held == {(who, o) for (n, who), o in self.held.items() if n == name}
            line = [(w.ticket, w.holder, w.seen_ms) for w in self.journal.limits.waiters(name)]
            assert line == sorted(
                (t, who, self.seen[t]) for (n, t), who in self.line.items() if n == name
            )

    @invariant()
    def never_more_than_the_limit(self) -> None:
        for name, (slots, decay) in self.limits.items():
            limit = self.journal.limits.get(name)
            assert limit is not None and (limit.slots, limit.decay_per_second) == (slots, decay)
            draining = limit.draining(self.now)
            assert draining == pytest.approx(self.draining(name), abs=EPSILON)
            held = sum(h.occupy for h in self.journal.limits.holders(name))
            assert held + draining <= slots + EPSILON, f"{name}: {held} held + {draining} draining"


LimitsMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    report_multiple_bugs=False,  # shrink one failure, in seconds rather than minutes
    suppress_health_check=[HealthCheck.too_slow],
)
TestLimitsMachine = LimitsMachine.TestCase


class Drawn:
    """Stands in for ``st.data()`` in a fixed run: every draw gives ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, strategy: Any) -> Any:
        return self.value


def run_machine_once(steps: list[tuple[str, dict[str, Any]]]) -> LimitsMachine:
    """Drive the machine through fixed steps (with its invariants), for a known scenario."""
    machine = LimitsMachine()
    try:
        for name, kwargs in steps:
            if name == "later":
                machine.now += kwargs["ms"]
                continue
            getattr(machine, name)(**kwargs)
            machine.the_tables_are_the_model()
            machine.never_more_than_the_limit()
        return machine
    finally:
        machine.teardown()


def test_the_machine_model_sees_waiting_fifo_and_dead_holders() -> None:
    """The model is not vacuous: a fixed run goes through waiting, FIFO refusal, a dead
    holder's slot freed, and a lapsed place."""
    machine = run_machine_once(
        [
            ("make_limits", {"a": (1, 0.0), "b": None}),
            ("attempt", {"who": "c0", "names": ["a"]}),
            ("attempt", {"who": "c1", "names": ["a"]}),  # full: waits
            ("attempt", {"who": "c2", "names": ["a", "free"]}),  # waits behind c1
            ("die", {"data": Drawn("c0"), "sweep": []}),
            ("attempt", {"who": "c2"}),  # c0's slot is freed, but c1 is ahead
            ("attempt", {"who": "c1"}),  # first in line: gets it
            ("attempt", {"who": "c3", "names": ["free"], "occupy": 2}),  # no limit at all
            ("later", {"ms": STALE_MS + 1}),
            ("attempt", {"who": "c2"}),  # its place lapsed: a new ticket, at the back
        ]
    )
    assert machine.outcomes == {
        "acquired",
        "refused: full",
        "refused: ahead",
        "acquired after waiting",
        "lapsed",
    }
    assert machine.held == {("a", "c1"): 1} and list(machine.waiting) == ["c2"]
    assert machine.waiting["c2"].ticket == machine.last_ticket == 3


# -- places in line that go stale ------------------------------------------------

ALIVE = lambda held, now_ms: False  # noqa: E731


def who(name: str) -> Claimant:
    return Claimant(name, None, None, Owner("limits-test-host", 1, "boot:1"))


def test_a_waiter_that_stops_asking_loses_its_place(journal: Journal) -> None:
    limits = journal.limits
    limits.put("a", 1, 0, 0)
    assert limits.try_acquire(["a"], who("H"), 1, None, ALIVE, 0, 1000).acquired
    x = limits.try_acquire(["a"], who("X"), 1, None, ALIVE, 10, 1000)
    assert not x.acquired and [w.holder for w in limits.waiters("a")] == ["X"]
    # X asks again within the stale period: it keeps its place and its ticket.
    again = limits.try_acquire(["a"], who("X"), 1, x.ticket, ALIVE, 900, 1000)
    assert again.ticket == x.ticket and limits.waiters("a")[0].seen_ms == 900
    # Then X stops asking: the next attempt after the stale period drops its place.
    y = limits.try_acquire(["a"], who("Y"), 1, None, ALIVE, 2000, 1000)
    assert not y.acquired and [w.holder for w in limits.waiters("a")] == ["Y"]
    limits.release(["a"], "H", 2001)
    assert not limits.try_acquire(["a"], who("Z"), 1, None, ALIVE, 2002, 1000).acquired  # Y first
    assert limits.try_acquire(["a"], who("Y"), 1, y.ticket, ALIVE, 2003, 1000).acquired


def test_a_lapsed_place_goes_to_the_back_and_tickets_are_never_reused(journal: Journal) -> None:
    limits = journal.limits
    limits.put("a", 1, 0, 0)
    assert limits.try_acquire(["a"], who("H"), 1, None, ALIVE, 0, 1000).acquired
    x = limits.try_acquire(["a"], who("X"), 1, None, ALIVE, 10, 1000)  # X waits, then stalls
    y = limits.try_acquire(["a"], who("Y"), 1, None, ALIVE, 2000, 1000)  # X's place lapsed
    assert not y.acquired and y.ticket is not None and x.ticket is not None
    assert y.ticket > x.ticket  # a new number, not X's old one
    # X wakes up and asks again under its old ticket: it is put at the back, behind Y.
    x2 = limits.try_acquire(["a"], who("X"), 1, x.ticket, ALIVE, 2001, 1000)
    assert not x2.acquired and x2.ticket is not None and x2.ticket > y.ticket
    assert [w.holder for w in limits.waiters("a")] == ["Y", "X"]
    limits.release(["a"], "H", 2002)
    assert not limits.try_acquire(["a"], who("X"), 1, x2.ticket, ALIVE, 2003, 1000).acquired
    assert limits.try_acquire(["a"], who("Y"), 1, y.ticket, ALIVE, 2004, 1000).acquired
    assert [w.holder for w in limits.waiters("a")] == ["X"]
    limits.release(["a"], "Y", 2005)
    # ... and a newcomer does not overtake X.
    assert not limits.try_acquire(["a"], who("Z"), 1, None, ALIVE, 2006, 1000).acquired
    assert limits.try_acquire(["a"], who("X"), 1, x2.ticket, ALIVE, 2007, 1000).acquired


# -- draining -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    decaying=st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10).map(float),
    rate=st.floats(0, 1e4, allow_nan=False) | st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    decayed_ms=st.integers(0, 2**42),
    offsets=st.lists(st.integers(-(10**7), 10**8), min_size=1, max_size=6),
)
def test_draining_never_negative_never_above_decaying_and_never_growing(
    decaying: float, rate: float, decayed_ms: int, offsets: list[int]
) -> None:
    limit = ConcurrencyLimit("x", 3, rate, decaying, decayed_ms, 0, 0)
    assert limit.draining(decayed_ms) == (decaying if rate > 0 else 0.0)
    values = [limit.draining(decayed_ms + offset) for offset in sorted(offsets)]
    assert all(0.0 <= v <= decaying for v in values)
    assert all(later <= earlier for earlier, later in itertools.pairwise(values))


def test_draining_drains_at_the_rate() -> None:
    limit = ConcurrencyLimit("x", 3, 2.0, 3.0, 10_000, 0, 0)
    assert limit.draining(9_000) == 3.0  # before it started draining: all of it
    assert limit.draining(10_500) == pytest.approx(2.0)
    assert limit.draining(11_500) == 0.0
    # Without a decay (a limit that stopped being a rate limit) nothing is held back.
    assert ConcurrencyLimit("x", 3, 0.0, 3.0, 10_000, 0, 0).draining(10_000) == 0.0


# -- concurrency() -----------------------------------------------------------------


def bounded(call: Callable[[], T], seconds: float = 20) -> T:
    """Run ``call`` (a flow) in a thread: a slot never given back fails the test, not hangs it."""
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        pytest.fail(f"still running after {seconds} s: waiting for a slot nobody gives back?")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def put(journal: Journal, name: str, slots: int, decay: float = 0.0) -> None:
    journal.limits.put(name, slots, decay, clock.now_ms())


def holders(journal: Journal, name: str = "db") -> list[str]:
    return [h.holder for h in journal.limits.holders(name)]


def test_concurrency_in_plain_code_makes_a_second_holder_wait(journal: Journal) -> None:
    put(journal, "db", 1)
    order: list[str] = []
    inside, let_go = threading.Event(), threading.Event()

    def first() -> None:
        with concurrency("db", strict=True):
            order.append("first in")
            inside.set()
            let_go.wait(10)
            order.append("first out")

    def second() -> None:
        with concurrency("db", strict=True, timeout_seconds=20):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    try:
        assert inside.wait(10)
        [held] = journal.limits.holders("db")
        assert held.holder.startswith("process ") and held.flow_run_id is None
        assert held.owner == this_process()
        threads[1].start()
        wait_for(lambda: journal.limits.waiters("db"))  # the second is in line
        assert order == ["first in"]
    finally:
        let_go.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join(20)
    assert order == ["first in", "first out", "second in"]
    assert holders(journal) == [] and journal.limits.waiters("db") == []


def test_concurrency_inside_a_flow_and_its_tasks(journal: Journal) -> None:
    put(journal, "db", 1)
    order: list[str] = []
    inside, let_go = threading.Event(), threading.Event()

    @task
    def first() -> str:
        with concurrency("db", strict=True):
            order.append("task 0 in")
            inside.set()
            let_go.wait(10)
            order.append("task 0 out")
        return get_run_context().task_run_id

    @task
    def second() -> None:
        with concurrency("db", strict=True, timeout_seconds=20):
            order.append("task 1 in")

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def blocks() -> None:
        run = get_run_context().run
        with concurrency("db", strict=True):  # the flow itself holds the slot
            [held] = journal.limits.holders("db")
            assert held.flow_run_id == run.id and held.holder.startswith(run.id)
            assert run.lease_token is not None and held.lease_token == run.lease_token
            assert not holder_is_dead(held, clock.now_ms())
            order.append("flow")
        a = first.submit()
        try:
            assert inside.wait(10)
            b = second.submit()
            wait_for(lambda: journal.limits.waiters("db"))
            [held] = journal.limits.holders("db")
            assert held.holder.startswith(a.task_run_id or "?") and held.flow_run_id == run.id
            [waiting] = journal.limits.waiters("db")
            assert waiting.flow_run_id == run.id
            order.append("task 1 waits")
        finally:
            let_go.set()
        assert a.result() == a.task_run_id
        b.result()

    bounded(blocks)
    assert order == ["flow", "task 0 in", "task 1 waits", "task 0 out", "task 1 in"]
    assert holders(journal) == [] and journal.limits.waiters("db") == []


def test_a_timeout_names_the_limit_and_leaves_no_place_in_line(journal: Journal) -> None:
    put(journal, "db", 1)
    with concurrency("db"):
        with (
            pytest.raises(ConcurrencySlotTimeout, match=r"no slot of 'db' within 0\.1 s") as caught,
            concurrency("db", timeout_seconds=0.1),
        ):
            pytest.fail("entered a full limit")
        assert caught.value.names == ["db"] and "1 of 1 slots" in str(caught.value)
        assert isinstance(caught.value, TimeoutError)
        assert journal.limits.waiters("db") == [] and len(holders(journal)) == 1
    assert holders(journal) == []


def test_a_name_without_a_limit_is_unlimited_unless_strict(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    put(journal, "db", 1)
    ran = []
    with concurrency("nowhere"), concurrency("nowhere"):  # nested: both get in
        ran.append("twice in")
    err = capsys.readouterr().err
    assert "no concurrency limit named 'nowhere'" in err and "unlimited" in err
    with (
        pytest.raises(ConcurrencyError, match="no concurrency limit named 'nowhere'"),
        concurrency(["db", "nowhere"], strict=True),
    ):
        ran.append("strict")
    assert ran == ["twice in"]
    assert holders(journal) == []  # the slot of "db" it took on the way is given back
    for bad in ([], "", ["db", ""]):
        with pytest.raises(ConcurrencyError, match="give a limit name"), concurrency(bad):
            pass
    with pytest.raises(ConcurrencyError, match="at least one slot"), concurrency("db", occupy=0):
        pass


def test_occupy_larger_than_the_limit_is_an_error(journal: Journal) -> None:
    put(journal, "db", 2)
    with concurrency("db", occupy=2):  # exactly the size is fine
        assert [h.occupy for h in journal.limits.holders("db")] == [2]
    with (
        pytest.raises(ConcurrencyError, match="'db' has 2 slots, fewer than occupy=3"),
        concurrency("db", occupy=3),
    ):
        pytest.fail("entered with more slots than the limit has")
    assert holders(journal) == []


def test_occupy_larger_than_the_limit_leaves_no_place_in_line(journal: Journal) -> None:
    put(journal, "db", 2)
    with pytest.raises(ConcurrencyError), concurrency("db", occupy=3):
        pass
    assert journal.limits.waiters("db") == []
    with concurrency("db", timeout_seconds=1):  # nothing is held: it must get in
        pass


def test_the_slot_is_given_back_when_the_block_raises(journal: Journal) -> None:
    put(journal, "db", 1)
    with pytest.raises(RuntimeError, match="boom"), concurrency("db"):
        assert len(holders(journal)) == 1
        raise RuntimeError("boom")
    assert holders(journal) == []
    with concurrency("db", timeout_seconds=2):
        assert len(holders(journal)) == 1


# -- rate_limit() -------------------------------------------------------------------


def test_rate_limit_waits_until_enough_has_drained(journal: Journal) -> None:
    put(journal, "api", 2, decay=2.0)  # two uses at once, then one more every 0.5 s
    began = time.monotonic()
    rate_limit("api")
    rate_limit("api")
    limit = journal.limits.get("api")
    assert limit is not None and 1.0 < limit.draining(clock.now_ms()) <= 2.0
    assert holders(journal, "api") == []  # a use is released at once, it only drains
    with pytest.raises(
        ConcurrencySlotTimeout, match=r"'api' within 0\.05 s \(api: [\d.]+ of 2 slots"
    ):
        rate_limit("api", timeout_seconds=0.05)
    assert journal.limits.waiters("api") == []
    used: list[float] = []
    waiter = threading.Thread(
        target=lambda: (rate_limit("api", timeout_seconds=10), used.append(time.monotonic()))
    )
    waiter.start()
    wait_for(lambda: used, timeout=10)
    waiter.join(10)
    # Two uses at 2 per second: the third fits once one whole use has drained, 0.5 s later.
    assert used[0] - began >= 0.45
    limit = journal.limits.get("api")
    assert limit is not None and 1.0 < limit.draining(clock.now_ms()) <= 2.0


def test_rate_limit_on_a_limit_without_decay_is_an_error(journal: Journal) -> None:
    put(journal, "plain", 2)
    with pytest.raises(ConcurrencyError, match="'plain' has no slot decay"):
        rate_limit("plain")
    limit = journal.limits.get("plain")
    assert limit is not None and limit.draining(clock.now_ms()) == 0.0
    assert holders(journal, "plain") == []
    with pytest.raises(ConcurrencyError, match="no concurrency limit named 'none'"):
        rate_limit("none", strict=True)


# -- tagged tasks ------------------------------------------------------------------


def names_of(journal: Journal, run_id: str) -> list[str]:
    return [h.name for h in journal.history(run_id)]


WAITED = ["Pending", "AwaitingConcurrencySlot", "Pending", "Running", "Completed"]


@pytest.mark.parametrize("slots", [1, 2])
def test_tagged_tasks_never_run_more_at_once_than_the_limit(journal: Journal, slots: int) -> None:
    put(journal, "db", slots)

    @task(tags=["db"])
    def hold(i: int) -> int:
        time.sleep(0.06)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=6))
    def limited() -> list[int]:
        return hold.map(range(6)).result()

    assert bounded(limited) == list(range(6))
    [run] = journal.list_flow_runs()
    tasks = journal.task_runs(run.id)
    assert len(tasks) == 6
    assert all(t.state_name == "Completed" and t.attempt == 1 for t in tasks)
    intervals = [(t.started_ms or 0, t.ended_ms or 0) for t in tasks]
    assert all(end - start >= 60 for start, end in intervals)
    assert most_at_once(intervals) == slots
    histories = [names_of(journal, t.id) for t in tasks]
    waited = [names for names in histories if "AwaitingConcurrencySlot" in names]
    assert waited, "with 6 tasks at once on a limit of at most 2, some must have waited"
    assert all(names == WAITED for names in waited), waited
    assert all(
        names == ["Pending", "Running", "Completed"] for names in histories if names not in waited
    )
    assert holders(journal) == [] and journal.limits.waiters("db") == []


def test_a_tag_without_a_limit_is_not_limited(journal: Journal) -> None:
    put(journal, "db", 1)  # a limit on another tag
    together = threading.Barrier(4, timeout=10)  # broken unless all four run at once

    @task(tags=["unlimited"])
    def meet(i: int) -> int:
        together.wait()
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=6))
    def gathering() -> list[int]:
        return meet.map(range(4)).result()

    assert bounded(gathering) == [0, 1, 2, 3]
    [run] = journal.list_flow_runs()
    assert all(
        "AwaitingConcurrencySlot" not in names_of(journal, t.id) for t in journal.task_runs(run.id)
    )
    assert [lim.name for lim in journal.limits.all()] == ["db"]


def test_a_retried_tagged_task_gives_its_slot_back_during_the_delay(journal: Journal) -> None:
    put(journal, "db", 1)
    other_ran = threading.Event()
    attempts: list[int] = []

    @task(tags=["db"], retries=1, retry_delay_seconds=0.5)
    def flaky() -> bool:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            wait_for(lambda: journal.limits.waiters("db"), timeout=10)  # `other` waits behind
            raise RuntimeError("first attempt fails")
        return other_ran.is_set()  # `other` ran in the retry's delay

    @task(tags=["db"])
    def other() -> str:
        other_ran.set()
        return "ran"

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def retrying() -> tuple[bool, str]:
        first = flaky.submit()
        wait_for(lambda: journal.limits.holders("db"), timeout=10)  # flaky has the slot
        second = other.submit()
        return first.result(), second.result()

    assert bounded(retrying) == (True, "ran")
    assert attempts == [1, 2]
    [run] = journal.list_flow_runs()
    flaky_run, other_run = journal.task_runs(run.id)
    assert flaky_run.state_name == "Completed" and flaky_run.attempt == 2
    assert names_of(journal, other_run.id) == WAITED and other_run.attempt == 1
    moves = {h.name: h.ts_ms for h in journal.history(flaky_run.id)}
    assert moves["AwaitingRetry"] <= (other_run.started_ms or 0)
    assert (other_run.ended_ms or 0) <= moves["Retrying"]
    assert holders(journal) == [] and journal.limits.waiters("db") == []


# -- who is dead ---------------------------------------------------------------------


def hold_slot(journal: Journal, claimant: Claimant) -> SlotHolder:
    now = clock.now_ms()
    assert journal.limits.try_acquire(
        ["db"], claimant, 1, None, holder_is_dead, now, 30_000
    ).acquired
    [held] = journal.limits.holders("db")
    return held


def enter_freeing(journal: Journal, capsys: pytest.CaptureFixture[str], gone: str) -> str:
    """Take the only slot of "db" from plain code, which must free ``gone``'s; returns the log."""
    with concurrency("db", timeout_seconds=5):
        assert gone not in holders(journal) and len(holders(journal)) == 1
    err = capsys.readouterr().err
    assert f"freed 1 slot(s) of 'db' held by {gone} (" in err and "its holder is gone" in err
    return err


def kept(journal: Journal, capsys: pytest.CaptureFixture[str], holder: str) -> None:
    """The slot of a live holder is not freed by the next attempt."""
    with pytest.raises(ConcurrencySlotTimeout), concurrency("db", timeout_seconds=0.1):
        pass
    assert holders(journal) == [holder]
    assert "freed" not in capsys.readouterr().err


def test_a_slot_of_a_flow_run_that_ended_or_moved_on_is_freed(
    db: Path, journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    put(journal, "db", 1)
    me = this_process()
    ended = journal.create_flow_run(flow_name="ended", entrypoint=None, parameters="{}")
    ended = journal.claim_flow_run(ended, me, "token-1")
    held = hold_slot(journal, Claimant("task of ended", ended.id, "token-1", me))
    assert (held.run_state, held.run_token) == ("RUNNING", "token-1")
    assert not holder_is_dead(held, clock.now_ms())
    kept(journal, capsys, "task of ended")
    # The rule itself: an ended (or not yet started) run's slots are dead whatever the token.
    for state, dead in (
        ("COMPLETED", True),
        ("CRASHED", True),
        ("SCHEDULED", True),
        ("PENDING", False),
    ):
        assert holder_is_dead(dataclasses.replace(held, run_state=state), clock.now_ms()) is dead
    journal.finish_flow_run(ended, StateType.COMPLETED, "Completed")
    err = enter_freeing(journal, capsys, "task of ended")
    assert f"flow run {ended.id}" in err

    moved = journal.create_flow_run(flow_name="moved", entrypoint=None, parameters="{}")
    moved = journal.claim_flow_run(moved, me, "token-A")
    hold_slot(journal, Claimant("task of moved", moved.id, "token-A", me))
    other = Journal(db, Settings.from_env())  # another process resumes the run
    try:
        run = other.mark_crashed(other.get_flow_run(moved.id), "owner presumed gone")
        run = other.reschedule_flow_run(run, "resumed elsewhere")
        other.claim_flow_run(run, Owner("elsewhere", 4242, "boot:1"), "token-B")
        [held] = journal.limits.holders("db")
        assert (held.run_state, held.run_token, held.lease_token) == (
            "RUNNING",
            "token-B",
            "token-A",
        )
        assert holder_is_dead(held, clock.now_ms())
        enter_freeing(journal, capsys, "task of moved")
    finally:
        other.close()


def test_a_slot_of_a_dead_process_on_this_host_is_freed(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    put(journal, "db", 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        started = process_start(proc.pid)
        assert started is not None
        ghost = Owner(this_process().host, proc.pid, started)
        held = hold_slot(journal, Claimant("ghost", None, None, ghost))
        assert not holder_is_dead(held, clock.now_ms())  # alive: kept
        kept(journal, capsys, "ghost")
    finally:
        proc.communicate(timeout=10)  # stdin closed: it exits, and is reaped
    assert holder_is_dead(held, clock.now_ms())
    err = enter_freeing(journal, capsys, "ghost")
    assert f"a process on {ghost.label()}" in err


def test_a_live_holder_in_this_process_is_not_freed(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    put(journal, "db", 1)
    me = this_process()
    held = hold_slot(journal, Claimant("mine", None, None, me))
    assert not holder_is_dead(held, clock.now_ms())
    kept(journal, capsys, "mine")
    journal.limits.release(["db"], "mine", clock.now_ms())
    # Our pid with another start time is an earlier process that had it: dead.
    reused = hold_slot(journal, Claimant("reused", None, None, Owner(me.host, me.pid, "x:1")))
    assert holder_is_dead(reused, clock.now_ms())
    enter_freeing(journal, capsys, "reused")
    # A process on another host, outside any flow run: nobody here can tell, so it is kept.
    far = hold_slot(journal, Claimant("far", None, None, Owner("elsewhere", me.pid, "x:1")))
    assert not holder_is_dead(far, clock.now_ms())
    kept(journal, capsys, "far")


# -- the CLI -------------------------------------------------------------------------


def cli(db: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = run_cli(db, "concurrency-limit", *args, timeout=30)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def test_the_concurrency_limit_cli(db: Path, journal: Journal) -> None:
    assert cli(db, "create", "db", "2").stdout == "created concurrency limit 'db': 2 slots\n"
    assert cli(db, "create", "db", "3").stdout == "updated concurrency limit 'db': 3 slots\n"
    done = cli(db, "create", "api", "2", "--slot-decay-per-second", "0.5")
    assert (
        done.stdout == "created concurrency limit 'api': 2 slots, draining 0.5 slot(s) per second\n"
    )
    limit = journal.limits.get("db")
    assert limit is not None and (limit.slots, limit.decay_per_second) == (3, 0.0)

    # Held and waited for by this (live) process, as the CLI's process sees it.
    me, now = this_process(), clock.now_ms()
    for holder, occupy in (("holder", 2), ("waiter", 2), ("behind", 1)):  # 1 fits, but FIFO
        claimant = Claimant(holder, None, None, me)
        journal.limits.try_acquire(["db"], claimant, occupy, None, holder_is_dead, now, 30_000)
    rate_limit("api")
    rows = json.loads(cli(db, "ls", "--json").stdout)
    assert [r["name"] for r in rows] == ["api", "db"]
    api, dbs = rows
    assert {k: dbs[k] for k in ("slots", "active_slots", "draining_slots", "waiting")} == {
        "slots": 3,
        "active_slots": 2,
        "draining_slots": 0,
        "waiting": 2,
    }
    assert dbs["slot_decay_per_second"] == 0 and api["slot_decay_per_second"] == 0.5
    assert (api["slots"], api["active_slots"], api["waiting"]) == (2, 0, 0)
    assert 0 < api["draining_slots"] <= 1
    shown = json.loads(cli(db, "inspect", "db", "--json").stdout)
    assert [(h["holder"], h["occupy"], h["owner"]) for h in shown["holders"]] == [
        ("holder", 2, me.label())
    ]
    assert [w["holder"] for w in shown["waiters"]] == ["waiter", "behind"]
    assert shown["waiters"][0]["ticket"] < shown["waiters"][1]["ticket"]

    done = cli(db, "inspect", "nope", code=2)
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "no concurrency limit named 'nope'" in done.stderr

    assert cli(db, "reset", "db").stdout == "freed 1 slot holder of 'db'\n"
    assert holders(journal) == [] and len(journal.limits.waiters("db")) == 2  # the line stays
    assert cli(db, "reset", "api").stdout == "freed 0 slot holders of 'api'\n"
    limit = journal.limits.get("api")
    assert limit is not None and limit.draining(clock.now_ms()) == 0  # reset drops what drains

    assert cli(db, "delete", "db").stdout == "deleted concurrency limit 'db'\n"
    assert journal.limits.get("db") is None and journal.limits.waiters("db") == []
    assert "no concurrency limit named 'db'" in cli(db, "delete", "db", code=2).stderr
    assert [r["name"] for r in json.loads(cli(db, "ls", "--json").stdout)] == ["api"]

    for bad, complaint in (
        (["--", "x", "-1"], "SLOTS"),
        (["x", "two"], "SLOTS"),
        (["x", "1", "--slot-decay-per-second", "-0.5"], "--slot-decay-per-second"),
    ):
        done = cli(db, "create", *bad, code=2)
        assert complaint in done.stderr and done.stdout == ""
    assert [lim.name for lim in journal.limits.all()] == ["api"]


def test_resizing_a_rate_limit_into_a_plain_one_frees_what_drained(journal: Journal) -> None:
    put(journal, "api", 3, decay=0.5)
    rate_limit("api", occupy=3)  # all three slots draining, for 6 s
    journal.limits.put("api", 3, 0.0, clock.now_ms())  # no decay any more
    with concurrency("api", timeout_seconds=2):  # nothing is held: it gets in at once
        pass


def test_the_cli_keeps_a_rate_limits_decay_when_only_resizing(db: Path, journal: Journal) -> None:
    assert cli(db, "create", "api", "2", "--slot-decay-per-second", "0.5").returncode == 0
    assert cli(db, "create", "api", "4").returncode == 0
    limit = journal.limits.get("api")
    assert limit is not None and (limit.slots, limit.decay_per_second) == (4, 0.5)


def test_a_release_never_frees_a_slot_another_process_took_under_the_same_name(
    journal: Journal,
) -> None:
    journal.limits.put("db", 1, 0, 0)
    mine = Claimant("run.00000001", "run", "token-A", Owner("host", 1, "a"))
    theirs = Claimant("run.00000001", "run", "token-B", Owner("host", 2, "b"))
    assert journal.limits.try_acquire(["db"], mine, 1, None, ALIVE, 1, 1000).acquired
    dead_a = lambda held, now: held.lease_token == "token-A"  # noqa: E731  (A lost the run)
    assert journal.limits.try_acquire(["db"], theirs, 1, None, dead_a, 2, 1000).acquired
    journal.limits.release(["db"], mine, 3)  # A's body ends late: it must not free B's slot
    assert [h.lease_token for h in journal.limits.holders("db")] == ["token-B"]
    journal.limits.release(["db"], theirs, 4)
    assert journal.limits.holders("db") == []


def test_calls_waiting_for_a_slot_give_up_when_the_flow_body_fails(journal: Journal) -> None:
    put(journal, "db", 1)
    started = threading.Event()
    futures: list[Any] = []

    @task(tags=["db"])
    def hold(i: int) -> int:
        started.set()
        time.sleep(0.3)
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=6))
    def failing() -> None:
        futures.extend(hold.map(range(6)))
        assert started.wait(10)
        raise ValueError("the flow body failed")

    with pytest.raises(ValueError, match="the flow body failed"):
        bounded(failing)
    states = [f.state.type for f in futures]
    # One call held the slot when the body failed (at most one more got in before
    # the waiting calls noticed); the others gave up instead of running later.
    assert states.count(StateType.COMPLETED) <= 2
    assert states.count(StateType.CANCELLED) >= 4
    assert holders(journal) == [] and journal.limits.waiters("db") == []
