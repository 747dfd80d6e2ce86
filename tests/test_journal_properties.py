"""Properties of the journal's state transitions, on a real SQLite file.

A hypothesis state machine drives the real :class:`Journal` (and a second
connection on the same file, standing in for another process) with arbitrary
moves, legal or not, fresh or from stale snapshots, and checks it against an
in-memory model whose legal-move table is written out from docs/concepts.md,
independently of the ``transitions`` declaration in ``statemachine/graph.py``.

Then compare-and-set between two connections, and a race of real processes
claiming one run.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from persevere import clock
from persevere.exceptions import InvalidTransition, LeaseLost, VersionConflict
from persevere.journal import FlowRun, Journal, close_all
from persevere.journal.statements import move as transition_ops
from persevere.settings import Settings
from persevere.statemachine import Owner, StateType, fold

S, P, R, PA = StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED
C, F, CR, CA = StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED

# -- the oracle: docs/concepts.md, written out by hand ------------------------

LEGAL = {
    (S, S), (S, P), (S, CA),
    (P, R), (P, S), (P, CA), (P, CR),
    (R, C), (R, F), (R, CR), (R, CA), (R, PA), (R, S), (R, R),
    (PA, S), (PA, R), (PA, CA), (PA, F), (PA, CR),
    (F, S), (CR, S), (CA, S),
}  # fmt: skip
SELF_MOVE_NAMES = {S: {"Late"}, R: {"Cancelling"}}
NAMES_BY_TYPE = {
    S: ("Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot"),
    P: ("Pending",),
    R: ("Running", "Retrying", "Cancelling"),
    PA: ("Paused", "Suspended"),
    C: ("Completed", "Cached"),
    F: ("Failed", "TimedOut"),
    CR: ("Crashed",),
    CA: ("Cancelled",),
}
TYPE_OF = {name: type_ for type_, names in NAMES_BY_TYPE.items() for name in names}
ALL_NAMES = sorted(TYPE_OF)


def is_legal(source: StateType | None, target: StateType, name: str) -> bool:
    """The documented graph: may a run in ``source`` move to ``target`` named ``name``?"""
    if TYPE_OF.get(name) is not target:
        return False
    if source is None:
        return target in (S, P)
    if (source, target) not in LEGAL:
        return False
    return source is not target or name in SELF_MOVE_NAMES.get(target, set())


def legal_targets(source: StateType) -> list[tuple[StateType, str]]:
    """Every (type, name) the documented graph allows from ``source``."""
    return [(TYPE_OF[n], n) for n in ALL_NAMES if is_legal(source, TYPE_OF[n], n)]


def documented_path_to_pending(source: StateType) -> list[tuple[StateType, str]] | None:
    """How an unfinished run gets back to Pending; None where it cannot (Running, Completed)."""
    if source is P:
        return []
    if source is S:
        return [(P, "Pending")]
    if source in (PA, F, CR, CA):
        return [(S, "Scheduled"), (P, "Pending")]
    return None


# -- the model ---------------------------------------------------------------


@dataclasses.dataclass
class RunModel:
    """What the journal should hold for one flow run."""

    # (type, name, message) of every journaled move; version n is states[n - 1].
    states: list[tuple[StateType, str, str]]
    # The run as read back after each version was reached: stale snapshots to replay.
    snapshots: dict[int, FlowRun]
    db_token: str | None = None  # flow_runs.lease_token
    writer_token: str | None = None  # the lease token our writer fences with
    run_count: int = 0

    @property
    def version(self) -> int:
        return len(self.states)


def comparable(run: FlowRun) -> FlowRun:
    """A run without its heartbeat column, which the background flusher may renew."""
    return dataclasses.replace(run, lease_expires_ms=None)


# A target type with one of its own names: legal or not depending on the source.
NAMED_TARGETS = st.sampled_from([(TYPE_OF[name], name) for name in ALL_NAMES])
# Any type with any name: mostly a name of another type, always illegal then.
ANY_TARGETS = st.tuples(st.sampled_from(list(StateType)), st.sampled_from(ALL_NAMES))
MOVE_TARGETS = st.one_of(NAMED_TARGETS, NAMED_TARGETS, ANY_TARGETS)
# What a flow run usually ends in, weighted up so that runs do complete.
END_TARGETS = st.one_of(
    st.sampled_from([(C, "Completed"), (C, "Cached"), (F, "Failed"), (CR, "Crashed")]),
    MOVE_TARGETS,
)
# How far back the snapshot a move is made from lies: 0 is the current version.
BACK = st.one_of(st.just(0), st.integers(min_value=1, max_value=3))
MESSAGES = st.sampled_from(["", "by the machine", "ünïcode ✓"])


class JournalMachine(RuleBasedStateMachine):
    """The real journal on a real file against :class:`RunModel`."""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="persevere-props-")
        self.path = Path(self.folder) / "journal.db"
        try:
            self.journal = Journal(self.path, Settings.from_env())
            # Another connection on the same file: "another process" moving runs.
            self.other = Journal(self.path, Settings.from_env())
        except BaseException:  # teardown will not run
            if hasattr(self, "journal"):
                self.journal.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.model: dict[str, RunModel] = {}
        self.completed_seen: dict[str, tuple[FlowRun, list[Any]]] = {}
        self.tokens = itertools.count(1)

    def teardown(self) -> None:
        try:
            assert self.journal.integrity_check() == "ok"
        finally:
            self.journal.close()
            self.other.close()
            close_all()
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------

    def _snapshot(self, run_id: str, back: int) -> tuple[RunModel, FlowRun, bool]:
        """The model, a snapshot of the run ``back`` versions old, and whether it is stale."""
        model = self.model[run_id]
        # Versions passed through inside one commit (Scheduled on the way to
        # Pending) were never readable, so they have no snapshot.
        versions = sorted(model.snapshots)
        version = versions[max(0, len(versions) - 1 - back)]
        return model, model.snapshots[version], version != model.version

    def _refused(self, run_id: str, error: type[Exception], call: Any) -> None:
        """``call`` must raise ``error`` and leave the run's row and history as they were."""
        before = (comparable(self.journal.get_flow_run(run_id)), self.journal.history(run_id))
        with pytest.raises(error):
            call()
        after = (comparable(self.journal.get_flow_run(run_id)), self.journal.history(run_id))
        assert after == before, f"a refused move ({error.__name__}) changed run {run_id}"

    def _moved(self, model: RunModel, moves: list[tuple[StateType, str, str]]) -> FlowRun:
        """Record accepted moves in the model; returns the run as now stored."""
        model.states.extend(moves)
        run = self.journal.get_flow_run(model.snapshots[1].id)
        assert run.version == model.version
        model.snapshots[run.version] = run
        return run

    # -- rules -----------------------------------------------------------------

    @precondition(lambda self: len(self.model) < 3)
    @rule(target=runs, flow_name=st.sampled_from(["etl", "report"]))
    def create(self, flow_name: str) -> str:
        run = self.journal.create_flow_run(flow_name=flow_name, entrypoint=None, parameters="{}")
        assert (run.state_type, run.state_name, run.version) == (P, "Pending", 1)
        assert run.flow_name == flow_name and run.lease_token is None and run.run_count == 0
        assert run.id not in self.model
        self.model[run.id] = RunModel(states=[(P, "Pending", "")], snapshots={1: run})
        return run.id

    @rule(run_id=runs, move=MOVE_TARGETS, back=BACK, message=MESSAGES, other=st.booleans())
    def raw_move(
        self,
        run_id: str,
        move: tuple[StateType, str],
        back: int,
        message: str,
        other: bool,
    ) -> None:
        """A move through the internal helper, from this connection or the other one."""
        self._raw_move(run_id, move, back, message, other)

    def _raw_move(
        self, run_id: str, move: tuple[StateType, str], back: int, message: str, other: bool
    ) -> None:
        model, snap, stale = self._snapshot(run_id, back)
        type_, name = move
        journal = self.other if other else self.journal

        def call() -> None:
            ops = transition_ops(
                "flow_runs", run_id, snap.state_type, snap.version, type_, name, message,
                clock.now_ms(),
            )  # fmt: skip
            journal.writer.commit(ops)

        if not is_legal(snap.state_type, type_, name):
            self._refused(run_id, InvalidTransition, call)
        elif stale:
            self._refused(run_id, VersionConflict, call)
        else:
            call()
            self._moved(model, [(type_, name, message)])

    @rule(
        run_id=runs,
        want=st.sampled_from(list(StateType)),
        pick=st.integers(min_value=0, max_value=50),
        other=st.booleans(),
    )
    def legal_move(self, run_id: str, want: StateType, pick: int, other: bool) -> None:
        """A move the documented graph allows from the current state (so runs get far).

        The target type is drawn first (``want``, or another one allowed from
        here), then one of its names, so that rarer types are reached as often.
        """
        current = self.model[run_id].states[-1][0]
        targets = legal_targets(current)
        if not targets:
            assert current is C  # only COMPLETED has no way out
            targets = [(TYPE_OF[n], n) for n in ALL_NAMES]
        types = list(dict.fromkeys(type_ for type_, _ in targets))
        type_ = want if want in types else types[pick % len(types)]
        wanted = [t for t in targets if t[0] is type_]
        self._raw_move(run_id, wanted[pick % len(wanted)], 0, "legal", other)

    @rule(run_id=runs, other=st.booleans())
    def every_illegal_move_is_refused(self, run_id: str, other: bool) -> None:
        """From the current state, every move the documented graph forbids is refused."""
        current = self.model[run_id].states[-1][0]
        for name in ALL_NAMES:
            if not is_legal(current, TYPE_OF[name], name):
                self._raw_move(run_id, (TYPE_OF[name], name), 0, "illegal", other)

    def _runs_in(self, types: tuple[StateType, ...], owned: bool = False) -> list[str]:
        return [
            run_id
            for run_id, model in self.model.items()
            if model.states[-1][0] in types
            and (not owned or (model.writer_token and model.writer_token == model.db_token))
        ]

    @rule(run_id=runs, back=BACK, other=st.booleans())
    def claim(self, run_id: str, back: int, other: bool) -> None:
        """Claimed by this connection, or by the other one (another process takes over)."""
        self._claim(run_id, back, other)

    @precondition(lambda self: bool(self._runs_in((P, PA))))
    @rule(pick=st.integers(min_value=0, max_value=50))
    def claim_a_claimable_run(self, pick: int) -> None:
        """Weighted towards what the engine does: claim a Pending (or Paused) run."""
        ready = self._runs_in((P, PA))
        self._claim(ready[pick % len(ready)], 0, False)

    def _claim(self, run_id: str, back: int, other: bool) -> None:
        model, snap, stale = self._snapshot(run_id, back)
        token = f"token-{next(self.tokens)}"
        owner = Owner("props-host", os.getpid() + other, "boot-1")
        journal = self.other if other else self.journal

        def call() -> FlowRun:
            return journal.claim_flow_run(snap, owner, token)

        if not is_legal(snap.state_type, R, "Running"):
            self._refused(run_id, InvalidTransition, call)
        elif stale:
            self._refused(run_id, VersionConflict, call)
        else:
            returned = call()
            model.db_token = token
            if not other:
                model.writer_token = token
            model.run_count += 1
            run = self._moved(model, [(R, "Running", "")])
            assert returned == run
            assert run.lease_token == token and run.owner == owner
            assert run.run_count == model.run_count
            assert run.started_ms is not None and run.ended_ms is None

    @rule(run_id=runs, move=END_TARGETS, back=BACK, message=MESSAGES)
    def finish(self, run_id: str, move: tuple[StateType, str], back: int, message: str) -> None:
        self._finish(run_id, move, back, message)

    @precondition(lambda self: bool(self._runs_in((R, PA), owned=True)))
    @rule(
        pick=st.integers(min_value=0, max_value=50), move=END_TARGETS, back=BACK, message=MESSAGES
    )
    def finish_an_owned_run(
        self, pick: int, move: tuple[StateType, str], back: int, message: str
    ) -> None:
        """Weighted towards what the engine does: end a run this process holds."""
        owned = self._runs_in((R, PA), owned=True)
        self._finish(owned[pick % len(owned)], move, back, message)

    @precondition(lambda self: bool(self._runs_taken_from_us()))
    @rule(pick=st.integers(min_value=0, max_value=50), message=MESSAGES)
    def finish_a_run_taken_from_us(self, pick: int, message: str) -> None:
        """Our writer still holds a lease the run no longer has: the fence must refuse."""
        taken = self._runs_taken_from_us()
        run_id = taken[pick % len(taken)]
        targets = legal_targets(self.model[run_id].states[-1][0]) or [(C, "Completed")]
        self._finish(run_id, targets[pick % len(targets)], 0, message)

    def _runs_taken_from_us(self) -> list[str]:
        return [
            run_id
            for run_id, model in self.model.items()
            if model.writer_token is not None and model.writer_token != model.db_token
        ]

    def _finish(self, run_id: str, move: tuple[StateType, str], back: int, message: str) -> None:
        """finish_flow_run is fenced: it needs our lease, then the right version."""
        model, snap, stale = self._snapshot(run_id, back)
        type_, name = move

        def call() -> FlowRun:
            return self.journal.finish_flow_run(snap, type_, name, message)

        if not is_legal(snap.state_type, type_, name):
            self._refused(run_id, InvalidTransition, call)
            return
        lease_ok = model.writer_token is not None and model.writer_token == model.db_token
        if not lease_ok:
            self._refused(run_id, LeaseLost, call)
            model.writer_token = None  # the writer forgets a lease it found lost
        elif stale:
            # A lost compare-and-set keeps the lease: the caller reloads and retries.
            self._refused(run_id, VersionConflict, call)
        else:
            returned = call()
            model.db_token = model.writer_token = None
            run = self._moved(model, [(type_, name, message)])
            assert returned == run
            assert run.lease_token is None and run.ended_ms is not None

    @rule(run_id=runs, back=BACK, message=MESSAGES)
    def reschedule(self, run_id: str, back: int, message: str) -> None:
        model, snap, stale = self._snapshot(run_id, back)
        path = documented_path_to_pending(snap.state_type)

        def call() -> FlowRun:
            return self.journal.reschedule_flow_run(snap, message)

        if path is None:
            self._refused(run_id, InvalidTransition, call)
        elif not path:
            # Already Pending (per the snapshot): no move, hence no compare-and-set.
            before = self.journal.get_flow_run(run_id)
            assert comparable(call()) == comparable(before)
            assert self.journal.history(run_id)[-1].version == model.version
        elif stale:
            self._refused(run_id, VersionConflict, call)
        else:
            returned = call()
            current = snap.state_type
            for type_, name in path:
                assert is_legal(current, type_, name), "the documented path is itself illegal"
                current = type_
            run = self._moved(model, [(type_, name, message) for type_, name in path])
            assert returned == run
            assert (run.state_type, run.state_name) == (P, "Pending")

    @rule(run_id=runs, back=BACK, message=MESSAGES)
    def mark_crashed(self, run_id: str, back: int, message: str) -> None:
        model, snap, stale = self._snapshot(run_id, back)

        def call() -> FlowRun:
            return self.journal.mark_crashed(snap, message)

        if not is_legal(snap.state_type, CR, "Crashed"):
            self._refused(run_id, InvalidTransition, call)
        elif stale:
            self._refused(run_id, VersionConflict, call)
        else:
            returned = call()
            model.db_token = None  # the lease is taken away; our writer still fences with it
            run = self._moved(model, [(CR, "Crashed", message)])
            assert returned == run
            assert run.lease_token is None and run.ended_ms is not None

    # -- invariants --------------------------------------------------------------

    @invariant()
    def journal_matches_model(self) -> None:
        for run_id, model in self.model.items():
            run = self.journal.get_flow_run(run_id)
            history = self.journal.history(run_id)
            # Versions rise by exactly one per transition: 1..n, no gaps.
            assert [t.version for t in history] == list(range(1, len(history) + 1))
            assert run.version == len(history)
            # Only legal moves were journaled: by the documented graph, and by fold.
            source = None
            for t in history:
                assert t.from_type is source, f"history of {run_id} is not a chain"
                assert is_legal(source, t.to_type, t.name), f"illegal move journaled: {t}"
                source = t.to_type
            replayed = fold((t.to_type, t.name) for t in history)
            # Replaying the history gives exactly the stored current state.
            assert replayed == (run.state_type, run.state_name, run.version)
            assert run.state_message == history[-1].message
            # And the journal holds what the model says it should.
            assert [(t.to_type, t.name, t.message) for t in history] == model.states
            assert run.lease_token == model.db_token
            assert run.run_count == model.run_count

    @invariant()
    def completed_is_absorbing(self) -> None:
        for run_id in self.model:
            run = comparable(self.journal.get_flow_run(run_id))
            history = self.journal.history(run_id)
            if run_id in self.completed_seen:
                assert (run, history) == self.completed_seen[run_id], (
                    f"run {run_id} changed after it completed"
                )
            elif run.state_type is C:
                self.completed_seen[run_id] = (run, history)


JournalMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJournalMachine = JournalMachine.TestCase


def test_the_oracle_agrees_with_the_doc_on_sample_moves() -> None:
    """The hand-written oracle is not vacuous: it accepts and refuses what the doc says."""
    assert is_legal(None, P, "Pending") and not is_legal(None, R, "Running")
    assert is_legal(R, R, "Cancelling") and not is_legal(R, R, "Running")
    assert is_legal(S, S, "Late") and not is_legal(S, S, "Scheduled")
    assert not any(is_legal(C, t, n) for t in StateType for n in ALL_NAMES)
    assert not is_legal(R, C, "Failed")  # a name of another type


def _path_from_pending(goal: StateType) -> list[tuple[StateType, str]]:
    """The shortest documented way from a new (Pending) run to ``goal``."""
    paths: dict[StateType, list[tuple[StateType, str]]] = {P: []}
    frontier = [P]
    while frontier:
        source = frontier.pop(0)
        for type_, name in legal_targets(source):
            if type_ not in paths:
                paths[type_] = [*paths[source], (type_, name)]
                frontier.append(type_)
    return paths[goal]


@pytest.mark.parametrize("source", list(StateType))
def test_every_documented_move_through_the_journal(journal: Journal, source: StateType) -> None:
    """Deterministically: from each state, every move is accepted or refused as documented."""

    def fresh_run_in(state: StateType) -> FlowRun:
        run = journal.create_flow_run(flow_name="edges", entrypoint=None, parameters="{}")
        for type_, name in _path_from_pending(state):
            journal.writer.commit(
                transition_ops("flow_runs", run.id, run.state_type, run.version, type_, name, "", 0)
            )
            run = journal.get_flow_run(run.id)
        assert run.state_type is source
        return run

    run = fresh_run_in(source)
    for name in ALL_NAMES:
        for type_ in StateType:
            if is_legal(source, type_, name):
                continue
            with pytest.raises(InvalidTransition):
                transition_ops("flow_runs", run.id, source, run.version, type_, name, "", 0)
    for type_, name in legal_targets(source):
        run = fresh_run_in(source)
        journal.writer.commit(
            transition_ops("flow_runs", run.id, source, run.version, type_, name, "m", 0)
        )
        moved = journal.get_flow_run(run.id)
        history = journal.history(run.id)
        assert (moved.state_type, moved.state_name, moved.version) == (type_, name, run.version + 1)
        assert fold((t.to_type, t.name) for t in history) == (type_, name, run.version + 1)
        assert (history[-1].from_type, history[-1].message) == (source, "m")


