"""Workers, the journal's side and the engine's side, without worker processes
(``tests/test_workers.py`` runs those).

Claims (``journal.workers.claim``): due times, oldest first, queues, paused
queues, queue limits, what a claim records; claims racing from separate
connections. A hypothesis state machine drives the real tables (schedule,
claim, start, finish, crash, automatic resume, release, resume by hand,
cancel, pause, limits) against a model and checks that a run has one holder
at most, a claim never passes a queue's limit, automatic resumes are counted
and capped, and every journaled history folds. Cancel requests, their end
(``finish_cancel``, ``recovery.reap``), ``supervisor.is_live``, the
worker's heartbeat, ``Writer.watch_cancel``, a worker child's handoff; and,
as real processes, SIGTERM and cancels reaching a flow run that executes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from persevere import clock
from persevere.exceptions import RunNotCancellable
from persevere.journal import FlowRun, Journal, new_id
from persevere.journal.deployments import Deployment
from persevere.journal.workers import DEFAULT_AUTO_RESUMES
from persevere.settings import Settings
from persevere.statemachine import Owner, StateType, fold
from persevere.worker import reap
from persevere.worker.child import run_claimed
from persevere.worker.owners import process_start, this_process
from persevere.worker.supervisor import is_live

from .conftest import FLOWS, cli_env, most_at_once, run_cli, wait_for

ELSEWHERE = "workers-unit-elsewhere"  # a host that is not this one: only leases count there
CANCELLABLE = FLOWS / "cancellable.py"
S, P, R = StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING


def remote(pid: int = 1) -> Owner:
    """An owner on another host (never reaped by pid)."""
    return Owner(ELSEWHERE, pid, "boot:1")


def deploy(
    journal: Journal, queue: str = "default", entrypoint: str = "nowhere.py:f"
) -> Deployment:
    return journal.deployments.put(
        flow_name="f",
        name=f"on-{queue}",
        entrypoint=entrypoint,
        parameters={},
        signature={},
        work_queue=queue,
    )


def schedule(journal: Journal, deployment: Deployment, at_ms: int | None = None) -> FlowRun:
    return journal.deployments.schedule_run(deployment, "{}", scheduled_ms=at_ms)


def claim(journal: Journal, worker: str = "w", queues: tuple[str, ...] = ()) -> FlowRun | None:
    return journal.workers.claim(worker, list(queues), remote(), new_id())


def claimed_id(journal: Journal, worker: str = "w", queues: tuple[str, ...] = ()) -> str | None:
    run = claim(journal, worker, queues)
    return run.id if run else None


def assert_folds(journal: Journal, run_id: str) -> None:
    """The run's journaled history is legal and leads to the stored state and version."""
    run = journal.get_flow_run(run_id)
    history = journal.history(run_id)
    assert fold((t.to_type, t.name) for t in history) == (
        run.state_type,
        run.state_name,
        run.version,
    )
    assert [t.from_type for t in history] == [None, *(t.to_type for t in history[:-1])]


def running(journal: Journal, owner: Owner | None = None, worker: str = "w") -> FlowRun:
    """A deployment run on a queue of its own, claimed by ``worker`` and Running under
    ``owner``; this journal holds its lease (``writer.release`` it to act as another process)."""
    queue = f"q-{new_id()[-8:]}"
    dep = deploy(journal, queue)
    schedule(journal, dep)
    pending = journal.workers.claim(worker, [queue], owner or remote(), new_id())
    assert pending is not None
    return journal.claim_flow_run(pending, owner or remote(), new_id())


