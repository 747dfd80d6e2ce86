"""One journal per database file per process, flushed when the process exits."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from ..settings import Settings
from .journal import Journal

_journals: dict[tuple[int, Path], Journal] = {}
_journals_lock = threading.Lock()


def _close_at_exit() -> None:
    """Commit what is still deferred (the last log lines) when the process exits."""
    for (pid, _), journal in list(_journals.items()):
        if pid == os.getpid():
            try:
                journal.writer.close()
            except Exception as exc:  # the process is ending: say it, don't raise
                print(f"persevere: could not flush the journal at exit: {exc}", file=sys.stderr)


atexit.register(_close_at_exit)


def open_journal(path: Path | str | None = None, settings: Settings | None = None) -> Journal:
    """This process's journal for a database file (the default one if no path)."""
    settings = settings or Settings.from_env()
    resolved = Path(path or settings.database).expanduser().absolute()
    key = (os.getpid(), resolved)  # a forked child must not share its parent's connection
    with _journals_lock:
        journal = _journals.get(key)
        if journal is None:
            journal = Journal(resolved, settings)
            _journals[key] = journal
        return journal


def close_all(paths: Iterable[Path] | None = None) -> None:
    """Close the journals this process opened (all, or those for ``paths``)."""
    with _journals_lock:
        for key in list(_journals):
            if paths is None or key[1] in set(paths):
                _journals.pop(key).close()
