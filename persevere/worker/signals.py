"""SIGTERM while a flow run executes: journal how the run ended, then go.

A cancel (``persevere runs cancel``) and a worker that stops both send
SIGTERM to the run's process group. Python's default for SIGTERM ends the
process at once, leaving the run Running until its death is noticed and
losing the ``on_cancellation`` hooks. So while a top-level flow run executes
in the main thread, SIGTERM raises :class:`Terminated` in the flow's code;
the engine journals the run Cancelled (if a cancel was asked for) or Crashed,
runs the hooks, and then the process ends as SIGTERM would have ended it.

A program that set its own SIGTERM handler keeps it: nothing is installed
then. The CLI and a worker's child process install :func:`raise_terminated`
themselves, so they can report and exit with their own code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from ..exceptions import Terminated
from ..journal import Journal


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: raise :class:`Terminated` once; later SIGTERMs are ignored
    (the run is being journaled; whoever sent it escalates to SIGKILL if it waits too long)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(signum)


class _Graceful:
    def __init__(self) -> None:
        self.installed = False

    def die(self, exc: Terminated) -> None:
        """End the process as the signal's default action would (if we caught it)."""
        if self.installed:
            signal.signal(exc.signum, signal.SIG_DFL)
            os.kill(os.getpid(), exc.signum)


@contextlib.contextmanager
def terminate_gracefully() -> Iterator[_Graceful]:
    """Turn SIGTERM into :class:`Terminated` while the block runs, if nobody else handles it."""
    graceful = _Graceful()
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, raise_terminated)
        graceful.installed = True
    try:
        yield graceful
    finally:
        if graceful.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def stop_when_cancelled(journal: Journal, run_id: str) -> None:
    """If SIGTERM is ours to handle here, send it to this process when a lease
    renewal finds the run Cancelling (a cancel nobody could deliver by signal)."""
    if signal.getsignal(signal.SIGTERM) is raise_terminated:
        journal.writer.watch_cancel(run_id, _signal_soon)


def _signal_soon() -> None:
    """SIGTERM to this process from another thread: the journal's committing thread,
    which finds the request, must not be the one interrupted right after its commit."""
    threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM), daemon=True).start()


def cancel_requested(journal: Journal, run_id: str | None) -> bool:
    """True if the flow run, or a flow run it is a subflow of, is Cancelling."""
    while run_id is not None:
        run = journal.get_flow_run(run_id)
        if run.state_name == "Cancelling":
            return True
        run_id = run.parent_flow_run_id
    return False