def dead_local_owner() -> Owner:
    """An owner on this host whose process has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(child.pid) or "?"
    child.wait(timeout=30)
    return Owner(this_process().host, child.pid, started)


# -- claims --------------------------------------------------------------------------


def test_a_claim_takes_only_runs_that_are_due(journal: Journal) -> None:
    dep = deploy(journal)
    later = schedule(journal, dep, clock.now_ms() + 60_000)
    assert claim(journal) is None
    assert journal.get_flow_run(later.id).state_name == "Scheduled"
    due = schedule(journal, dep, clock.now_ms() - 1)
    assert claimed_id(journal) == due.id
    assert claim(journal) is None
    assert journal.get_flow_run(later.id).state_name == "Scheduled"


def test_claims_take_the_oldest_due_run_first(journal: Journal) -> None:
    dep = deploy(journal)
    now = clock.now_ms()
    by_age = {age: schedule(journal, dep, now - age).id for age in (2000, 5000, 1000, 3000)}
    ties = sorted(schedule(journal, dep, now - 4000).id for _ in range(3))  # same time: by id
    expected = [by_age[5000], *ties, by_age[3000], by_age[2000], by_age[1000]]
    assert [claimed_id(journal) for _ in expected] == expected
    assert claim(journal) is None


def test_a_claim_takes_runs_of_its_queues_only(journal: Journal) -> None:
    now = clock.now_ms()
    runs = {
        q: schedule(journal, deploy(journal, q), now - age).id
        for q, age in zip("abc", (3, 2, 1), strict=True)
    }
    assert claimed_id(journal, queues=("b",)) == runs["b"]
    assert claim(journal, queues=("b",)) is None
    assert claim(journal, queues=("nonesuch",)) is None
    assert claimed_id(journal, queues=("c", "b")) == runs["c"]
    assert claimed_id(journal, queues=()) == runs["a"]  # no queues named: every queue


def test_a_run_on_no_queue_is_never_claimed(journal: Journal) -> None:
    """A run started by hand that waits for its retry belongs to its own process."""
    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    run = journal.claim_flow_run(run, this_process(), new_id())
    extra = {"scheduled_ms": clock.now_ms() - 1000, "retries_used": 1}
    waiting = journal.finish_flow_run(run, S, "AwaitingRetry", "boom", extra=extra)
    assert waiting.state_type is S and waiting.work_queue is None
    assert claim(journal) is None
    assert journal.get_flow_run(run.id) == waiting


def test_a_paused_queue_is_skipped_until_it_is_resumed(journal: Journal) -> None:
    now = clock.now_ms()
    on_a = schedule(journal, deploy(journal, "a"), now - 2000).id
    on_b = schedule(journal, deploy(journal, "b"), now - 1000).id
    assert journal.deployments.pause_queue("a").paused
    assert claim(journal, queues=("a",)) is None
    assert claimed_id(journal) == on_b  # the older run waits on its paused queue
    assert claim(journal) is None
    assert not journal.deployments.pause_queue("a", paused=False).paused
    assert claimed_id(journal, queues=("a",)) == on_a


def test_a_queue_limit_counts_the_queues_pending_and_running_runs(journal: Journal) -> None:
    dep, free = deploy(journal, "lim"), deploy(journal, "free")
    journal.deployments.set_queue_limit("lim", 2)
    now = clock.now_ms()
    runs = [schedule(journal, dep, now - 100 + i).id for i in range(5)]
    first = claim(journal, "w1")
    assert first is not None and first.id == runs[0]
    started = journal.claim_flow_run(first, remote(), new_id())  # Running counts
    second = claim(journal, "w2")  # Pending counts
    assert second is not None and second.id == runs[1]
    assert claim(journal, "w3") is None and claim(journal, "w3", ("lim",)) is None
    other = schedule(journal, free).id
    assert claimed_id(journal, "w3") == other  # another queue is not held up
    journal.finish_flow_run(started, StateType.COMPLETED, "Completed")  # a place frees up
    assert claimed_id(journal, "w3") == runs[2]
    assert claim(journal) is None
    journal.mark_crashed(second, "its worker died")  # a crashed run holds no place
    assert claimed_id(journal) == runs[3]
    assert claim(journal) is None
    assert journal.deployments.queue("lim").active == 2
    journal.deployments.set_queue_limit("lim", None)
    assert claimed_id(journal) == runs[4]
    assert journal.deployments.queue("lim").active == 3


def test_a_queue_limit_of_zero_holds_every_run(journal: Journal) -> None:
    dep = deploy(journal, "zero")
    journal.deployments.set_queue_limit("zero", 0)
    run = schedule(journal, dep)
    assert claim(journal) is None and claim(journal, queues=("zero",)) is None
    assert journal.get_flow_run(run.id).state_name == "Scheduled"
    journal.deployments.set_queue_limit("zero", 1)
    assert claimed_id(journal) == run.id


def test_a_claim_records_the_worker_its_owner_and_a_lease(journal: Journal) -> None:
    run = schedule(journal, deploy(journal))
    owner = Owner(ELSEWHERE, 4242, "boot:77")
    before = clock.now_ms()
    claimed = journal.workers.claim("worker-7", [], owner, "token-7")
    after = clock.now_ms()
    assert claimed is not None and claimed.id == run.id
    assert (claimed.state_type, claimed.state_name) == (P, "Pending")
    assert claimed.version == run.version + 1
    assert (claimed.worker_name, claimed.lease_token, claimed.owner) == (
        "worker-7",
        "token-7",
        owner,
    )
    lease_ms = int(journal.settings.lease_seconds * 1000)
    assert claimed.lease_expires_ms is not None
    assert before + lease_ms <= claimed.lease_expires_ms <= after + lease_ms
    last = journal.history(run.id)[-1]
    assert (last.from_type, last.to_type, last.name, last.version) == (S, P, "Pending", 2)
    assert "worker-7" in last.message
    assert [r.id for r in journal.workers.held_by("worker-7")] == [run.id]
    assert journal.workers.held_by("worker-8") == []
    assert_folds(journal, run.id)


def test_a_heartbeat_renews_the_leases_of_the_runs_its_worker_holds(journal: Journal) -> None:
    journal.workers.register("w", remote(), [], 4)
    dep = deploy(journal)
    now = clock.now_ms()
    mine = [schedule(journal, dep, now - 3).id, schedule(journal, dep, now - 2).id]
    theirs = schedule(journal, dep, now - 1).id
    assert [claimed_id(journal, "w"), claimed_id(journal, "w"), claimed_id(journal, "v")] == [
        *mine,
        theirs,
    ]
    with sqlite3.connect(journal.path) as conn:
        conn.execute("UPDATE flow_runs SET lease_expires_ms = 5")
    registered = journal.workers.get("w")
    assert registered is not None
    time.sleep(0.002)  # so that the heartbeat's time differs
    journal.workers.heartbeat("w")
    record = journal.workers.get("w")
    assert record is not None and record.heartbeat_ms > registered.heartbeat_ms
    assert record.held == 2
    leases = {r: journal.get_flow_run(r).lease_expires_ms for r in (*mine, theirs)}
    assert all(leases[r] > clock.now_ms() for r in mine)
    assert leases[theirs] == 5


# -- claims racing from separate connections -------------------------------------------


def in_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(k)`` in ``count`` threads started together; re-raise the first error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(k: int) -> None:
        try:
            barrier.wait(timeout=10)
            target(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a claiming thread did not finish in time"
    if errors:
        raise errors[0]


def test_claims_racing_from_separate_connections_take_every_run_once(
    journal: Journal, db: Path
) -> None:
    deps = [deploy(journal, q) for q in ("a", "b")]
    ids = {schedule(journal, deps[i % 2]).id for i in range(120)}
    got: dict[str, list[str]] = {}

    def claimer(k: int) -> None:
        own = Journal(db, Settings.from_env())  # a connection (and writer) of its own
        try:
            name, mine = f"w{k}", []
            while (run := own.workers.claim(name, [], remote(k), new_id())) is not None:
                mine.append(run.id)
            got[name] = mine
        finally:
            own.close()

    in_threads(4, claimer)
    claimed = [run_id for mine in got.values() for run_id in mine]
    assert len(claimed) == len(ids) and set(claimed) == ids  # each run once, none left
    for worker, mine in got.items():
        for run_id in mine:
            run = journal.get_flow_run(run_id)
            assert (run.state_name, run.worker_name) == ("Pending", worker)
            claims = [t for t in journal.history(run_id) if t.to_type is P]
            assert len(claims) == 1 and worker in claims[0].message
            assert_folds(journal, run_id)


def test_claims_racing_from_separate_connections_keep_a_queue_limit(
    journal: Journal, db: Path
) -> None:
    limit = 2
    dep = deploy(journal, "lim")
    journal.deployments.set_queue_limit("lim", limit)
    ids = [schedule(journal, dep).id for _ in range(30)]
    seen: list[int] = []  # the queue's active count each claimer saw right after a claim
    deadline = time.monotonic() + 25

    def worker(k: int) -> None:
        own = Journal(db, Settings.from_env())
        try:
            while time.monotonic() < deadline:
                run = own.workers.claim(f"w{k}", ["lim"], remote(k), new_id())
                if run is None:
                    if own.deployments.queue("lim").scheduled == 0:
                        return
                    time.sleep(0.001)
                    continue
                seen.append(own.deployments.queue("lim").active)
                run = own.claim_flow_run(run, remote(k), new_id())
                time.sleep(0.004)  # the run "executes" a little
                own.finish_flow_run(run, StateType.COMPLETED, "Completed")
            raise AssertionError("the runs were not all claimed in time")
        finally:
            own.close()

    in_threads(4, worker)
    assert all(journal.get_flow_run(r).state_name == "Completed" for r in ids)
    assert max(seen) <= limit
    intervals = []
    for run_id in ids:
        history = journal.history(run_id)
        [claimed] = [t for t in history if t.to_type is P]
        [ended] = [t for t in history if t.to_type is StateType.COMPLETED]
        intervals.append((claimed.ts_ms, ended.ts_ms))
        assert "claimed by worker" in claimed.message
    assert most_at_once(intervals) == limit  # reached, never passed


# -- the tables against a model ------------------------------------------------------------

QUEUES = ("q0", "q1")
WORKERS = ("w0", "w1", "w2")
ACTIVE = ("Pending", "Running", "Cancelling")
LIMITS = st.sampled_from([None, None, 0, 1, 2, 3])
ASKED = st.sampled_from([(), (), (), ("q0",), ("q1",), ("q0", "q1"), ("nonesuch",)])
MAX_AUTO = st.sampled_from([None, None, 0, 1, 2, 3])  # None: the flow's option not recorded

_schema: bytes | None = None


def event(what: str) -> None:
    """Count ``what`` in hypothesis's statistics (when hypothesis runs the machine)."""
    with contextlib.suppress(InvalidArgument):
        hypothesis_event(what)


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


