"""The journal's writer: deferred writes, the flusher, lease renewal, schema set-up."""

from __future__ import annotations

import multiprocessing
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from persevere import flow, task
from persevere.exceptions import VersionConflict
from persevere.journal import Journal, Op, open_journal
from persevere.journal.schema import SCHEMA_VERSION
from persevere.journal.writer import Writes
from persevere.settings import Settings
from persevere.statemachine import Owner, StateType

from .conftest import wait_for


def peek(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read through another connection: only what was committed."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_a_long_task_is_visible_as_running_while_it_runs(db: Path, journal: Journal) -> None:
    seen: list[object] = []

    @task
    def slow() -> None:
        seen.append(wait_for(lambda: peek(db, "SELECT state_name FROM task_runs"), timeout=10))

    @flow
    def patient() -> None:
        slow()

    patient()
    assert seen == [[("Running",)]]


def test_a_fast_task_is_one_row_with_three_history_rows(db: Path, journal: Journal) -> None:
    @task
    def quick() -> int:
        return 1

    @flow
    def hurried() -> None:
        quick()

    hurried()
    [(task_id, version)] = peek(db, "SELECT id, version FROM task_runs")
    history = peek(db, "SELECT version, from_type, to_type FROM states WHERE run_id = ? "
                       "ORDER BY version", (task_id,))  # fmt: skip
    assert version == 3
    assert history == [(1, None, "PENDING"), (2, "PENDING", "RUNNING"), (3, "RUNNING", "COMPLETED")]


def test_deferred_writes_are_committed_by_the_flusher(db: Path, journal: Journal) -> None:
    journal.log(None, None, "INFO", "test", "rides along")
    wait_for(lambda: peek(db, "SELECT message FROM logs"), timeout=5)


def test_a_lost_compare_and_set_keeps_what_was_deferred(db: Path, journal: Journal) -> None:
    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    journal.log(run.id, None, "INFO", "test", "deferred before the conflict")
    stale = Op(
        "UPDATE flow_runs SET version = 99 WHERE id = ? AND version = ?",
        (run.id, 42),
        expect=(run.id, 42, "flow_runs"),
    )
    with pytest.raises(VersionConflict) as info:
        journal.flush([stale])
    assert (info.value.expected, info.value.actual) == (42, 1)
    journal.flush()
    assert peek(db, "SELECT message FROM logs") == [("deferred before the conflict",)]


def test_held_leases_are_renewed_while_a_run_executes(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSEVERE_LEASE_SECONDS", "0.6")
    journal = open_journal(db)
    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    run = journal.claim_flow_run(run, Owner("elsewhere", 1, "x"), "token")
    first = run.lease_expires_ms
    assert first is not None

    def renewed() -> bool:
        [(expires,)] = peek(db, "SELECT lease_expires_ms FROM flow_runs")
        return int(expires) > first + 150  # type: ignore[call-overload]

    wait_for(renewed, timeout=5)
    journal.finish_flow_run(journal.get_flow_run(run.id), StateType.COMPLETED, "Completed")


def test_new_database_and_key_file_are_private(db: Path, journal: Journal) -> None:
    journal.codec.dumps(1, "pickle", "x")
    for path in (db, db.with_name(db.name + ".key")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _open_and_count(path: str) -> int:
    journal = Journal(Path(path), Settings.from_env())
    run = journal.create_flow_run(flow_name="race", entrypoint=None, parameters="{}")
    journal.close()
    return len(run.id)


def test_processes_creating_the_schema_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open_and_count, [str(path)] * 4, chunksize=1) == [32] * 4
    assert peek(path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert peek(path, "SELECT count(*) FROM flow_runs") == [(4,)]


def test_time_is_spent_in_one_commit_per_task(db: Path, journal: Journal) -> None:
    """Group commit: a task's start rides along with its end (counted, not timed)."""
    commits = {"n": 0}
    real = journal.writer._commit_batch

    def counting(batch: list[Op]) -> None:
        commits["n"] += 1
        real(batch)

    journal.writer._commit_batch = counting  # type: ignore[method-assign]

    @task
    def noop(i: int) -> int:
        return i

    @flow
    def many() -> None:
        for i in range(50):
            noop(i)

    started = time.monotonic()
    many()
    assert time.monotonic() - started < 30
    # 50 task commits + create + claim + finish, a few flusher batches at most
    assert 53 <= commits["n"] <= 60


def test_threads_committing_at_once_share_transactions(db: Path, journal: Journal) -> None:
    import threading

    batches: list[int] = []
    real = journal.writer._commit_batch

    def counting(batch: list[Op]) -> None:
        batches.append(len(batch))
        real(batch)

    journal.writer._commit_batch = counting  # type: ignore[method-assign]

    def writer(i: int, j: int) -> None:
        journal.writer.commit(
            [Op("INSERT INTO logs (level, ts_ms, message) VALUES ('INFO', 1, ?)", (f"{i}-{j}",))]
        )

    for j in range(3):
        # A commit in progress (the lock held) while 8 threads ask for theirs:
        # once it ends, one transaction carries all 8, however the machine
        # schedules the threads.
        with journal.writer.lock:
            threads = [threading.Thread(target=writer, args=(i, j)) for i in range(8)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(journal.writer._waiting) < 8 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert len(journal.writer._waiting) == 8
        for t in threads:
            t.join(30)
        assert batches == [8] * (j + 1)
    assert peek(db, "SELECT count(*) FROM logs") == [(24,)]


def test_one_callers_lost_compare_and_set_fails_only_that_caller(
    db: Path, journal: Journal
) -> None:
    import threading

    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    stale = Op("UPDATE flow_runs SET version = 99 WHERE id = ? AND version = ?", (run.id, 42),
               expect=(run.id, 42, "flow_runs"))  # fmt: skip
    good = [Op("INSERT INTO logs (level, ts_ms, message) VALUES ('INFO', 1, ?)", (f"m{i}",))
            for i in range(6)]  # fmt: skip
    outcomes: dict[str, object] = {}
    start = threading.Barrier(7)

    def commit(name: str, ops: list[Op]) -> None:
        start.wait()
        try:
            journal.writer.commit(ops)
            outcomes[name] = "ok"
        except VersionConflict as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=commit, args=(f"good{i}", [op]))
               for i, op in enumerate(good)]  # fmt: skip
    threads.append(threading.Thread(target=commit, args=("stale", [stale])))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(outcomes.pop("stale"), VersionConflict)
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == 6
    assert peek(db, "SELECT count(*) FROM logs") == [(6,)]


def _log(message: str) -> Op:
    return Op("INSERT INTO logs (level, ts_ms, message) VALUES ('INFO', 1, ?)", (message,))


def test_commit_later_calls_back_once_the_writes_are_durable(db: Path, journal: Journal) -> None:
    told: list[object] = []

    def then(error: BaseException | None) -> None:
        told.append((error, peek(db, "SELECT message FROM logs")))

    journal.writer.commit_later([_log("first")], then)
    assert told == [(None, [("first",)])]


def test_commit_later_hands_a_lost_compare_and_set_to_its_callback(
    db: Path, journal: Journal
) -> None:
    run = journal.create_flow_run(flow_name="f", entrypoint=None, parameters="{}")
    stale = Op("UPDATE flow_runs SET version = 99 WHERE id = ? AND version = ?", (run.id, 42),
               expect=(run.id, 42, "flow_runs"))  # fmt: skip
    told: list[BaseException | None] = []
    journal.writer.commit_later([stale], told.append)  # does not raise
    journal.writer.commit_later([_log("fine")], told.append)
    assert isinstance(told[0], VersionConflict) and told[1] is None
    assert peek(db, "SELECT version FROM flow_runs") == [(1,)]


def test_commit_later_does_not_wait_while_another_thread_commits(
    db: Path, journal: Journal
) -> None:
    import threading

    committing, go_on = threading.Event(), threading.Event()
    real = journal.writer._commit_batch

    def slow_disk(batch: list[Op]) -> None:
        committing.set()
        assert go_on.wait(10)
        real(batch)

    journal.writer._commit_batch = slow_disk  # type: ignore[method-assign]
    told: dict[str, tuple[BaseException | None, str]] = {}

    def then(name: str) -> Callable[[BaseException | None], None]:
        return lambda error: told.setdefault(name, (error, threading.current_thread().name))

    first = threading.Thread(
        target=journal.writer.commit_later, args=([_log("a")], then("a")), name="first"
    )
    first.start()
    assert committing.wait(10)
    journal.writer.commit_later([_log("b")], then("b"))  # returns while "first" commits
    assert told == {} and peek(db, "SELECT count(*) FROM logs") == [(0,)]
    go_on.set()
    first.join(10)
    # the committing thread took the queued write too, and told its caller
    assert told == {"a": (None, "first"), "b": (None, "first")}
    assert peek(db, "SELECT message FROM logs ORDER BY id") == [("a",), ("b",)]


def test_deferred_writes_are_built_only_if_they_are_committed(db: Path, journal: Journal) -> None:
    built: list[str] = []

    def build(message: str) -> list[Op]:
        built.append(message)
        return [_log(message)]

    kept, taken_back = Writes(build, ("kept",)), Writes(build, ("taken back",))
    journal.writer.defer(kept, taken_back)
    assert journal.writer.withdraw([taken_back])
    assert not journal.writer.withdraw([taken_back])  # gone already
    journal.flush()
    assert built == ["kept"]
    assert peek(db, "SELECT message FROM logs") == [("kept",)]
    assert not journal.writer.withdraw([kept])  # committed: too late to take it back


def test_an_interrupted_group_commit_tells_every_caller_it_took(tmp_path: Path) -> None:
    """A thread interrupted (Ctrl-C, a flow deadline) while committing others' writes
    must not leave them believing they are durable, nor waiting forever."""
    import threading

    from persevere.exceptions import PersevereError
    from persevere.journal.writer import Writer

    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x)")
    writer = Writer(conn, 30_000, 10.0)
    real = writer._commit_batch
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def interrupted_second_time(batch: list[Op]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first commit is slow: the others queue meanwhile
            entered.set()
            release.wait(10)
        elif calls == 2:
            raise KeyboardInterrupt
        real(batch)

    writer._commit_batch = interrupted_second_time  # type: ignore[method-assign]
    outcomes: dict[str, object] = {}

    def plain(name: str, value: str) -> None:
        try:
            writer.commit([Op("INSERT INTO t VALUES (?)", (value,))])
            outcomes[name] = "durable"
        except BaseException as exc:
            outcomes[name] = exc

    told: list[BaseException | None] = []

    def later() -> None:
        try:
            writer.commit_later([Op("INSERT INTO t VALUES ('4')", ())], told.append)
            outcomes["later"] = "returned"
        except BaseException as exc:
            outcomes["later"] = exc

    first = threading.Thread(target=plain, args=("first", "1"))
    first.start()
    assert entered.wait(10)
    others = [
        threading.Thread(target=plain, args=("a", "2")),
        threading.Thread(target=plain, args=("b", "3")),
        threading.Thread(target=later),
    ]
    for thread in others:
        thread.start()
    wait_for(lambda: len(writer._waiting) == 3)  # all three queued behind the slow commit
    release.set()
    for thread in (first, *others):
        thread.join(10)
    assert outcomes["first"] == "durable"
    # Whichever thread committed the group was interrupted; nobody else was told "durable".
    assert sum(isinstance(outcomes[n], KeyboardInterrupt) for n in ("a", "b", "later")) == 1
    assert all(outcomes[n] != "durable" for n in ("a", "b"))
    assert all(isinstance(outcomes[n], PersevereError) for n in ("a", "b") if not
               isinstance(outcomes[n], KeyboardInterrupt))  # fmt: skip
    assert len(told) == 1 and isinstance(told[0], PersevereError)
    assert conn.execute("SELECT x FROM t").fetchall() == [("1",)]
