"""Concurrency limits: named slot counts, held slots as leases, and who waits in what order.

A limit caps how many slots are held at once under its name. A held slot
records its holder (a task run, a flow run, or a process), the holder's
process (host, pid, start time) and, for a holder inside a flow run, that
run's lease token. Whether a holder is still alive is the caller's decision
(``is_dead``, from the worker); here, every attempt to take slots first
deletes the slots and waiting places of dead holders, then takes the slots
if they fit and nobody who asked earlier is still waiting, all in one
``BEGIN IMMEDIATE`` transaction, so two processes can never both take the
last slot. A slot therefore never outlives its holder's process.

A limit with a decay (``decay_per_second``) is a rate limit: a released slot
is not free at once but drains away at that many slots per second.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..statemachine import Owner
from .records import from_row

if TYPE_CHECKING:
    from .journal import Journal


@dataclass(frozen=True)
class ConcurrencyLimit:
    """A named limit: at most ``slots`` held at once."""

    name: str
    slots: int
    decay_per_second: float
    decaying: float
    decayed_ms: int
    created_ms: int
    updated_ms: int

    def draining(self, now_ms: int) -> float:
        """Released (or rate-limited) slots that have not drained away yet."""
        if not self.decaying or self.decay_per_second <= 0:
            return 0.0  # nothing drains, or it is not a rate limit (any more)
        gone = self.decay_per_second * max(0, now_ms - self.decayed_ms) / 1000
        return max(0.0, self.decaying - gone)


@dataclass(frozen=True)
class Claimant:
    """Who asks for slots: a holder name, its flow run (if any) and its process."""

    holder: str
    flow_run_id: str | None
    lease_token: str | None
    owner: Owner


@dataclass(frozen=True)
class SlotHolder:
    """A held slot or a waiting place, with its holder's flow run as the journal has it now."""

    name: str
    holder: str
    occupy: int
    flow_run_id: str | None
    lease_token: str | None
    owner_host: str
    owner_pid: int
    owner_started: str
    since_ms: int
    ticket: int | None
    seen_ms: int | None
    run_state: str | None
    run_token: str | None
    run_lease_expires_ms: int | None

    @property
    def owner(self) -> Owner:
        """The process that holds (or waits for) the slot."""
        return Owner(self.owner_host, self.owner_pid, self.owner_started)


@dataclass(frozen=True)
class Attempt:
    """The outcome of one attempt to take slots."""

    acquired: bool
    ticket: int | None
    limits: dict[str, ConcurrencyLimit]
    freed: list[SlotHolder]
    #: Why not: "<name>: 2 of 2 slots held" or "<name>: 3 requests ahead".
    reason: str = ""


IsDead = Callable[[SlotHolder, int], bool]

_SLOTS = (
    "SELECT s.name, s.holder, s.occupy, s.flow_run_id, s.lease_token, s.owner_host, "
    "s.owner_pid, s.owner_started, s.acquired_ms AS since_ms, NULL AS ticket, NULL AS seen_ms, "
    "f.state_type AS run_state, f.lease_token AS run_token, "
    "f.lease_expires_ms AS run_lease_expires_ms "
    "FROM concurrency_slots s LEFT JOIN flow_runs f ON f.id = s.flow_run_id "
)
_WAITERS = (
    "SELECT w.name, w.holder, w.occupy, w.flow_run_id, w.lease_token, w.owner_host, "
    "w.owner_pid, w.owner_started, w.since_ms, w.ticket, w.seen_ms, "
    "f.state_type AS run_state, f.lease_token AS run_token, "
    "f.lease_expires_ms AS run_lease_expires_ms "
    "FROM concurrency_waiters w LEFT JOIN flow_runs f ON f.id = w.flow_run_id "
)


_IN_LINE = "SELECT 1 FROM concurrency_waiters WHERE ticket = ? LIMIT 1"


def _marks(names: Sequence[str]) -> str:
    return ", ".join("?" * len(names))