class Drawn:
    """Stands in for ``st.data()`` in a fixed run: every draw gives ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, strategy: Any) -> Any:
        return self.value


@dataclasses.dataclass
class Modelled:
    """What the model knows of one run."""

    id: str
    queue: str
    name: str  # state name
    scheduled_ms: int
    due: bool = True
    worker: str | None = None  # who claimed it (None: resumed by hand, or not held)
    token: str | None = None
    auto_resumes: int = 0
    max_auto: int | None = None

    def may_resume_automatically(self) -> bool:
        allowed = DEFAULT_AUTO_RESUMES if self.max_auto is None else self.max_auto
        return self.name == "Crashed" and self.auto_resumes < allowed


class WorkQueuesMachine(RuleBasedStateMachine):
    """Claims, resumes and cancels on real tables, against a model of runs and queues."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="persevere-workers-"))
        try:
            self.journal = fresh_journal(self.folder)
        except BaseException:  # teardown will not run
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        # A clock that moves one millisecond per reading: ids and due times never tie, so
        # which run a claim takes follows from the steps alone (hypothesis replays them).
        self.real_now = clock.now_ms
        ticks = itertools.count(clock.now_ms())
        clock.now_ms = lambda: next(ticks)
        self.runs: dict[str, Modelled] = {}
        self.limit: dict[str, int | None] = dict.fromkeys(QUEUES)
        self.paused = dict.fromkeys(QUEUES, False)
        self.deployments: dict[str, Deployment] = {}

    def teardown(self) -> None:
        try:
            assert self.journal.integrity_check() == "ok"
        finally:
            self.journal.close()
            clock.now_ms = self.real_now
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------

    def named(self, *names: str) -> list[str]:
        return sorted(r.id for r in self.runs.values() if r.name in names)

    def active(self, queue: str) -> int:
        return sum(1 for r in self.runs.values() if r.queue == queue and r.name in ACTIVE)

    def has_room(self, queue: str) -> bool:
        limit = self.limit[queue]
        return limit is None or self.active(queue) < limit

    def next_claim(self, queues: tuple[str, ...]) -> Modelled | None:
        eligible = [
            r
            for r in self.runs.values()
            if r.name == "Scheduled"
            and r.due
            and (not queues or r.queue in queues)
            and not self.paused[r.queue]
            and self.has_room(r.queue)
        ]
        return min(eligible, key=lambda r: (r.scheduled_ms, r.id), default=None)

    def pick(self, data: Any, ids: list[str]) -> tuple[Modelled, FlowRun] | None:
        """One of the runs ``ids``, drawn; None if there is none (the rule does nothing).

        Rules have no preconditions: hypothesis would retry its choice of rule
        until one is enabled, which skews the programs towards a few rules.
        """
        if not ids:
            return None
        run_id = data.draw(st.sampled_from(ids))
        return self.runs[run_id], self.journal.get_flow_run(run_id)

    def rescheduled(self, model: Modelled, run: FlowRun) -> None:
        assert (run.state_type, run.state_name) == (S, "Scheduled")
        assert run.scheduled_ms is not None and run.scheduled_ms <= clock.now_ms()
        model.name, model.worker, model.token = "Scheduled", None, None
        model.scheduled_ms, model.due = run.scheduled_ms, True

    # -- rules -----------------------------------------------------------------------

    @initialize(
        l0=LIMITS,
        l1=LIMITS,
        p0=st.sampled_from([False, False, True]),
        runs=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=5),
    )
    def make_queues(self, l0: int | None, l1: int | None, p0: bool, runs: list[str]) -> None:
        """Two queues, and runs waiting on them (every example starts with work to claim:
        hypothesis leaves some rules out of each example, ``schedule`` too)."""
        for queue, limit, paused in zip(QUEUES, (l0, l1), (p0, False), strict=True):
            self.deployments[queue] = deploy(self.journal, queue, "model.py:f")
            self.change_queue(queue, paused, limit)
        for queue in runs:
            self.schedule(queue, 1, False)

    @rule(
        queue=st.sampled_from(QUEUES),
        count=st.integers(1, 2),
        later=st.sampled_from([False, False, False, True]),
    )
    def schedule(self, queue: str, count: int, later: bool) -> None:
        """``count`` runs on ``queue``, due now (or in an hour)."""
        for _ in range(count):
            at = clock.now_ms() + 3_600_000 if later else None
            run = schedule(self.journal, self.deployments[queue], at)
            assert run.scheduled_ms is not None
            self.runs[run.id] = Modelled(run.id, queue, "Scheduled", run.scheduled_ms, not later)

    @rule(
        worker=st.sampled_from(WORKERS),
        queues=ASKED,
        limit=st.integers(1, 3),
        max_auto=MAX_AUTO,
        died=st.booleans(),
        start=st.sampled_from([True, True, False]),
    )
    def worker_round(
        self,
        worker: str,
        queues: tuple[str, ...],
        limit: int,
        max_auto: int | None,
        died: bool,
        start: bool,
    ) -> None:
        """One round of a worker's loop. If ``died``, the processes of the runs it holds
        have died: they crash. Then it resumes every crashed run it may, and claims runs
        while it holds fewer than ``limit``; if ``start``, each claimed run's process
        takes it over (Running, recording the flow's ``max_auto`` option)."""
        if died:
            for run_id in self.named(*ACTIVE):
                if self.runs[run_id].worker == worker:
                    self.crash(Drawn(run_id))
        for run in self.offered():
            self.resume(run)
        held = sum(1 for r in self.runs.values() if r.name in ACTIVE and r.worker == worker)
        for _ in range(limit - held):
            claimed = self.claim(worker, queues)
            if claimed is None:
                break
            if start:
                self.start(Drawn(claimed.id), max_auto)

    def claim(self, worker: str, queues: tuple[str, ...]) -> Modelled | None:
        """``worker`` claims the run the model says (or none)."""
        expected = self.next_claim(queues)
        token = new_id()
        run = self.journal.workers.claim(worker, list(queues), remote(WORKERS.index(worker)), token)
        if expected is None:
            assert run is None, f"{worker} claimed {run} with nothing claimable on {queues}"
            event("claim: nothing claimable")
            return None
        assert run is not None and run.id == expected.id, f"{worker} claimed {run}, not {expected}"
        assert (run.state_name, run.worker_name, run.lease_token) == ("Pending", worker, token)
        expected.name, expected.worker, expected.token = "Pending", worker, token
        limit, active = self.limit[expected.queue], self.active(expected.queue)
        assert self.journal.deployments.queue(expected.queue).active == active
        assert limit is None or active <= limit, f"queue {expected.queue}: {active} > {limit}"
        event("claim: at its queue's limit now" if active == limit else "claim: under the limit")
        return expected

    def start(self, data: Any, max_auto: int | None) -> None:
        """The process of a claimed run takes it over: Pending -> Running."""
        picked = self.pick(data, self.named("Pending"))
        if picked is None:
            return
        model, run = picked
        token = new_id()
        owner = remote(WORKERS.index(model.worker or ""))
        self.journal.claim_flow_run(run, owner, token, "Running", max_auto)
        model.name, model.token, model.max_auto = "Running", token, max_auto

    def offered(self) -> list[FlowRun]:
        """The crashed runs a worker may resume, checked against the model."""
        offered = sorted(self.journal.workers.crashed_to_resume(), key=lambda r: r.id)
        expected = {r.id for r in self.runs.values() if r.may_resume_automatically()}
        assert {r.id for r in offered} == expected
        if len(expected) < len(self.named("Crashed")):
            event("resume: a crashed run is not offered any more")
        return offered

    def resume(self, run: FlowRun) -> None:
        """A worker resumes a crashed run automatically: Crashed -> Scheduled, counted."""
        again = self.journal.workers.reschedule(run, "resumed automatically", automatic=True)
        model = self.runs[run.id]
        model.auto_resumes += 1
        assert again.auto_resumes == model.auto_resumes
        self.rescheduled(model, again)
        event(f"resume: automatic resume number {model.auto_resumes}")

    @rule(data=st.data())
    def finish(self, data: Any) -> None:
        """A run's process completes it (a Cancelling one too: it got there first)."""
        picked = self.pick(data, self.named("Running", "Cancelling"))
        if picked is None:
            return
        model, run = picked
        self.journal.finish_flow_run(run, StateType.COMPLETED, "Completed")
        model.name, model.token = "Completed", None

    @rule(data=st.data())
    def crash(self, data: Any) -> None:
        """A run's process dies; whoever notices journals it (as ``recovery.reap`` does)."""
        picked = self.pick(data, self.named(*ACTIVE))
        if picked is None:
            return
        model, run = picked
        if run.state_name == "Cancelling":
            self.journal.workers.finish_cancel(run, "its process is gone")
            model.name = "Cancelled"
        else:
            self.journal.mark_crashed(run, "its process is gone")
            model.name = "Crashed"
        self.journal.writer.release(run.id)
        model.token = None

    @rule(data=st.data())
    def release(self, data: Any) -> None:
        """A worker that stops puts a run back on its queue: not an automatic resume."""
        picked = self.pick(data, self.named("Crashed"))
        if picked is None:
            return
        model, run = picked
        self.rescheduled(model, self.journal.workers.reschedule(run, "released", automatic=False))

    @rule(data=st.data(), max_auto=MAX_AUTO)
    def resume_by_hand(self, data: Any, max_auto: int | None) -> None:
        """``persevere runs resume``: the run executes in that process, off any worker."""
        picked = self.pick(data, self.named("Crashed"))
        if picked is None:
            return
        model, run = picked
        pending = self.journal.reschedule_flow_run(run, "resumed by hand")
        token = new_id()
        self.journal.claim_flow_run(pending, remote(99), token, "Running", max_auto)
        model.name, model.worker, model.token = "Running", None, token
        model.auto_resumes, model.max_auto = 0, max_auto

    @rule(data=st.data())
    def cancel(self, data: Any) -> None:
        """A cancel request for a run, most often one that executes."""
        picked = self.pick(data, self.named("Running", "Cancelling") or sorted(self.runs))
        if picked is None:
            return
        model, run = picked
        if model.name in ("Scheduled", "Pending"):
            after = self.journal.workers.request_cancel(run, "cancelled")
            assert after.state_name == "Cancelled"
            model.name, model.token = "Cancelled", None
        elif model.name == "Running":
            after = self.journal.workers.request_cancel(run, "cancelled")
            assert (after.state_name, after.version) == ("Cancelling", run.version + 1)
            model.name = "Cancelling"
        elif model.name == "Cancelling":
            assert self.journal.workers.request_cancel(run, "again") == run
        elif model.may_resume_automatically():  # cancelled on its way back to a worker
            after = self.journal.workers.request_cancel(run, "cancelled")
            assert after.state_name == "Cancelled"
            assert [t.name for t in self.journal.history(run.id)][-2:] == [
                "Scheduled",
                "Cancelled",
            ]
            model.name, model.token = "Cancelled", None
        else:
            with pytest.raises(RunNotCancellable):
                self.journal.workers.request_cancel(run, "too late")

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans(), limit=LIMITS)
    def change_queue(self, queue: str, paused: bool, limit: int | None) -> None:
        """Pause or resume a queue, and set its limit."""
        assert bool(self.journal.deployments.pause_queue(queue, paused).paused) is paused
        assert self.journal.deployments.set_queue_limit(queue, limit).concurrency_limit == limit
        self.paused[queue], self.limit[queue] = paused, limit

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def the_tables_are_the_model(self) -> None:
        rows = {r.id: r for r in self.journal.list_flow_runs(limit=10_000)}
        assert set(rows) == set(self.runs)
        for model in self.runs.values():
            row = rows[model.id]
            assert row.state_name == model.name, model
            assert row.auto_resumes == model.auto_resumes, model
            assert row.lease_token == model.token, model  # one holder at most, the model's
            if model.name in ACTIVE:
                assert row.worker_name == model.worker, model
            elif model.name == "Scheduled":
                assert row.worker_name is None, model
        for worker in WORKERS:
            held = sorted(r.id for r in self.journal.workers.held_by(worker))
            assert held == sorted(
                r.id for r in self.runs.values() if r.name in ACTIVE and r.worker == worker
            )
        for queue in QUEUES:
            record = self.journal.deployments.queue(queue)
            assert record.active == self.active(queue)
            assert record.scheduled == len(
                [r for r in self.runs.values() if r.queue == queue and r.name == "Scheduled"]
            )
            assert (bool(record.paused), record.concurrency_limit) == (
                self.paused[queue],
                self.limit[queue],
            )

    @invariant()
    def crashed_runs_are_offered_while_they_may_be_resumed(self) -> None:
        self.offered()

    @invariant()
    def every_history_folds(self) -> None:
        for run_id in self.runs:
            assert_folds(self.journal, run_id)


WorkQueuesMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=60,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWorkQueuesMachine = WorkQueuesMachine.TestCase


# -- automatic resumes, counted and capped ----------------------------------------------


def crash_and_offer(journal: Journal, run: FlowRun) -> list[str]:
    journal.mark_crashed(journal.get_flow_run(run.id), "its process is gone")
    journal.writer.release(run.id)
    return [r.id for r in journal.workers.crashed_to_resume()]


def test_automatic_resumes_stop_after_the_flows_allowance(journal: Journal) -> None:
    run = running(journal)
    for attempt in range(1, DEFAULT_AUTO_RESUMES + 1):
        assert crash_and_offer(journal, run) == [run.id]
        crashed = journal.get_flow_run(run.id)
        again = journal.workers.reschedule(crashed, f"resumed ({attempt})", automatic=True)
        assert again.auto_resumes == attempt and again.worker_name is None
        pending = claim(journal)
        assert pending is not None and pending.id == run.id
        journal.claim_flow_run(pending, remote(), new_id())
    assert crash_and_offer(journal, run) == []  # three in a row: it stays Crashed
    # A release by a worker that stops is not counted; a resume by hand starts a new count.
    crashed = journal.get_flow_run(run.id)
    released = journal.workers.reschedule(crashed, "released", automatic=False)
    assert released.auto_resumes == DEFAULT_AUTO_RESUMES
    pending = claim(journal)
    assert pending is not None
    journal.claim_flow_run(pending, remote(), new_id())
    assert crash_and_offer(journal, run) == []
    by_hand = journal.reschedule_flow_run(journal.get_flow_run(run.id), "resumed by hand")
    assert by_hand.auto_resumes == 0
    journal.claim_flow_run(by_hand, remote(), new_id())
    assert crash_and_offer(journal, run) == [run.id]
    assert_folds(journal, run.id)