# -- two connections, one compare-and-set ------------------------------------


def _two_journals(db: Path) -> tuple[Journal, Journal]:
    return Journal(db, Settings.from_env()), Journal(db, Settings.from_env())


@pytest.mark.parametrize("first", [0, 1])
def test_two_connections_compare_and_set_from_the_same_version(db: Path, first: int) -> None:
    journals = _two_journals(db)
    try:
        run = journals[0].create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
        # Both read the run at version 1.
        seen = [j.get_flow_run(run.id) for j in journals]
        assert [r.version for r in seen] == [1, 1]
        winner, loser = journals[first], journals[1 - first]
        owner = Owner("h", 1, "s")
        claimed = winner.claim_flow_run(seen[first], owner, "winner")
        assert (claimed.state_type, claimed.version) == (R, 2)
        with pytest.raises(VersionConflict) as info:
            loser.claim_flow_run(seen[1 - first], owner, "loser")
        assert (info.value.run_id, info.value.expected, info.value.actual) == (run.id, 1, 2)
        # The loser's move from version 1 to another state is refused as well.
        with pytest.raises(VersionConflict):
            loser.writer.commit(
                transition_ops("flow_runs", run.id, P, 1, CA, "Cancelled", "", clock.now_ms())
            )
        for journal in journals:
            stored = journal.get_flow_run(run.id)
            assert (stored.version, stored.lease_token, stored.run_count) == (2, "winner", 1)
            assert [(t.version, t.to_type) for t in journal.history(run.id)] == [(1, P), (2, R)]
    finally:
        for journal in journals:
            journal.close()


