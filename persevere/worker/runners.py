"""Task runners: where the bodies of submitted tasks run.

One interface: a runner is a configuration (``ThreadPoolTaskRunner(max_workers=8)``)
that a flow run opens into an executor with :meth:`TaskRunner.start`; the
engine hands it callables that each run one task call and return its State.
The journal always stays with the flow's process: the engine, not the runner,
writes every transition.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass


class TaskRunner:
    """Where submitted task calls run. Subclasses implement :meth:`start`."""

    def start(self) -> concurrent.futures.Executor:
        """An executor for one flow run; the engine shuts it down when the run ends."""
        raise NotImplementedError


@dataclass(frozen=True)
class ThreadPoolTaskRunner(TaskRunner):
    """Run submitted tasks on threads of the flow's process (the default).

    Good for tasks that wait (I/O, APIs, databases); CPU-bound Python code is
    held to one core by the GIL.
    """

    max_workers: int | None = None

    def __post_init__(self) -> None:
        if self.max_workers is not None and self.max_workers < 1:
            raise ValueError(f"max_workers={self.max_workers!r} must be at least 1")

    def start(self) -> concurrent.futures.Executor:
        """A thread pool for one flow run."""
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix="persevere-task"
        )