def test_a_flows_max_auto_resumes_is_what_counts(journal: Journal) -> None:
    never, once = running(journal), running(journal)
    for run, allowed in ((never, 0), (once, 1)):
        journal.mark_crashed(run, "gone")
        again = journal.reschedule_flow_run(journal.get_flow_run(run.id), "by hand")
        journal.claim_flow_run(again, remote(), new_id(), "Running", allowed)
        journal.mark_crashed(journal.get_flow_run(run.id), "gone")
        assert journal.get_flow_run(run.id).max_auto_resumes == allowed
    assert [r.id for r in journal.workers.crashed_to_resume()] == [once.id]


def test_subflows_and_runs_on_no_queue_are_not_resumed_by_workers(journal: Journal) -> None:
    parent = running(journal)
    child = journal.create_flow_run(
        flow_name="child", entrypoint=None, parameters="{}", parent_flow_run_id=parent.id
    )
    loose = journal.create_flow_run(flow_name="loose", entrypoint=None, parameters="{}")
    for run in (child, loose):
        journal.mark_crashed(run, "gone")
    assert journal.workers.crashed_to_resume() == []


# -- cancel requests ---------------------------------------------------------------------


def test_a_run_that_is_not_executing_is_cancelled_at_once(journal: Journal) -> None:
    dep = deploy(journal)
    later = schedule(journal, dep, clock.now_ms() + 60_000)
    schedule(journal, dep)
    pending = claim(journal)
    assert pending is not None
    for run in (later, pending):
        after = journal.workers.request_cancel(run, "not needed any more")
        assert (after.state_type, after.state_name) == (StateType.CANCELLED, "Cancelled")
        assert after.state_message == "not needed any more" and after.version == run.version + 1
        assert after.lease_token is None and after.ended_ms is not None
        assert journal.hooks.owed(run.id) == {}  # it never started: no hooks owed
        assert_folds(journal, run.id)
    assert claim(journal) is None  # a cancelled run is not claimed
    assert journal.deployments.queue("default").active == 0


def tasks_in_every_state(journal: Journal, run: FlowRun) -> None:
    """Task runs of a Running run held by this journal: completed, running, waiting for
    a retry, waiting for a slot."""
    done = journal.start_task_run(run.id, 0, "done", 0, "task")
    journal.finish_task_run(done, StateType.COMPLETED, "Completed")
    journal.start_task_run(run.id, 1, "busy", 0, "task")
    retry = journal.start_task_run(run.id, 2, "retry", 0, "task")
    journal.flush()
    journal.await_retry(retry, clock.now_ms() + 60_000, "boom")
    journal.await_slot(run.id, 3, "slot", 0, None, "waiting for a slot")


def task_states(journal: Journal, run_id: str) -> dict[str, str]:
    return {t.task_key: t.state_name for t in journal.task_runs(run_id)}


def test_a_paused_run_is_cancelled_at_once_with_its_unfinished_task_runs(
    journal: Journal,
) -> None:
    run = running(journal)
    tasks_in_every_state(journal, run)
    assert task_states(journal, run.id) == {
        "done": "Completed",
        "busy": "Running",
        "retry": "AwaitingRetry",
        "slot": "AwaitingConcurrencySlot",
    }
    paused = journal.finish_flow_run(run, StateType.PAUSED, "Paused", "waiting for input")
    after = journal.workers.request_cancel(paused, "stop waiting")
    assert after.state_name == "Cancelled"
    assert task_states(journal, run.id) == dict.fromkeys(("busy", "retry", "slot"), "Cancelled") | {
        "done": "Completed"
    }
    for task in journal.task_runs(run.id):
        history = [(t.to_type, t.name) for t in journal.history(task.id)]
        assert fold(history) == (task.state_type, task.state_name, task.version)
    assert_folds(journal, run.id)


def test_a_running_run_becomes_cancelling_and_keeps_its_lease(journal: Journal) -> None:
    run = running(journal)
    tasks_in_every_state(journal, run)
    run = journal.get_flow_run(run.id)
    cancelling = journal.workers.request_cancel(run, "stop, please")
    assert (cancelling.state_type, cancelling.state_name) == (R, "Cancelling")
    assert cancelling.version == run.version + 1 and cancelling.state_message == "stop, please"
    assert (cancelling.lease_token, cancelling.owner, cancelling.worker_name) == (
        run.lease_token,
        run.owner,
        run.worker_name,
    )
    assert cancelling.ended_ms is None
    assert task_states(journal, run.id)["busy"] == "Running"  # its process stops them
    assert journal.hooks.owed(run.id) == {}
    assert [r.id for r in journal.workers.held_by("w")] == [run.id]
    # Asking again changes nothing.
    again = journal.workers.request_cancel(cancelling, "stop!")
    assert again == cancelling and len(journal.history(run.id)) == cancelling.version
    # Its process can still write under its lease: the cancel did not take the run from it.
    journal.flush()
    assert not journal.writer.lost(run.id)
    # Whoever stopped its process ends the cancel: hooks owed, task runs cancelled.
    cancelled = journal.workers.finish_cancel(cancelling, "its process was stopped")
    assert (cancelled.state_type, cancelled.state_name) == (StateType.CANCELLED, "Cancelled")
    assert cancelled.lease_token is None and cancelled.ended_ms is not None
    assert journal.hooks.owed(run.id) == {run.id: [(cancelling.version + 1, "on_cancellation")]}
    states = task_states(journal, run.id)
    assert states == dict.fromkeys(("busy", "retry", "slot"), "Cancelled") | {"done": "Completed"}
    assert journal.workers.held_by("w") == []
    assert_folds(journal, run.id)


