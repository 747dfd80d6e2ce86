"""One writer per process: group commit, compare-and-set checks, lease fences.

Design note. A raw SQLite commit costs ~22 µs here; a task run makes three
transitions (Pending, Running, Completed). Committing each would cost three
commits per task, and several writer *processes* on one file starve each
other. So each process has one connection and one :class:`Writer`:

- a write that nobody waits for (the Pending and Running transitions, log
  lines) is *deferred*: queued, and committed with the next durable write or
  by the background flusher within ``flush_seconds``;
- a write the engine must know is durable before going on (a task's result,
  a claim) is committed at once, in one ``BEGIN IMMEDIATE`` transaction
  together with everything deferred before it.

A sequential task therefore costs one commit. Every batch that carries writes
for a flow run this process executes also renews that run's lease, guarded by
the run's lease token (a fence): if another process took the run over (it was
declared crashed), the fence fails, this process's writes for that run are
dropped, and the engine gets :class:`LeaseLost` instead of overwriting the new
owner's journal. The flusher also renews held leases when nothing else did
for a third of the lease period (the heartbeat).

After each commit, ``after_commit`` may queue rows of one statement that
only the flusher writes (or a later commit that must come after them): the
events of task runs, which would cost every task's commit a B-tree page
more if they were in it.

Rejected: a writer thread that every write is handed to (a thread handoff
costs more than the commit), and a transaction held open while a task runs
(it would lock every other process out of the database).
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import clock
from ..exceptions import LeaseLost, PersevereError, VersionConflict

T = TypeVar("T")


@dataclass(slots=True)
class Op:
    """One statement to run in a write batch.

    ``fence`` names the flow run whose lease must still be ours for the
    statement to apply. ``expect`` = (run id, expected version, table) makes
    the statement a compare-and-set: it must change exactly one row.

    Never changed once made, but not frozen: a task run makes six, and a
    frozen dataclass takes about 2.5 times as long to build.
    """

    sql: str
    params: Sequence[Any]
    fence: str | None = None
    expect: tuple[str, int, str] | None = None


class Many(Op):
    """One statement run for each of many rows (``params`` is the list of rows)."""

    __slots__ = ()


class Writes:
    """Deferred writes whose statements are built only if they are committed.

    A fast task's start is taken back (:meth:`Writer.withdraw`) before any
    commit needs it, and the task run is written once in its final state;
    building the start's four statements first would be wasted.
    ``build(*args)`` returns them.
    """

    __slots__ = ("args", "build")

    def __init__(self, build: Callable[..., Sequence[Op]], args: tuple[Any, ...]) -> None:
        self.build = build
        self.args = args


def _built(entries: Iterable[Op | Writes]) -> list[Op]:
    """The statements of deferred entries, in order."""
    ops: list[Op] = []
    for entry in entries:
        if type(entry) is Writes:
            ops.extend(entry.build(*entry.args))
        else:
            ops.append(entry)  # type: ignore[arg-type]
    return ops


class _Waiter:
    """Writes queued for the next commit, by :meth:`Writer.commit` (which waits for
    ``done``) or :meth:`Writer.commit_later` (which is told by ``then``)."""

    __slots__ = ("done", "error", "ops", "then")

    def __init__(self, ops: list[Op], then: Callable[[BaseException | None], None] | None) -> None:
        self.ops = ops
        self.then = then
        self.done = False
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True


_RENEW = "UPDATE flow_runs SET lease_expires_ms = ? WHERE id = ? AND lease_token = ?"
_CHECK = "SELECT 1 FROM flow_runs WHERE id = ? AND lease_token = ?"
_STATE_NAME = "SELECT state_name FROM flow_runs WHERE id = ?"


class Writer:
    """Batches and commits writes on one connection; thread-safe."""

    def __init__(self, conn: sqlite3.Connection, lease_ms: int, flush_seconds: float) -> None:
        self.conn = conn
        self.lock = threading.RLock()
        self._lease_ms = lease_ms
        self._flush_seconds = flush_seconds
        self._pending: dict[int, Op | Writes] = {}  # by id: taken back in O(1), in order
        self._held: dict[str, str] = {}  # flow run id -> lease token
        self._lost: set[str] = set()
        self._renewed: dict[str, int] = {}  # flow run id -> when its lease was renewed
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None
        self._deferred_error: BaseException | None = None
        self._failing: Op | None = None
        self._queue_lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._leading = False  # a commit_later caller commits what is queued
        self._on_cancel: dict[str, Callable[[], None]] = {}  # flow run id -> what to call
        self._cancelled: list[str] = []
        # What follows each commit: ``after_commit(batch, now, rows)`` appends
        # rows of ``later_sql`` that the flusher writes (in one executemany,
        # never a commit of their own), e.g. the events of task runs.
        self.after_commit: Callable[[Sequence[Op], int, list[Any]], None] | None = None
        self.later_sql = ""
        self._later: list[Any] = []
        # A batch for which ``later_first(batch)`` is true takes the queued rows
        # first (a flow run's end is journaled after its task runs' events).
        self.later_first: Callable[[Sequence[Op]], bool] | None = None
        self._applied: list[Op] = []  # what apply() ran in the open transaction()

    # -- leases -------------------------------------------------------------

    def hold(self, run_id: str, token: str, renewed_ms: int) -> None:
        """Start fencing and renewing the lease of a run this process claimed."""
        with self.lock:
            self._held[run_id] = token
            self._renewed[run_id] = renewed_ms
            self._lost.discard(run_id)
        self._ensure_flusher()

    def release(self, run_id: str) -> None:
        """Stop renewing a run's lease (it ended or was handed back)."""
        with self.lock:
            self._held.pop(run_id, None)
            self._renewed.pop(run_id, None)
            self._on_cancel.pop(run_id, None)

    def watch_cancel(self, run_id: str, call: Callable[[], None]) -> None:
        """Call ``call()`` (once) if a lease renewal finds the held run Cancelling.

        For a run whose canceller cannot signal its process (another host,
        no worker): the process stops itself within a third of a lease.
        """
        with self.lock:
            self._on_cancel[run_id] = call

    def lost(self, run_id: str) -> bool:
        """True if a fence found that another process owns this run now."""
        return run_id in self._lost

    # -- writing ------------------------------------------------------------

    def defer(self, *ops: Op | Writes) -> None:
        """Queue writes that will ride along with the next commit.

        Only the queue's own lock is taken, never the writer's: a thread does
        not wait for somebody's commit just to queue a write.
        """
        with self._queue_lock:
            for op in ops:
                self._pending[id(op)] = op
        if self._flusher is None:
            self._ensure_flusher()

    def withdraw(self, ops: Sequence[Op | Writes]) -> bool:
        """Take deferred writes back if none of them was committed yet.

        The engine uses it to write a fast task's Pending, Running and final
        state as one row instead of an insert and two updates.
        """
        with self._queue_lock:
            pending = self._pending
            for op in ops:
                if id(op) not in pending:
                    return False
            for op in ops:
                del pending[id(op)]
            return True

    def commit(self, ops: Iterable[Op] = ()) -> None:
        """Commit everything deferred plus ``ops``; durable on return.

        Group commit: callers queue their writes, and whoever holds the lock
        commits everything queued in one transaction, so threads finishing
        tasks at once share commits instead of waiting for one each. If that
        transaction fails, each caller's writes are committed alone, so one
        caller's lost compare-and-set never fails another's write.

        Raises :class:`VersionConflict` if a compare-and-set among ``ops``
        lost, and :class:`LeaseLost` if a run that ``ops`` write for is no
        longer ours (deferred writes of other runs still commit).
        """
        mine = _Waiter(list(ops), None)
        with self._queue_lock:
            self._waiting.append(mine)
        group: list[_Waiter] = []
        with self.lock:
            if not mine.done:
                group = self._take_and_commit()
        self._tell(group)
        error = self._outcome(mine)
        if error is not None:
            raise error

    def commit_later(self, ops: Iterable[Op], then: Callable[[BaseException | None], None]) -> None:
        """Queue writes for the next commit without waiting for it; ``then(error)`` after it.

        ``then`` gets None once the writes are committed (durable), or the
        error :meth:`commit` would have raised. Whichever thread commits them
        calls it: this one if no other is committing (it then commits what
        the others queue meanwhile too, until nothing is left), else the one
        that is. A thread that finished a task can so go on to the next one
        instead of waiting to be woken after the commit.
        """
        with self._queue_lock:
            self._waiting.append(_Waiter(list(ops), then))
            if self._leading:
                return  # the committing thread takes it before it stops
            self._leading = True
        try:
            while True:
                with self.lock:
                    with self._queue_lock:
                        if not self._waiting:
                            self._leading = False
                            return
                    group = self._take_and_commit()
                self._tell(group)
        except BaseException:
            with self._queue_lock:
                self._leading = False
            raise

    def _outcome(self, waiter: _Waiter) -> BaseException | None:
        """What a committed caller is told: its error, LeaseLost, or None (durable)."""
        if waiter.error is not None:
            return waiter.error
        if not self._lost:
            return None
        for op in waiter.ops:
            if op.fence is not None and op.fence in self._lost:
                return LeaseLost(op.fence)
        return None

    def _take_and_commit(self) -> list[_Waiter]:
        """Take every queued caller and commit their writes (under ``self.lock``).

        If this thread is interrupted (a flow's deadline, Ctrl-C) while
        committing, every caller it took is told the error (never left
        believing its writes are durable, nor left waiting) before it is raised.
        """
        group: list[_Waiter] = []
        try:
            with self._queue_lock:
                group, self._waiting = self._waiting, []
            self._commit_group(group)
        except BaseException as exc:
            lost = PersevereError(
                f"a journal commit was interrupted ({type(exc).__name__}); these writes were "
                "not committed"
            )
            for waiter in group:
                if not waiter.done:
                    waiter.finish(lost)
            self._tell(group)
            raise
        return group

    def _tell(self, group: list[_Waiter]) -> None:
        """Call back the :meth:`commit_later` callers of a group, after its commit."""
        for waiter in group:
            if waiter.then is not None:
                try:
                    waiter.then(self._outcome(waiter))
                except Exception as exc:  # one bad callback must not stop the others
                    print(f"persevere: a commit callback failed: {exc!r}", file=sys.stderr)

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction of its own; commit on return.

        For a read-decide-write that must be atomic across processes (taking
        a concurrency slot). Deferred writes are left queued: they do not
        depend on what ``work`` writes.
        """
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            self._applied = []
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                applied, self._applied = self._applied, []
            self._committed(applied, clock.now_ms())
            return result

    def _committed(self, batch: Sequence[Op], now: int) -> None:
        """Queue what follows a commit for the flusher (under ``self.lock``)."""
        if self.after_commit is not None and batch:
            had = len(self._later)
            self.after_commit(batch, now, self._later)
            if len(self._later) > had:
                self._ensure_flusher()

    def _take_later(self) -> list[Op]:
        """The rows queued by :meth:`_committed`, as one write (under ``self.lock``)."""
        if not self._later:
            return []
        rows, self._later = self._later, []
        return [Many(self.later_sql, rows)]

    def _commit_group(self, group: list[_Waiter]) -> None:
        """Commit the queued callers' writes (with what is deferred), together if possible."""
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            with self._queue_lock:
                self._pending.clear()
            for waiter in group:
                waiter.finish(error)
            return
        if len(group) > 1:
            try:
                self._commit_one([op for waiter in group for op in waiter.ops])
            except Exception:  # one of them failed: find out whose, alone
                pass
            else:
                for waiter in group:
                    waiter.finish(None)
                return
        for waiter in group:
            try:
                self._commit_one(waiter.ops)
            except Exception as exc:
                waiter.finish(exc)
            else:
                waiter.finish(None)

    def _commit_one(self, ops: list[Op], retry: bool = True) -> None:
        """Commit what is deferred plus ``ops`` in one transaction."""
        with self._queue_lock:
            batch, self._pending = [*_built(self._pending.values()), *ops], {}
        if self._later and self.later_first is not None and self.later_first(batch):
            batch[:0] = self._take_later()
        self._failing = None
        try:
            self._commit_batch(batch)
        except Exception as exc:
            own = {id(op) for op in ops}
            failing = self._failing
            with self._queue_lock:
                kept: dict[int, Op | Writes] = {id(op): op for op in batch if id(op) not in own}
                kept.update(self._pending)
                self._pending = kept
            if failing is None or id(failing) in own or not retry:
                raise  # the caller's own write failed; what was deferred is kept
            # A deferred write failed, not the caller's: drop it (it would fail
            # every commit), say so, and commit the rest.
            with self._queue_lock:
                self._pending.pop(id(failing), None)
            print(f"persevere: a journal write was dropped: {exc}", file=sys.stderr)
            self._commit_one(ops, retry=False)

    def _commit_batch(self, batch: list[Op]) -> None:
        now = clock.now_ms()
        while True:
            fences = {op.fence for op in batch if op.fence is not None}
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                lost = self._renew(conn, fences, now)
                if not lost:
                    self._execute(conn, batch)
                    conn.execute("COMMIT")
                    self._committed(batch, now)
                    for run_id in fences:
                        if now - self._renewed.get(run_id, 0) >= self._lease_ms // 3:
                            self._renewed[run_id] = now
                    while self._cancelled:
                        call = self._on_cancel.pop(self._cancelled.pop(), None)
                        if call is not None:
                            call()
                    return
                conn.execute("ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            # Drop the writes of runs we no longer own and commit the rest.
            self._lost |= lost
            for run_id in lost:
                self._held.pop(run_id, None)
            batch = [op for op in batch if op.fence not in lost]

    def _renew(self, conn: sqlite3.Connection, fences: set[str], now: int) -> set[str]:
        """Check each fenced run's token; renew the leases that are due. Returns the lost."""
        lost = set()
        for run_id in fences:
            token = self._held.get(run_id)
            if token is None:
                lost.add(run_id)
            elif now - self._renewed.get(run_id, 0) >= self._lease_ms // 3:
                expires = now + self._lease_ms
                if conn.execute(_RENEW, (expires, run_id, token)).rowcount != 1:
                    lost.add(run_id)
                elif run_id in self._on_cancel:
                    row = conn.execute(_STATE_NAME, (run_id,)).fetchone()
                    if row is not None and row[0] == "Cancelling":
                        self._cancelled.append(run_id)
            elif conn.execute(_CHECK, (run_id, token)).fetchone() is None:
                lost.add(run_id)
        return lost

    def apply(self, conn: sqlite3.Connection, ops: Sequence[Op]) -> list[int]:
        """Run ``ops`` inside :meth:`transaction`, with their compare-and-set checks
        (:class:`VersionConflict`); returns how many rows each changed."""
        changed = []
        for op in ops:
            count = conn.execute(op.sql, op.params).rowcount
            if op.expect is not None and count != 1:
                raise _conflict(conn, op.expect)
            changed.append(count)
        self._applied += ops
        return changed

    def _execute(self, conn: sqlite3.Connection, batch: list[Op]) -> None:
        for op in batch:
            self._failing = op
            if type(op) is Many:
                conn.executemany(op.sql, op.params)
                continue
            cursor = conn.execute(op.sql, op.params)
            if op.expect is not None and cursor.rowcount != 1:
                raise _conflict(conn, op.expect)
        self._failing = None

    # -- the flusher and heartbeat -------------------------------------------

    def _ensure_flusher(self) -> None:
        with self.lock:
            if self._flusher is not None or self._closed:
                return
            self._flusher = threading.Thread(
                target=self._flush_loop, name="persevere-journal-flusher", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush_in_background()
            except Exception as exc:  # reported to the next durable commit
                with self.lock:
                    self._deferred_error = exc
                print(f"persevere: journal write failed: {exc}", file=sys.stderr)

    def flush_in_background(self) -> None:
        """Commit what is deferred, and renew held leases when they are due."""
        with self.lock:
            now = clock.now_ms()
            due = [
                run_id
                for run_id in self._held
                if now - self._renewed.get(run_id, 0) >= self._lease_ms // 3
            ]
            with self._queue_lock:
                batch, self._pending = _built(self._pending.values()), {}
            batch += self._take_later()
            if not batch and not due:
                return
            batch += [Op("SELECT 1", (), fence=run_id) for run_id in due]
            self._commit_batch(batch)

    def close(self) -> None:
        """Commit what is pending and stop the flusher."""
        with self.lock:
            with self._queue_lock:
                batch, self._pending = _built(self._pending.values()), {}
            batch += self._take_later()
            if batch:
                self._commit_batch(batch)
            if self._later:  # what followed that commit
                self._commit_batch(self._take_later())
            self._closed = True
        self._wake.set()


def _conflict(conn: sqlite3.Connection, expect: tuple[str, int, str]) -> VersionConflict:
    """The error for a compare-and-set that changed no row, with the version found."""
    run_id, expected, table = expect
    row = conn.execute(f"SELECT version FROM {table} WHERE id = ?", (run_id,)).fetchone()
    return VersionConflict(run_id, expected, row[0] if row else None)
