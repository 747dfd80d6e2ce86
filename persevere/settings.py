"""Settings, read from the environment in one place.

``PERSEVERE_HOME`` (default ``~/.persevere``) holds the database
``persevere.db``; ``PERSEVERE_DB`` names another database file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be greater than zero")
    return value


@dataclass(frozen=True)
class Settings:
    """The settings in force for this process."""

    home: Path
    database: Path
    lease_seconds: float
    flush_seconds: float
    synchronous: str
    log_level: str
    result_file_bytes: int
    suspend_after_seconds: float = 60.0
    late_after_seconds: float = 60.0
    event_retention_days: float = 7.0
    task_run_events: str = "final"

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from ``PERSEVERE_*`` environment variables."""
        home = Path(os.environ.get("PERSEVERE_HOME") or Path.home() / ".persevere").expanduser()
        db = os.environ.get("PERSEVERE_DB")
        synchronous = os.environ.get("PERSEVERE_SYNCHRONOUS", "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"PERSEVERE_SYNCHRONOUS={synchronous!r} must be NORMAL or FULL")
        task_run_events = os.environ.get("PERSEVERE_TASK_RUN_EVENTS", "final").lower()
        if task_run_events not in ("all", "final", "none"):
            raise ValueError(
                f"PERSEVERE_TASK_RUN_EVENTS={task_run_events!r} must be all, final or none"
            )
        return cls(
            home=home,
            database=Path(db).expanduser() if db else home / "persevere.db",
            # A lease that is not renewed for this long marks its owner dead
            # (owners on another host; same-host owners are checked by pid).
            lease_seconds=_float_env("PERSEVERE_LEASE_SECONDS", 30.0),
            # How long a journal write that nobody waits for may stay buffered.
            flush_seconds=_float_env("PERSEVERE_FLUSH_SECONDS", 0.05),
            synchronous=synchronous,
            log_level=os.environ.get("PERSEVERE_LOG_LEVEL", "INFO").upper(),
            # Results larger than this go to files beside the database.
            result_file_bytes=int(_float_env("PERSEVERE_RESULT_FILE_BYTES", 64 * 1024)),
            # A persevere.sleep longer than this, in a run a worker executes,
            # suspends the run and frees the worker's slot until it wakes.
            suspend_after_seconds=_float_env("PERSEVERE_SUSPEND_AFTER_SECONDS", 60.0),
            # A Scheduled run on a work queue not started this long after its
            # time becomes Late (a schedule's runs: the schedule's grace).
            late_after_seconds=_float_env("PERSEVERE_LATE_AFTER_SECONDS", 60.0),
            # Events older than this are deleted by schedulers (every 10 minutes).
            event_retention_days=_float_env("PERSEVERE_EVENT_RETENTION_DAYS", 7.0),
            # Which state changes of task runs are events: final (the end of each
            # attempt: Completed, Failed, AwaitingRetry, ...), all (Pending and
            # Running too: three per task, about a tenth more per task), none.
            # Flow runs' always are.
            task_run_events=task_run_events,
        )


def current() -> Settings:
    """The settings as the environment says now."""
    return Settings.from_env()
