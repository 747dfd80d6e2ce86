"""The process a worker starts for one flow run: ``python -m persevere.worker.child RUN TOKEN``.

The worker claimed the run (Scheduled -> Pending under the lease ``TOKEN``)
and started this process in a process group of its own. Here the run is
taken over (Pending -> Running, this process its owner), its flow loaded
from the entrypoint and executed; completed task runs are replayed. A flow
that cannot be loaded fails the run with the reason, instead of crashing
again on every resume.

Exit codes: 0 the run completed (or is waiting for a retry, or was taken by
somebody else), 1 it failed, 143 SIGTERM stopped it (journaled Cancelled or
Crashed), 2 bad arguments.
"""

from __future__ import annotations

import signal
import sys

from ..exceptions import PersevereError, Terminated, VersionConflict
from ..journal import FlowRun, Journal, new_id, open_journal
from ..statemachine import StateType
from . import deploying, reruns
from .flow_runs import execute
from .owners import this_process
from .signals import raise_terminated


def _fail_unloadable(journal: Journal, run: FlowRun, why: str) -> None:
    """Fail a claimed run whose flow cannot be loaded: Pending -> Running -> Failed."""
    run = journal.claim_flow_run(run, this_process(), new_id())
    journal.finish_flow_run(run, StateType.FAILED, "Failed", why)


def run_claimed(run_id: str, token: str) -> int:
    """Execute the run a worker claimed under ``token``; the exit code."""
    journal = open_journal()
    run = journal.get_flow_run(run_id)
    if run.state_type is not StateType.PENDING or run.lease_token != token:
        print(
            f"persevere: run {run_id} is no longer this worker's ({run.state_name})",
            file=sys.stderr,
        )
        return 0
    try:
        flow = reruns.flow_of(run)
        params = deploying.run_parameters(journal, flow, run)
    except PersevereError as exc:
        _fail_unloadable(journal, run, f"cannot load the flow: {exc}")
        return 1
    try:
        state, _ = execute(journal, flow, run, params, handoff=token, wait_for_retry=False)
    except VersionConflict:
        return 0  # cancelled or taken over before it started
    except Terminated:
        return 143
    if state.type in (StateType.COMPLETED, StateType.SCHEDULED, StateType.PAUSED):
        return 0
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m persevere.worker.child RUN_ID LEASE_TOKEN", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_terminated)
    return run_claimed(argv[0], argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