@pytest.mark.parametrize(
    ("target", "name"),
    [
        (StateType.COMPLETED, "Completed"),
        (StateType.FAILED, "Failed"),
        (StateType.FAILED, "TimedOut"),
        (StateType.CANCELLED, "Cancelled"),
    ],
)
def test_a_run_that_has_ended_cannot_be_cancelled(
    journal: Journal, target: StateType, name: str
) -> None:
    run = running(journal)
    ended = journal.finish_flow_run(run, target, name, "it ended")
    with pytest.raises(RunNotCancellable) as info:
        journal.workers.request_cancel(ended, "too late")
    assert info.value.run_id == run.id and name in str(info.value)
    assert journal.get_flow_run(run.id) == ended


def test_reap_ends_a_cancelling_run_of_a_dead_process_cancelled(journal: Journal) -> None:
    dead = dead_local_owner()
    asked = running(journal, dead)
    plain = running(journal, dead)
    for run in (asked, plain):
        journal.writer.release(run.id)  # from now on, as if the dead process held them
    cancelling = journal.workers.request_cancel(asked, "stop")
    reaped = {r.id: r for r in reap(journal)}
    assert set(reaped) == {asked.id, plain.id}
    assert (reaped[asked.id].state_type, reaped[asked.id].state_name) == (
        StateType.CANCELLED,
        "Cancelled",
    )
    assert "is gone" in reaped[asked.id].state_message
    assert journal.hooks.owed(asked.id) == {asked.id: [(cancelling.version + 1, "on_cancellation")]}
    assert (reaped[plain.id].state_type, reaped[plain.id].state_name) == (
        StateType.CRASHED,
        "Crashed",
    )
    assert reap(journal) == []
    for run_id in reaped:
        assert_folds(journal, run_id)


def test_reap_waits_for_the_process_of_a_cancelling_run_to_be_gone(journal: Journal) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(this_process().host, sleeper.pid, process_start(sleeper.pid) or "?")
        run = running(journal, owner)
        journal.writer.release(run.id)
        cancelling = journal.workers.request_cancel(run, "stop")
        assert reap(journal) == []  # its process lives: it is still being stopped
        assert journal.get_flow_run(run.id) == cancelling
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    [cancelled] = reap(journal)
    assert (cancelled.id, cancelled.state_name) == (run.id, "Cancelled")


def test_the_subflow_of_a_run_cancelled_after_its_process_died_ends_cancelled(
    journal: Journal,
) -> None:
    """The run's process was killed (SIGKILL after the grace period) while its subflow ran:
    ``reap`` ends the run Cancelled, and its subflow run must not be left Crashed."""
    dead = dead_local_owner()
    parent = running(journal, dead)
    call = journal.start_task_run(parent.id, 0, "inner", 0, "flow")
    journal.flush()
    child = journal.create_flow_run(
        flow_name="inner",
        entrypoint=None,
        parameters="{}",
        parent_flow_run_id=parent.id,
        parent_task_run_id=call.id,
        owner=dead,
    )
    child = journal.claim_flow_run(child, dead, new_id())
    for run in (parent, child):
        journal.writer.release(run.id)
    journal.workers.request_cancel(journal.get_flow_run(parent.id), "stop")
    reap(journal)
    assert journal.get_flow_run(parent.id).state_name == "Cancelled"
    assert task_states(journal, parent.id) == {"inner": "Cancelled"}
    after = journal.get_flow_run(child.id)
    assert after.state_name == "Cancelled", (
        f"the subflow run of a cancelled run ended {after.state_name}: {after.state_message}"
    )


# -- is a worker live? ------------------------------------------------------------------------


def test_is_live_by_heartbeat_and_on_this_host_by_process(journal: Journal) -> None:
    lease_ms = 30_000
    me, dead = this_process(), dead_local_owner()
    owners = {
        "me": me,
        "dead": dead,
        "reused": Owner(me.host, me.pid, me.started + "-before"),  # our pid, another process
        "far": Owner(ELSEWHERE, dead.pid, "boot:1"),  # elsewhere: its pid means nothing here
    }
    for name, owner in owners.items():
        journal.workers.register(name, owner, [], 1)
    records = {name: journal.workers.get(name) for name in owners}
    now = max(r.heartbeat_ms for r in records.values() if r is not None)
    live = {n: is_live(r, now, lease_ms) for n, r in records.items() if r is not None}
    assert live == {"me": True, "dead": False, "reused": False, "far": True}
    for name in ("me", "far"):
        record = records[name]
        assert record is not None
        assert is_live(record, record.heartbeat_ms + lease_ms, lease_ms)
        assert not is_live(record, record.heartbeat_ms + lease_ms + 1, lease_ms)  # stale
    journal.workers.stopped("me")
    stopped = journal.workers.get("me")
    assert stopped is not None and stopped.stopped_ms is not None
    assert not is_live(stopped, stopped.heartbeat_ms, lease_ms)
    journal.workers.register("me", me, [], 1)  # a worker that starts again is live again
    again = journal.workers.get("me")
    assert again is not None and is_live(again, again.heartbeat_ms, lease_ms)


# -- a cancel seen at a lease renewal ------------------------------------------------------------


@pytest.fixture
def short_lease_journal(db: Path) -> Iterator[Journal]:
    """A second journal on the test's file whose leases last 0.3 s (renewed every 0.1 s)."""
    own = Journal(db, dataclasses.replace(Settings.from_env(), lease_seconds=0.3))
    yield own
    own.close()


def test_a_lease_renewal_that_finds_the_run_cancelling_calls_the_watcher_once(
    journal: Journal, short_lease_journal: Journal
) -> None:
    holder = short_lease_journal
    schedule(journal, deploy(journal))
    pending = claim(journal)
    assert pending is not None
    run = holder.claim_flow_run(pending, this_process(), new_id())
    calls: list[float] = []
    holder.writer.watch_cancel(run.id, lambda: calls.append(time.monotonic()))

    def renewed_after(ms: int | None) -> Callable[[], bool]:
        return lambda: (journal.get_flow_run(run.id).lease_expires_ms or 0) > (ms or 0)

    wait_for(renewed_after(run.lease_expires_ms), timeout=5)
    assert calls == []  # renewals of a Running run do not call it
    cancelling = journal.workers.request_cancel(journal.get_flow_run(run.id), "from elsewhere")
    wait_for(lambda: calls, timeout=5)
    for _ in range(3):  # renewals go on, the watcher is not called again
        wait_for(renewed_after(journal.get_flow_run(run.id).lease_expires_ms), timeout=5)
    assert len(calls) == 1
    assert journal.get_flow_run(run.id).state_name == "Cancelling"
    assert journal.get_flow_run(run.id).lease_token == cancelling.lease_token


# -- a worker's child: the handoff -------------------------------------------------------------


