"""Opening the database file: checks first, then the pragmas every connection needs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..exceptions import DatabaseError

_MAGIC = b"SQLite format 3\x00"


def check_file(path: Path) -> None:
    """Refuse a file that exists but is not an SQLite database, without touching it."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise DatabaseError(str(path), "is a directory, not a database file") from None
    except PermissionError:
        raise DatabaseError(str(path), "cannot be read (permission denied)") from None
    if head and head != _MAGIC:
        raise DatabaseError(
            str(path),
            "is not an SQLite database (the file was not changed); "
            "point PERSEVERE_DB at a persevere database or a new file",
        )


def create_private(path: Path) -> None:
    """Create the database file (and its folder) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    """Open a connection in autocommit mode; transactions are begun explicitly.

    Nothing is written to the file here: :func:`configure` does that, once the
    schema check has accepted the file.
    """
    check_file(path)
    create_private(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(str(path), f"cannot be opened as a database ({exc})") from None
    return conn


def configure(conn: sqlite3.Connection, path: Path, synchronous: str = "NORMAL") -> None:
    """The pragmas every connection needs: WAL, synchronous, foreign keys."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(str(path), f"cannot be opened as a database ({exc})") from None