class Limits:
    """The concurrency limits of one journal (``journal.limits``)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # -- managing limits ---------------------------------------------------

    def put(self, name: str, slots: int, decay_per_second: float, now_ms: int) -> bool:
        """Create a limit, or change an existing one's size; True if it was created."""

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT * FROM concurrency_limits WHERE name = ?", (name,))
            found = row.fetchone()
            if found is not None:
                # What drained so far under the old decay is settled first.
                left = from_row(ConcurrencyLimit, found).draining(now_ms)
                conn.execute(
                    "UPDATE concurrency_limits SET slots = ?, decay_per_second = ?, decaying = ?, "
                    "decayed_ms = ?, updated_ms = ? WHERE name = ?",
                    (slots, decay_per_second, left if decay_per_second > 0 else 0.0, now_ms,
                     now_ms, name),
                )  # fmt: skip
                return False
            conn.execute(
                "INSERT INTO concurrency_limits (name, slots, decay_per_second, created_ms, "
                "updated_ms) VALUES (?, ?, ?, ?, ?)",
                (name, slots, decay_per_second, now_ms, now_ms),
            )
            return True

        return self._journal.writer.transaction(work)

    def get(self, name: str) -> ConcurrencyLimit | None:
        """The limit of this name, or None."""
        rows = self._journal.query("SELECT * FROM concurrency_limits WHERE name = ?", (name,))
        return from_row(ConcurrencyLimit, rows[0]) if rows else None

    def all(self) -> list[ConcurrencyLimit]:
        """Every limit, by name."""
        rows = self._journal.query("SELECT * FROM concurrency_limits ORDER BY name")
        return [from_row(ConcurrencyLimit, r) for r in rows]

    def delete(self, name: str) -> bool:
        """Remove a limit with its slots and waiting places; False if there was none."""

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM concurrency_slots WHERE name = ?", (name,))
            conn.execute("DELETE FROM concurrency_waiters WHERE name = ?", (name,))
            return (
                conn.execute("DELETE FROM concurrency_limits WHERE name = ?", (name,)).rowcount > 0
            )

        return self._journal.writer.transaction(work)

    def reset(self, name: str) -> int:
        """Free every slot of a limit (and drop what drains); returns how many holders lost one."""

        def work(conn: sqlite3.Connection) -> int:
            conn.execute(
                "UPDATE concurrency_limits SET decaying = 0 WHERE name = ?",
                (name,),
            )
            return conn.execute("DELETE FROM concurrency_slots WHERE name = ?", (name,)).rowcount

        return self._journal.writer.transaction(work)

    # -- who holds and who waits --------------------------------------------

    def holders(self, name: str) -> list[SlotHolder]:
        """The held slots of a limit, oldest first."""
        rows = self._journal.query(_SLOTS + "WHERE s.name = ? ORDER BY s.acquired_ms", (name,))
        return [from_row(SlotHolder, r) for r in rows]

    def waiters(self, name: str) -> list[SlotHolder]:
        """Who waits for a limit's slots, in the order they will get them."""
        rows = self._journal.query(_WAITERS + "WHERE w.name = ? ORDER BY w.ticket", (name,))
        return [from_row(SlotHolder, r) for r in rows]

    def free_dead(
        self, names: Sequence[str], is_dead: IsDead, now_ms: int, stale_ms: int
    ) -> list[SlotHolder]:
        """Delete the slots and waiting places of dead holders; returns the freed slots."""
        return self._journal.writer.transaction(
            lambda conn: _free_dead(conn, names, is_dead, now_ms, stale_ms)
        )

    # -- taking and giving back ---------------------------------------------

    def try_acquire(
        self,
        names: Sequence[str],
        claimant: Claimant,
        occupy: int,
        ticket: int | None,
        is_dead: IsDead,
        now_ms: int,
        stale_ms: int,
    ) -> Attempt:
        """Take ``occupy`` slots of every limited name, or take (or keep) a place in line.

        Names without a limit are not limited. The slots are taken only if
        they fit under every limit and no live request with an earlier ticket
        waits for any of the names; otherwise the claimant waits under
        ``ticket`` (a new one on its first attempt).
        """

        limited = self._journal.query(
            f"SELECT 1 FROM concurrency_limits WHERE name IN ({_marks(names)}) LIMIT 1",
            tuple(names),
        )
        if not limited and ticket is None:  # the common case: no write transaction
            return Attempt(True, None, {}, [])

        def work(conn: sqlite3.Connection, ticket: int | None = ticket) -> Attempt:
            rows = conn.execute(
                f"SELECT * FROM concurrency_limits WHERE name IN ({_marks(names)})", tuple(names)
            ).fetchall()
            limits = {r["name"]: from_row(ConcurrencyLimit, r) for r in rows}
            if not limits:
                return Attempt(True, None, limits, [])
            limited = sorted(limits)
            freed = _free_dead(conn, limited, is_dead, now_ms, stale_ms)
            if ticket is not None and not conn.execute(_IN_LINE, (ticket,)).fetchone():
                ticket = None  # its place lapsed (it stopped asking): to the back of the line
            reason = _blocked(conn, limits, occupy, ticket, now_ms)
            if not reason:
                conn.executemany(
                    "INSERT OR REPLACE INTO concurrency_slots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(name, claimant.holder, occupy, *_who(claimant), now_ms) for name in limited],
                )
                if ticket is not None:
                    conn.execute("DELETE FROM concurrency_waiters WHERE ticket = ?", (ticket,))
                return Attempt(True, None, limits, freed)
            if ticket is None:
                # Tickets come from an AUTOINCREMENT key: never handed out twice.
                ticket = conn.execute("INSERT INTO concurrency_tickets DEFAULT VALUES").lastrowid
                conn.execute("DELETE FROM concurrency_tickets WHERE ticket < ?", (ticket,))
                conn.executemany(
                    "INSERT INTO concurrency_waiters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (name, ticket, claimant.holder, occupy, *_who(claimant), now_ms, now_ms)
                        for name in limited
                    ],
                )
            else:
                conn.execute(
                    "UPDATE concurrency_waiters SET seen_ms = ? WHERE ticket = ?", (now_ms, ticket)
                )
            return Attempt(False, ticket, limits, freed, reason)

        return self._journal.writer.transaction(work)

    def leave_line(self, ticket: int) -> None:
        """Give up a place in line (the claimant stopped waiting)."""
        self._journal.writer.transaction(
            lambda conn: conn.execute("DELETE FROM concurrency_waiters WHERE ticket = ?", (ticket,))
        )

    def release(self, names: Sequence[str], holder: str | Claimant, now_ms: int) -> None:
        """Give back a holder's slots; under a decaying limit they drain away instead.

        Given the :class:`Claimant`, only slots it took itself are given back:
        never those that another process took under the same holder name
        after this one lost its run (a resumed task run has the same id).
        """
        if isinstance(holder, Claimant):
            mine = (
                " AND lease_token IS ? AND owner_host = ? AND owner_pid = ? AND owner_started = ?"
            )
            owner = holder.owner
            extra: tuple[Any, ...] = (holder.lease_token, owner.host, owner.pid, owner.started)
            holder = holder.holder
        else:
            mine, extra = "", ()

        def work(conn: sqlite3.Connection) -> None:
            for name in names:
                key = (name, holder, *extra)
                row = conn.execute(
                    "SELECT occupy FROM concurrency_slots WHERE name = ? AND holder = ?" + mine, key
                ).fetchone()
                if row is not None:
                    conn.execute(
                        "DELETE FROM concurrency_slots WHERE name = ? AND holder = ?" + mine, key
                    )
                    _drain(conn, name, row[0], now_ms)

        self._journal.writer.transaction(work)