def test_a_workers_child_runs_its_claim_only_under_its_token(journal: Journal) -> None:
    journal.deployments.put(
        flow_name="instant",
        name="on-default",
        entrypoint=f"{CANCELLABLE}:instant",
        parameters={},
        signature={},
    )
    dep = journal.deployments.get("instant/on-default")
    waiting = schedule(journal, dep)
    assert run_claimed(waiting.id, "any-token") == 0  # not claimed: not ours
    assert journal.get_flow_run(waiting.id) == waiting
    claimed = journal.workers.claim("w", [], remote(), "the-token")
    assert claimed is not None
    assert run_claimed(claimed.id, "another-token") == 0
    assert journal.get_flow_run(claimed.id) == claimed
    assert len(journal.history(claimed.id)) == 2
    # Under its own token the run executes here, from Pending.
    assert run_claimed(claimed.id, "the-token") == 0
    done = journal.get_flow_run(claimed.id)
    assert (done.state_name, done.run_count, done.max_auto_resumes) == ("Completed", 1, 3)
    assert journal.load_result(done.result_id or "") == 2
    assert [t.name for t in journal.history(done.id)] == [
        "Scheduled",
        "Pending",
        "Running",
        "Completed",
    ]
    assert run_claimed(claimed.id, "the-token") == 0  # a second start does nothing
    assert journal.get_flow_run(claimed.id) == done


@pytest.mark.parametrize(
    ("flow_name", "entrypoint", "why"),
    [
        ("f", "tests/flows/no_such_file.py:f", "no such file"),
        ("f", "no_such_module_for_persevere:f", "cannot import module"),
        ("f", f"{CANCELLABLE}:no_such_flow", "has no 'no_such_flow'"),
        ("renamed", f"{CANCELLABLE}:instant", "is now flow 'instant'"),
    ],
)
def test_a_claimed_run_whose_flow_cannot_be_loaded_fails(
    journal: Journal, flow_name: str, entrypoint: str, why: str
) -> None:
    dep = journal.deployments.put(
        flow_name=flow_name, name="d", entrypoint=entrypoint, parameters={}, signature={}
    )
    schedule(journal, dep)
    claimed = journal.workers.claim("w", [], remote(), "token")
    assert claimed is not None
    assert run_claimed(claimed.id, "token") == 1
    failed = journal.get_flow_run(claimed.id)
    assert (failed.state_type, failed.state_name) == (StateType.FAILED, "Failed")
    assert failed.state_message.startswith("cannot load the flow: ") and why in failed.state_message
    assert failed.lease_token is None
    assert journal.workers.crashed_to_resume() == []  # failed, not crashed: not tried again
    assert_folds(journal, failed.id)


# -- SIGTERM and cancels reaching a flow run that executes (real processes) ---------------------


class Side:
    """The side file the flows of ``tests/flows/cancellable.py`` write to."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "side.txt"

    def lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def side(tmp_path: Path) -> Side:
    return Side(tmp_path)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed if still there when it ends."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def start(
    processes: list[subprocess.Popen[str]], db: Path, side: Side, command: list[str], **env: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        command,
        env=cli_env(db, CANCELLABLE_SIDE_FILE=str(side.path), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    return process


def persevere_run(flow_name: str) -> list[str]:
    return [sys.executable, "-m", "persevere", "run", f"{CANCELLABLE}:{flow_name}"]


def napping(
    journal: Journal, side: Side, process: subprocess.Popen[str], flow_name: str
) -> FlowRun:
    """The top-level run of ``flow_name`` once its task ``nap`` has started."""
    wait_for(lambda: process.poll() is not None or "nap started" in side.lines())
    assert process.poll() is None, process.communicate()
    [run] = [r for r in journal.list_flow_runs(flow_name=flow_name) if r.parent_flow_run_id is None]
    assert run.state_name == "Running"
    return run


def ended(process: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    """The process's exit code, stdout and stderr, once it has ended."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_runs_cancel_stops_a_persevere_run_process_and_ends_the_run_cancelled(
    journal: Journal, db: Path, side: Side, processes: list[subprocess.Popen[str]]
) -> None:
    process = start(processes, db, side, persevere_run("sleepy"))
    run = napping(journal, side, process, "sleepy")
    cancel = run_cli(db, "runs", "cancel", run.id, "--grace-seconds", "10", timeout=30)
    assert cancel.returncode == 0, cancel.stderr
    assert f"run {run.id} Cancelled" in cancel.stderr
    code, _, err = ended(process)
    assert code == 143, err
    assert f"run {run.id} Cancelled" in err
    after = journal.get_flow_run(run.id)
    assert (after.state_type, after.state_name) == (StateType.CANCELLED, "Cancelled")
    assert task_states(journal, run.id) == {"quick": "Completed", "nap": "Cancelled"}
    assert "on_cancellation sleepy Cancelled" in side.lines()
    assert not any(line.startswith("on_crashed") for line in side.lines())
    assert journal.hooks.owed(run.id) == {}  # its process ran them
    assert_folds(journal, run.id)


def test_a_cancelled_run_stops_its_running_subflow_cancelled_too(
    journal: Journal, db: Path, side: Side, processes: list[subprocess.Popen[str]]
) -> None:
    process = start(processes, db, side, persevere_run("outer"))
    run = napping(journal, side, process, "outer")
    cancel = run_cli(db, "runs", "cancel", run.id, timeout=30)
    assert cancel.returncode == 0, cancel.stderr
    code, _, err = ended(process)
    assert code == 143, err
    assert journal.get_flow_run(run.id).state_name == "Cancelled"
    [child] = [r for r in journal.list_flow_runs(flow_name="inner")]
    assert child.parent_flow_run_id == run.id
    # The cancelled run's task runs in flight end Cancelled, the call of its subflow too.
    assert task_states(journal, run.id) == {"quick": "Completed", "inner": "Cancelled"}
    assert task_states(journal, child.id) == {"nap": "Cancelled"}
    assert (child.state_type, child.state_name) == (StateType.CANCELLED, "Cancelled"), (
        child.state_message
    )
    assert "on_cancellation inner Cancelled" in side.lines()


def test_sigterm_without_a_cancel_crashes_the_run_and_a_resume_goes_on(
    journal: Journal, db: Path, side: Side, processes: list[subprocess.Popen[str]]
) -> None:
    process = start(processes, db, side, persevere_run("sleepy"))
    run = napping(journal, side, process, "sleepy")
    process.send_signal(signal.SIGTERM)
    code, _, err = ended(process)
    assert code == 143, err
    crashed = journal.get_flow_run(run.id)
    assert (crashed.state_type, crashed.state_name) == (StateType.CRASHED, "Crashed")
    assert crashed.state_message == "terminated by signal 15"
    assert f"run {run.id} Crashed: terminated by signal 15" in err
    assert task_states(journal, run.id) == {"quick": "Completed", "nap": "Crashed"}
    assert "on_crashed sleepy Crashed" in side.lines()
    resumed = run_cli(
        db, "runs", "resume", run.id, CANCELLABLE_SIDE_FILE=str(side.path), CANCELLABLE_NAP="0"
    )
    assert resumed.returncode == 0, resumed.stderr
    done = journal.get_flow_run(run.id)
    assert done.state_name == "Completed" and journal.load_result(done.result_id or "") == 1.0
    assert side.lines().count("quick ran") == 1  # replayed, not run again
    assert side.lines().count("nap started") == 2
    assert_folds(journal, run.id)


