"""Pure decisions about runs: is an owner dead, is a lease live.

No I/O and no clock here: the caller passes what it observed and the time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """Who executes a run: a process identified beyond its pid.

    ``started`` is the process start time as the operating system reports it
    (with the boot id on Linux), so a pid reused by another process after the
    owner died does not pass for the owner.
    """

    host: str
    pid: int
    started: str

    def label(self) -> str:
        """``host:pid`` for messages."""
        return f"{self.host}:{self.pid}"


def owner_is_dead(
    owner: Owner | None,
    this_host: str,
    observed_start: str | None,
    lease_expires_ms: int | None,
    now_ms: int,
) -> bool:
    """Decide whether a run's owner is gone.

    ``observed_start`` is the start time of the process now holding the
    owner's pid on this host (None if no such process). An owner on this host
    is dead as soon as its pid is gone or reused; an owner elsewhere (or one
    we cannot inspect) only once its lease has expired.
    """
    if owner is None:
        return lease_expires_ms is not None and lease_expires_ms < now_ms
    if owner.host == this_host and owner.started:
        return observed_start != owner.started
    return lease_expires_ms is not None and lease_expires_ms < now_ms
