"""Cross-run cache entries: a cache key and the task result stored under it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import clock
from .records import CacheEntry, StoredResult, from_row
from .writer import Op

if TYPE_CHECKING:
    from .journal import Journal

_PUT = "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class Cache:
    """The cache table of one journal (``journal.cache``)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def find(self, key: str, now_ms: int) -> CacheEntry | None:
        """The entry under ``key``, unless there is none or it has expired."""
        rows = self._journal.query(
            "SELECT * FROM cache WHERE key = ? AND (expires_ms IS NULL OR expires_ms > ?)",
            (key, now_ms),
        )
        return from_row(CacheEntry, rows[0]) if rows else None

    def put_op(
        self,
        key: str,
        task_key: str,
        task_run_id: str,
        result: StoredResult,
        expires_ms: int | None,
        fence: str,
    ) -> Op:
        """The write that caches a task run's result under ``key`` (commit it with the run)."""
        data = result.data
        serializer = result.serializer if data is not None else None
        row = (key, task_key, task_run_id, serializer, data, result.result_id, clock.now_ms(),
               expires_ms)  # fmt: skip
        return Op(_PUT, row, fence=fence)

    def entries(self, task_key: str | None = None) -> list[CacheEntry]:
        """Entries, newest first, optionally of one task."""
        where, params = ("WHERE task_key = ?", (task_key,)) if task_key else ("", ())
        rows = self._journal.query(f"SELECT * FROM cache {where} ORDER BY created_ms DESC", params)
        return [from_row(CacheEntry, r) for r in rows]

    def clear(self, task_key: str | None = None) -> int:
        """Remove entries (all, or one task's); returns how many (durable)."""
        where, params = ("WHERE task_key = ?", (task_key,)) if task_key else ("", ())
        count = len(self._journal.query(f"SELECT key FROM cache {where}", params))
        self._journal.writer.commit([Op(f"DELETE FROM cache {where}", params)])
        return count
