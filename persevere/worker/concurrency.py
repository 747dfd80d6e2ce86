"""Concurrency limits from the running code's side: taking slots, waiting in line, tags.

A slot is a lease held by a live holder. Every attempt to take slots first
frees the slots of holders that are gone, decided here:

- a holder inside a flow run is gone when that run no longer holds the lease
  token the slot was taken under (another process resumed it), when the run
  has ended, or when the run's process is dead: at once on this host (its pid
  is gone or reused), on lease expiry elsewhere;
- a holder outside any flow run (``concurrency()`` in plain code) is gone
  when its process is, which is seen on this host only.

Waiting is polling with a growing pause (10 ms up to 250 ms), cut short when
a slot is given back in this process. A waiter that stops asking for longer
than the lease period loses its place in line.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .. import clock
from ..context import FlowRunContext, flow_run_context, task_run_context
from ..exceptions import ConcurrencyError, ConcurrencySlotTimeout, TaskRunCancelled
from ..journal import Journal, TaskRun, open_journal, task_run_id
from ..journal.limits import Attempt, Claimant, ConcurrencyLimit, SlotHolder
from ..statemachine import owner_is_dead
from .logs import get_run_logger
from .owners import process_start, this_process

_FIRST_PAUSE, _LONGEST_PAUSE = 0.01, 0.25
_given_back = threading.Condition()  # wakes this process's waiters when it frees a slot
_serial = itertools.count(1)
_ACTIVE = ("PENDING", "RUNNING")


def holder_is_dead(held: SlotHolder, now_ms: int) -> bool:
    """Whether the holder of a slot (or of a place in line) is gone."""
    lease = None
    if held.flow_run_id is not None:
        if held.run_state not in _ACTIVE or held.run_token != held.lease_token:
            return True  # the run ended, crashed, or is executed by another process now
        lease = held.run_lease_expires_ms
    me = this_process()
    owner = held.owner
    if owner.host == me.host and owner.pid == me.pid:
        return owner.started != me.started
    observed = process_start(owner.pid) if owner.host == me.host else None
    return owner_is_dead(owner, me.host, observed, lease, now_ms)


@dataclass
class Slots:
    """Slots held under some limits; give them back with :meth:`release`."""

    journal: Journal
    asked: list[str]
    names: list[str]
    claimant: Claimant
    occupy: int
    released: bool = False

    def release(self) -> None:
        """Give the slots back (at most once).

        A failure to write that (the database locked past its timeout) is
        logged, not raised: it must not turn a task run that completed into
        an error, and the slots are freed anyway once their holder's run (or
        process) ends.
        """
        if self.released:
            return
        self.released = True
        if not self.names:
            return
        try:
            self.journal.limits.release(self.names, self.claimant, clock.now_ms())
        except Exception as exc:
            get_run_logger("persevere.concurrency").warning(
                f"could not give back the slots of {', '.join(self.names)} held by "
                f"{self.claimant.holder} ({exc}); they are freed when its run or process ends"
            )
            return
        with _given_back:
            _given_back.notify_all()

    def take_again(self) -> None:
        """After :meth:`release`, take the same slots again (waiting in line if need be)."""
        again, _ = acquire(self.journal, self.asked, self.occupy, self.claimant)
        self.names, self.released = again.names, False


def acquire(
    journal: Journal,
    names: Sequence[str],
    occupy: int,
    claimant: Claimant,
    timeout_seconds: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> tuple[Slots, dict[str, ConcurrencyLimit]]:
    """Take ``occupy`` slots under every limit among ``names``, waiting in line if need be.

    Returns the slots and the limits found (names without a limit are not
    limited). ``on_wait(reason)`` is called once, when the
    first attempt must wait. Raises :class:`ConcurrencySlotTimeout` when
    ``timeout_seconds`` pass first; ``stop()``, called before each new
    attempt, may raise to give up waiting.
    """
    if occupy < 1:
        raise ConcurrencyError(f"occupy={occupy!r}: take at least one slot")
    stale_ms = int(journal.settings.lease_seconds * 1000)
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    ticket: int | None = None
    pause = _FIRST_PAUSE
    try:
        while True:
            now = clock.now_ms()
            attempt = journal.limits.try_acquire(
                names, claimant, occupy, ticket, holder_is_dead, now, stale_ms
            )
            _say_freed(attempt)
            first_wait, ticket = ticket is None, attempt.ticket
            too_small = [n for n, lim in attempt.limits.items() if lim.slots < occupy]
            if too_small:
                raise ConcurrencyError(
                    f"concurrency limit {too_small[0]!r} has "
                    f"{attempt.limits[too_small[0]].slots} slots, fewer than occupy={occupy}; "
                    f"raise it with `persevere concurrency-limit create {too_small[0]} {occupy}`"
                )
            if attempt.acquired:
                ticket = None
                held = Slots(journal, list(names), sorted(attempt.limits), claimant, occupy)
                return held, attempt.limits
            if first_wait and on_wait is not None:
                on_wait(attempt.reason)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ConcurrencySlotTimeout(list(names), timeout_seconds or 0, attempt.reason)
            with _given_back:
                _given_back.wait(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, _LONGEST_PAUSE)
            if stop is not None:
                stop()
    finally:
        if ticket is not None:
            journal.limits.leave_line(ticket)


def _say_freed(attempt: Attempt) -> None:
    for held in attempt.freed:
        what = f"flow run {held.flow_run_id}" if held.flow_run_id else "a process"
        get_run_logger("persevere.concurrency").warning(
            f"freed {held.occupy} slot(s) of {held.name!r} held by {held.holder} ({what} "
            f"on {held.owner.label()}): its holder is gone"
        )


def claimant_here(suffix: str = "") -> tuple[Journal, Claimant]:
    """The journal and the claimant for slots taken by the code running now."""
    ctx = flow_run_context.get()
    task_ctx = task_run_context.get()
    me = this_process()
    serial = next(_serial)
    if ctx is None:
        return open_journal(), Claimant(f"process {me.label()} #{serial}", None, None, me)
    base = task_ctx.task_run_id if task_ctx is not None else ctx.run.id
    holder = f"{base}{suffix} #{serial}"
    return ctx.journal, Claimant(holder, ctx.run.id, ctx.run.lease_token, me)


def _names(names: str | Sequence[str]) -> list[str]:
    listed = [names] if isinstance(names, str) else list(names)
    if not listed or not all(isinstance(n, str) and n for n in listed):
        raise ConcurrencyError(f"names={names!r}: give a limit name or a list of them")
    return list(dict.fromkeys(listed))


def _check_found(
    listed: list[str], found: dict[str, ConcurrencyLimit], strict: bool, what: str
) -> None:
    missing = [n for n in listed if n not in found]
    if not missing:
        return
    message = (
        f"no concurrency limit named {missing[0]!r}; create it with "
        f"`persevere concurrency-limit create {missing[0]} SLOTS`"
    )
    if strict:
        raise ConcurrencyError(message)
    get_run_logger("persevere.concurrency").warning(f"{message} ({what} goes on unlimited)")


@contextlib.contextmanager
def concurrency(
    names: str | Sequence[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
) -> Iterator[None]:
    """Hold ``occupy`` slots of each named limit for the duration of the block.

    Works in a flow, in a task and in plain code; the slots are given back on
    leaving the block, and freed by others if this process dies holding them.
    Waits in line (in the order of asking) while the slots are taken; raises
    :class:`ConcurrencySlotTimeout` after ``timeout_seconds``. A name with no
    limit is not limited (with a warning), or an error with ``strict=True``.
    """
    listed = _names(names)
    journal, claimant = claimant_here()
    slots, found = acquire(journal, listed, occupy, claimant, timeout_seconds)
    try:
        _check_found(listed, found, strict, "the block")
        yield
    finally:
        slots.release()


def rate_limit(
    names: str | Sequence[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
) -> None:
    """Wait until the named rate limits allow ``occupy`` more uses, and use them.

    A rate limit is a limit with a slot decay (``persevere concurrency-limit
    create NAME N --slot-decay-per-second R``): at most N uses at once, each
    draining away at R per second, so at most R uses per second in the long run.
    """
    listed = _names(names)
    journal, claimant = claimant_here(" rate")
    slots, found = acquire(journal, listed, occupy, claimant, timeout_seconds)
    slots.release()  # under a decaying limit, the slots drain away from now
    _check_found(listed, found, strict, "the call")
    plain = [lim for lim in found.values() if lim.decay_per_second <= 0]
    if plain:
        raise ConcurrencyError(
            f"concurrency limit {plain[0].name!r} has no slot decay, so it limits how many "
            f"run at once, not how often; give it one: `persevere concurrency-limit create "
            f"{plain[0].name} {plain[0].slots} --slot-decay-per-second R`"
        )


def admit_task(
    ctx: FlowRunContext,
    task_key: str,
    tags: Sequence[str],
    position: int,
    dynamic_key: int,
    recorded: TaskRun | None,
    upstream: str | None,
) -> tuple[Slots, TaskRun | None]:
    """Take one slot of each tag's limit for a task run, waiting in line if need be.

    A new task run that has to wait is journaled AwaitingConcurrencySlot (type
    SCHEDULED) first; it is then returned as ``recorded`` so the caller moves
    it on to Running.
    """
    journal = ctx.journal
    claimant = Claimant(
        task_run_id(ctx.run.id, position), ctx.run.id, ctx.run.lease_token, this_process()
    )
    waiting = recorded

    def on_wait(reason: str) -> None:
        nonlocal waiting
        message = f"waiting for a concurrency slot ({reason})"
        if recorded is None:
            waiting = journal.await_slot(
                ctx.run.id, position, task_key, dynamic_key, upstream, message
            )
        get_run_logger("persevere.concurrency").info(f"task run {task_key}-{dynamic_key} {message}")

    def stop() -> None:
        if ctx.stopping.is_set():  # the flow body failed: do not start more work
            raise TaskRunCancelled(task_key, claimant.holder)

    slots, _ = acquire(journal, tags, 1, claimant, None, on_wait, stop)
    return slots, waiting