def test_two_connections_racing_in_threads_one_wins(db: Path) -> None:
    journals = _two_journals(db)
    try:
        for round_ in range(20):
            run = journals[0].create_flow_run(
                flow_name=f"f{round_}", entrypoint=None, parameters="{}"
            )
            barrier = threading.Barrier(2)
            outcomes: list[str] = ["", ""]

            def race(
                i: int,
                snap: FlowRun = run,
                barrier: threading.Barrier = barrier,
                outcomes: list[str] = outcomes,
            ) -> None:
                barrier.wait(timeout=20)
                try:
                    journals[i].claim_flow_run(snap, Owner("h", i, "s"), f"token-{i}")
                    outcomes[i] = "won"
                except VersionConflict:
                    outcomes[i] = "conflict"

            threads = [threading.Thread(target=race, args=(i,)) for i in (0, 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sorted(outcomes) == ["conflict", "won"]
            stored = journals[0].get_flow_run(run.id)
            assert stored.lease_token == f"token-{outcomes.index('won')}"
            assert len(journals[1].history(run.id)) == 2
    finally:
        for journal in journals:
            journal.close()


# -- real processes racing to claim one run -----------------------------------

RACERS = 4


def _race_claim(path: str, run_id: str, token: str, barrier: Any, results: Any) -> None:
    """In a spawned process: open the journal, wait for the others, claim the run."""
    try:
        journal = Journal(Path(path), Settings.from_env())
        try:
            run = journal.get_flow_run(run_id)
            barrier.wait(timeout=60)
            try:
                journal.claim_flow_run(run, Owner("racer", os.getpid(), token), token)
                results.put(("won", token, None))
            except VersionConflict as exc:
                results.put(("conflict", token, (exc.expected, exc.actual)))
        finally:
            journal.close()
    except BaseException as exc:
        results.put(("error", token, repr(exc)))


def test_processes_racing_claim_exactly_one_wins(db: Path, journal: Journal) -> None:
    run = journal.create_flow_run(flow_name="raced", entrypoint=None, parameters="{}")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_race_claim, args=(str(db), run.id, f"racer-{i}", barrier, results))
        for i in range(RACERS)
    ]
    try:
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=90) for _ in processes]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    assert [o for o in outcomes if o[0] == "error"] == []
    winners = [o for o in outcomes if o[0] == "won"]
    assert len(winners) == 1, outcomes
    assert sorted(o[2] for o in outcomes if o[0] == "conflict") == [(1, 2)] * (RACERS - 1)
    stored = journal.get_flow_run(run.id)
    assert (stored.state_type, stored.version, stored.run_count) == (R, 2, 1)
    assert stored.lease_token == winners[0][1]
    assert [t.to_type for t in journal.history(run.id)] == [P, R]


# -- a regression: a lost compare-and-set used to give the lease up ------------


def test_finish_retried_after_a_version_conflict_keeps_the_lease(
    db: Path, journal: Journal
) -> None:
    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    running = journal.claim_flow_run(run, Owner("h", os.getpid(), "s"), "ours")
    other = Journal(db, Settings.from_env())
    try:
        # Another writer asks the run to cancel (Running -> Running(Cancelling));
        # the lease is untouched, the run is still ours.
        other.writer.commit(
            transition_ops(
                "flow_runs", run.id, R, running.version, R, "Cancelling", "", clock.now_ms()
            )
        )
    finally:
        other.close()
    with pytest.raises(VersionConflict):
        journal.finish_flow_run(running, C, "Completed")
    fresh = journal.get_flow_run(run.id)
    assert fresh.lease_token == "ours"
    # "reload it and try again", as the VersionConflict message says:
    done = journal.finish_flow_run(fresh, C, "Completed")
    assert done.state_type is C
