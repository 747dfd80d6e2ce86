"""The worker: claims Scheduled runs from its queues and runs each in a process of its own.

One loop, in the worker's main thread:

- heartbeat: the worker's row in ``workers``, and the leases of the runs it
  holds (a run's own process renews its lease too);
- children: a run's process that exited is reaped at once; if its run is
  still Pending or Running, the process died (SIGKILL, OOM) and the run is
  journaled Crashed on the spot, no lease to wait for;
- cancels: a held run that is Cancelling gets SIGTERM sent to its whole
  process group (shell commands its tasks started included), then SIGKILL
  after the cancel grace period;
- housekeeping: runs of any process that died (this host: by pid; other
  hosts: expired leases) become Crashed, and Crashed runs on a work queue go
  back to Scheduled while their flow allows it (``max_auto_resumes``, default
  3 in a row), to be resumed by any worker from their last checkpoint;
- the scheduler: one pass (:class:`~persevere.worker.scheduler.Scheduler`)
  makes the runs of schedules ahead of time and marks waiting runs Late,
  unless the worker was started with ``--no-scheduler``;
- claims: while it holds fewer runs than its limit, the worker claims the
  next due run (one compare-and-set transaction, see ``journal.workers``)
  and starts ``python -m persevere.worker.child RUN TOKEN`` in a new session.

A first SIGTERM or SIGINT stops claiming and waits up to the grace period
for the runs in hand; what is still running then is released: SIGTERM to
its group, then the run is put back on its queue (journaled) for another
worker to resume. A second signal releases everything at once.

A run's process outlives a worker that is SIGKILLed: it owns its run (and
its lease) and finishes it. If the whole host goes, the leases expire and
another worker resumes the runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from .. import clock
from ..exceptions import PersevereError, VersionConflict
from ..journal import FlowRun, Journal, new_id
from ..journal.workers import WorkerRecord
from ..statemachine import StateType
from .owners import process_start, this_process
from .recovery import ACTIVE, reap
from .scheduler import Scheduler


@dataclass
class Child:
    """A run's process, started by this worker."""

    run_id: str
    token: str
    process: subprocess.Popen[bytes]
    term_sent: float | None = None  # when SIGTERM went to its group (a cancel)


def is_live(worker: WorkerRecord, now_ms: int, lease_ms: int) -> bool:
    """True if the worker heartbeats (and, on this host, its process is the one that registered)."""
    if worker.stopped_ms is not None or now_ms - worker.heartbeat_ms > lease_ms:
        return False
    me = this_process()
    if worker.host == me.host:
        return process_start(worker.pid) == worker.owner_started
    return True


def exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class Worker:
    """A worker loop on one journal. :meth:`run` until stopped."""

    def __init__(
        self,
        journal: Journal,
        name: str | None = None,
        queues: Sequence[str] = (),
        limit: int = 4,
        poll_seconds: float = 1.0,
        grace_seconds: float = 30.0,
        kill_grace_seconds: float = 10.0,
        say: Callable[[str], None] | None = None,
        scheduler: bool = True,
    ) -> None:
        if limit < 1:
            raise ValueError(f"worker limit {limit} must be at least 1")
        for value, what in ((poll_seconds, "poll"), (kill_grace_seconds, "cancel grace")):
            if value <= 0:
                raise ValueError(f"{what} seconds {value} must be greater than zero")
        if grace_seconds < 0:
            raise ValueError(f"grace seconds {grace_seconds} must be 0 or more")
        me = this_process()
        self.journal = journal
        if name is not None and (not name.strip() or name != name.strip()):
            raise ValueError(f"worker name {name!r} must be non-empty, without surrounding spaces")
        self.name = name or f"{me.host}-{me.pid}"
        self.queues = list(queues)
        self.limit = limit
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.kill_grace_seconds = kill_grace_seconds
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.stop_now = False
        self._lease_ms = int(journal.settings.lease_seconds * 1000)
        self._beat_every = min(journal.settings.lease_seconds / 3, 10.0)
        self._last_beat = 0.0
        self._last_poll = 0.0
        self.scheduler = Scheduler(journal, say=self.say) if scheduler else None

    # -- life ---------------------------------------------------------------------

    def register(self) -> None:
        """Announce the worker; refuse a name a live worker uses."""
        known = {q.name for q in self.journal.deployments.queues()}
        for queue in self.queues:
            if queue not in known:  # as deployments do: a queue is made when first named
                self.journal.deployments.create_queue(queue, exist_ok=True)
                self.say(f"work queue {queue!r} created")
        existing = self.journal.workers.get(self.name)
        mine = existing is None or existing.owner == this_process()
        if existing is not None and not mine and is_live(existing, clock.now_ms(), self._lease_ms):
            raise PersevereError(
                f"a worker named {self.name!r} is running ({existing.owner.label()}); "
                "give this one another --name"
            )
        self.journal.workers.register(self.name, this_process(), self.queues, self.limit)
        self._last_beat = time.monotonic()

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """First call: stop claiming and drain. Second call: release everything now."""
        if self.stopping:
            self.stop_now = True
        self.stopping = True

    def run(self, install_signals: bool = True) -> None:
        """Poll, claim and supervise until stopped; then drain, release and deregister."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self.register()
        queues = ", ".join(self.queues) or "every queue"
        self.say(f"worker {self.name} started: {queues}, up to {self.limit} runs at once")
        try:
            while not self.stopping:
                self.tick()
                self._pause()
            self._drain()
        finally:
            self.journal.workers.stopped(self.name)
            self.say(f"worker {self.name} stopped")

    def _pause(self) -> None:
        """Wait a little, but not past a child's exit or a stop request."""
        deadline = time.monotonic() + self.poll_seconds
        while time.monotonic() < deadline and not self.stopping:
            if any(c.process.poll() is not None for c in self.children.values()):
                return
            time.sleep(0.02)

    def tick(self) -> None:
        """One round: heartbeat, reap children, act on cancels, housekeeping, claims."""
        now = time.monotonic()
        if now - self._last_beat >= self._beat_every:
            self.journal.workers.heartbeat(self.name)
            self._last_beat = now
        self._collect()
        self._cancels()
        self.housekeeping()
        self._claim()

    # -- claims -------------------------------------------------------------------

    def _claim(self) -> None:
        while not self.stopping and len(self.children) < self.limit:
            token = new_id()
            run = self.journal.workers.claim(self.name, self.queues, this_process(), token)
            if run is None:
                return
            self._start(run, token)

    def _start(self, run: FlowRun, token: str) -> None:
        command = [sys.executable, "-m", "persevere.worker.child", run.id, token]
        try:
            process = subprocess.Popen(command, start_new_session=True)
        except OSError as exc:
            self._crashed(run, f"its process could not start: {exc}")
            return
        self.children[run.id] = Child(run.id, token, process)
        self.say(f"run {run.id} ({run.flow_name}) claimed; process {process.pid}")

    # -- children -------------------------------------------------------------------

    def _collect(self) -> None:
        """Reap children that exited; a run they left unfinished crashed."""
        for run_id, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.children[run_id]
            _kill_group(child.process.pid, signal.SIGKILL)  # what the run left behind
            run = self.journal.get_flow_run(run_id)
            if run.state_type in ACTIVE and self._still_ours(run, child):
                run = self._crashed(run, f"its process exited ({exit_description(code)})")
            self.say(f"run {run_id} {run.state_name}")

    def _still_ours(self, run: FlowRun, child: Child) -> bool:
        """True if the run is still held under this child's claim (not resumed elsewhere)."""
        if run.worker_name != self.name:
            return False
        return run.lease_token == child.token or run.owner_pid == child.process.pid

    def _crashed(self, run: FlowRun, why: str) -> FlowRun:
        """Journal a run whose process is gone: Crashed, or Cancelled if that was asked."""
        try:
            if run.state_name == "Cancelling":
                return self.journal.workers.finish_cancel(run, why)
            return self.journal.mark_crashed(run, why)
        except VersionConflict:
            return self.journal.get_flow_run(run.id)

    def _cancels(self) -> None:
        """SIGTERM the group of a run asked to cancel; SIGKILL it after the grace period."""
        if not self.children:
            return
        now = time.monotonic()
        for child in self.children.values():
            if child.term_sent is not None and now - child.term_sent >= self.kill_grace_seconds:
                _kill_group(child.process.pid, signal.SIGKILL)
        for run in self.journal.workers.held_by(self.name):
            held = self.children.get(run.id)
            if run.state_name == "Cancelling" and held is not None and held.term_sent is None:
                self.say(f"run {run.id} cancelling: stopping process group {held.process.pid}")
                held.term_sent = now
                _kill_group(held.process.pid, signal.SIGTERM)

    # -- housekeeping ------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Crash the runs of dead processes; put crashed runs back on their queues; one
        pass of the scheduler (unless the worker runs without)."""
        now = time.monotonic()
        if now - self._last_poll < self.poll_seconds:
            return
        self._last_poll = now
        reap(self.journal)
        for run in self.journal.workers.crashed_to_resume():
            allowed = run.auto_resumes_allowed
            why = f"resumed automatically after a crash ({run.auto_resumes + 1} of {allowed})"
            try:
                self.journal.workers.reschedule(run, why, automatic=True)
            except VersionConflict:
                continue  # another worker did it
            self.say(f"run {run.id} ({run.flow_name}) crashed: {why}")
        if self.scheduler is not None:
            try:
                self.scheduler.tick()
            except Exception as exc:  # the worker goes on; the next pass tries again
                self.say(f"scheduler pass failed: {type(exc).__name__}: {exc}")

    # -- stopping ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Wait up to the grace period for the runs in hand, then release the rest."""
        if self.children:
            self.say(
                f"worker {self.name} stopping: waiting up to {self.grace_seconds:g} s for "
                f"{len(self.children)} runs (a second signal stops at once)"
            )
        deadline = time.monotonic() + self.grace_seconds
        while self.children and time.monotonic() < deadline and not self.stop_now:
            self.tick()
            time.sleep(0.05)
        if self.children:
            self._release_all()

    def _release_all(self) -> None:
        """SIGTERM every remaining run's group, SIGKILL after the cancel grace, then put
        each run back on its queue for another worker."""
        for child in self.children.values():
            _kill_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + (0 if self.stop_now else self.kill_grace_seconds)
        while time.monotonic() < deadline and any(
            c.process.poll() is None for c in self.children.values()
        ):
            time.sleep(0.02)
        for run_id, child in list(self.children.items()):
            _kill_group(child.process.pid, signal.SIGKILL)
            child.process.wait()
            del self.children[run_id]
            self._release(child)

    def _release(self, child: Child) -> None:
        run_id = child.run_id
        run = self.journal.get_flow_run(run_id)
        if run.state_type in ACTIVE:
            if not self._still_ours(run, child):
                return  # somebody else holds it now
            run = self._crashed(run, f"worker {self.name} stopped")
        ours = run.worker_name == self.name and run.owner_pid in (child.process.pid, os.getpid())
        if run.state_type is StateType.CRASHED and ours:
            why = f"released by worker {self.name} (stopping); another worker resumes it"
            try:
                run = self.journal.workers.reschedule(run, why, automatic=False)
            except VersionConflict:
                run = self.journal.get_flow_run(run_id)
        self.say(f"run {run_id} {run.state_name}")


def _kill_group(pgid: int, signum: int) -> None:
    """Signal a run's process group (its process leads it); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