def _who(claimant: Claimant) -> tuple[str | None, str | None, str, int, str]:
    owner = claimant.owner
    return claimant.flow_run_id, claimant.lease_token, owner.host, owner.pid, owner.started


def _drain(conn: sqlite3.Connection, name: str, occupy: int, now_ms: int) -> None:
    """Under a limit with a decay, count released slots as draining from now."""
    row = conn.execute("SELECT * FROM concurrency_limits WHERE name = ?", (name,)).fetchone()
    if row is None or not row["decay_per_second"]:
        return
    left = from_row(ConcurrencyLimit, row).draining(now_ms)
    conn.execute(
        "UPDATE concurrency_limits SET decaying = ?, decayed_ms = ? WHERE name = ?",
        (left + occupy, now_ms, name),
    )


def _free_dead(
    conn: sqlite3.Connection, names: Sequence[str], is_dead: IsDead, now_ms: int, stale_ms: int
) -> list[SlotHolder]:
    where = f"IN ({_marks(names)})"
    freed = []
    for row in conn.execute(_SLOTS + f"WHERE s.name {where}", tuple(names)).fetchall():
        held = from_row(SlotHolder, row)
        if is_dead(held, now_ms):
            conn.execute(
                "DELETE FROM concurrency_slots WHERE name = ? AND holder = ?",
                (held.name, held.holder),
            )
            freed.append(held)
    for row in conn.execute(_WAITERS + f"WHERE w.name {where}", tuple(names)).fetchall():
        waiting = from_row(SlotHolder, row)
        gone = (waiting.seen_ms or 0) < now_ms - stale_ms  # stopped asking without leaving
        if gone or is_dead(waiting, now_ms):
            conn.execute("DELETE FROM concurrency_waiters WHERE ticket = ?", (waiting.ticket,))
    return freed


def _blocked(
    conn: sqlite3.Connection,
    limits: dict[str, ConcurrencyLimit],
    occupy: int,
    ticket: int | None,
    now_ms: int,
) -> str:
    """Why the slots cannot be taken now ("" if they can)."""
    for name, limit in sorted(limits.items()):
        ahead = conn.execute(
            "SELECT count(DISTINCT ticket) FROM concurrency_waiters WHERE name = ? AND ticket < ?",
            (name, ticket if ticket is not None else 2**62),
        ).fetchone()[0]
        if ahead:
            return f"{name}: {ahead} earlier request{'s' if ahead > 1 else ''} waiting"
        held = conn.execute(
            "SELECT coalesce(sum(occupy), 0) FROM concurrency_slots WHERE name = ?", (name,)
        ).fetchone()[0]
        used = held + limit.draining(now_ms)
        if used + occupy > limit.slots:
            return f"{name}: {used:g} of {limit.slots} slots in use"
    return ""