def test_a_program_calling_a_flow_journals_sigterm_and_then_dies_of_it(
    journal: Journal, db: Path, side: Side, processes: list[subprocess.Popen[str]]
) -> None:
    program = (
        f"import sys; sys.path.insert(0, {str(FLOWS)!r}); "
        "from cancellable import sleepy; sleepy(); print('not reached')"
    )
    process = start(processes, db, side, [sys.executable, "-c", program])
    run = napping(journal, side, process, "sleepy")
    process.send_signal(signal.SIGTERM)
    code, out, err = ended(process)
    assert code == -signal.SIGTERM, err  # as if it had no handler, once the run is journaled
    assert "not reached" not in out
    crashed = journal.get_flow_run(run.id)
    assert (crashed.state_name, crashed.state_message) == ("Crashed", "terminated by signal 15")
    assert task_states(journal, run.id) == {"quick": "Completed", "nap": "Crashed"}
    assert "on_crashed sleepy Crashed" in side.lines()
    owed = journal.hooks.owed(run.id)
    # The hooks ran before the process died; a resume must not run them again.
    resumed = run_cli(
        db, "runs", "resume", run.id, CANCELLABLE_SIDE_FILE=str(side.path), CANCELLABLE_NAP="0"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert side.lines().count("on_crashed sleepy Crashed") == 1, side.lines()
    assert owed == {}


def test_a_cancel_stops_a_process_that_waits_for_its_runs_retry(
    journal: Journal, db: Path, side: Side, processes: list[subprocess.Popen[str]]
) -> None:
    """``persevere run`` of a flow that failed and waits (a minute, in its process) for its
    retry: a cancel ends the run at once, and the process must not wait on for nothing."""
    process = start(processes, db, side, persevere_run("patient"))

    def waiting() -> FlowRun | None:
        runs = journal.list_flow_runs(flow_name="patient")
        return runs[0] if runs and runs[0].state_name == "AwaitingRetry" else None

    run = wait_for(waiting)
    assert isinstance(run, FlowRun)
    cancel = run_cli(db, "runs", "cancel", run.id, timeout=30)
    assert cancel.returncode == 0, cancel.stderr
    assert journal.get_flow_run(run.id).state_name == "Cancelled"
    try:
        code, _, err = ended(process, timeout=6)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"run {run.id} is Cancelled, but its `persevere run` process still waits for the "
            "retry 6 s later (it would until the retry time, 60 s after the failure)"
        )
    assert code != 0 and "Cancelled" in err, err
    assert side.lines().count("patient ran") == 1


def test_a_cancel_nobody_can_signal_is_seen_by_the_runs_process_at_a_lease_renewal(
    journal: Journal, db: Path, side: Side, processes: list[subprocess.Popen[str]]
) -> None:
    process = start(processes, db, side, persevere_run("sleepy"), PERSEVERE_LEASE_SECONDS="0.6")
    run = napping(journal, side, process, "sleepy")
    asked = time.monotonic()
    # As a canceller on another host would: journal the request, send no signal.
    cancelling = journal.workers.request_cancel(run, "cancel requested from another host")
    assert cancelling.state_name == "Cancelling"
    code, _, err = ended(process)
    assert code == 143, err
    assert time.monotonic() - asked < 10
    after = journal.get_flow_run(run.id)
    assert (after.state_name, after.state_message) == (
        "Cancelled",
        "cancel requested from another host",
    )
    assert task_states(journal, run.id) == {"quick": "Completed", "nap": "Cancelled"}
    assert "on_cancellation sleepy Cancelled" in side.lines()
    assert journal.hooks.owed(run.id) == {}
    assert_folds(journal, run.id)


def test_the_model_of_claims_is_not_vacuous() -> None:
    """A fixed run of the machine, with its invariants after each step, through a pause, a
    limit, automatic resumes up to their end, a release, a resume by hand and cancels."""
    machine = WorkQueuesMachine()

    def step(name: str, **kwargs: Any) -> None:
        getattr(machine, name)(**kwargs)
        machine.the_tables_are_the_model()
        machine.crashed_runs_are_offered_while_they_may_be_resumed()
        machine.every_history_folds()

    def state(run_id: str) -> str:
        return machine.journal.get_flow_run(run_id).state_name

    try:
        step("make_queues", l0=1, l1=None, p0=True, runs=["q0", "q1", "q0"])
        a, c, b = machine.runs  # in the order they were made: a and b on q0, c on q1
        step(
            "worker_round", worker="w0", queues=(), limit=1, max_auto=None, died=False, start=False
        )
        assert state(c) == "Pending"  # q0 is paused: q1's run, though it is younger than a
        assert machine.claim("w1", ("q0",)) is None
        step("change_queue", queue="q0", paused=False, limit=1)
        step(
            "worker_round",
            worker="w1",
            queues=("q0",),
            limit=3,
            max_auto=None,
            died=False,
            start=True,
        )
        assert (state(a), state(b)) == ("Running", "Scheduled")  # q0 is at its limit of 1
        step("cancel", data=Drawn(b))  # Scheduled: Cancelled at once
        for attempt in range(1, DEFAULT_AUTO_RESUMES + 1):
            step("crash", data=Drawn(a))
            step(
                "worker_round",
                worker="w1",
                queues=("q0",),
                limit=1,
                max_auto=None,
                died=False,
                start=True,
            )
            assert (state(a), machine.runs[a].auto_resumes) == ("Running", attempt)
        step(
            "worker_round",
            worker="w1",
            queues=("q0",),
            limit=1,
            max_auto=None,
            died=True,
            start=True,
        )
        assert state(a) == "Crashed"  # three automatic resumes in a row: no fourth
        step("release", data=Drawn(a))  # not counted
        assert machine.runs[a].auto_resumes == DEFAULT_AUTO_RESUMES
        step("worker_round", worker="w0", queues=(), limit=2, max_auto=None, died=False, start=True)
        assert (state(a), machine.runs[a].worker) == ("Running", "w0")
        step("worker_round", worker="w0", queues=(), limit=2, max_auto=1, died=True, start=True)
        assert (state(a), state(c), machine.runs[c].auto_resumes) == ("Crashed", "Running", 1)
        step("resume_by_hand", data=Drawn(a), max_auto=1)  # a new count, up to 1
        assert (state(a), machine.runs[a].auto_resumes) == ("Running", 0)
        step("crash", data=Drawn(a))
        step("worker_round", worker="w2", queues=(), limit=1, max_auto=1, died=False, start=True)
        assert (state(a), machine.runs[a].worker) == ("Running", "w2")
        step("cancel", data=Drawn(a))  # Running: Cancelling
        step("cancel", data=Drawn(a))  # again: nothing changes
        step("crash", data=Drawn(a))  # its process is gone: Cancelled
        step("cancel", data=Drawn(a))  # ended: refused
        step("cancel", data=Drawn(c))
        step("finish", data=Drawn(c))  # it completed before it could be stopped
        assert [state(r) for r in (a, b, c)] == ["Cancelled", "Cancelled", "Completed"]
    finally:
        machine.teardown()
