"""The result store: large results as content-addressed files beside the database.

A value over the threshold (``PERSEVERE_RESULT_FILE_BYTES``, 64 KiB) is kept in
``<database>.results/<id[:2]>/<id>``, the id being the SHA-256 of its bytes
(with its serializer), and the ``results`` row holds the path. Files are
written whole under a temporary name and renamed into place, so a crash
leaves either the complete file or none; a file that was written but whose
run was never committed is removed by ``persevere runs prune``. Reading checks
the hash, so a changed or truncated file is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from ..exceptions import SerializationError
from .results import content_id


class ResultFiles:
    """Content-addressed files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, result_id: str) -> Path:
        """Where the result with this id lives."""
        return self.root / result_id[:2] / result_id

    def put(self, result_id: str, data: bytes) -> str:
        """Write ``data`` under its id (once); returns the path relative to the root."""
        target = self.path_of(result_id)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = target.with_name(f".{result_id}.{os.getpid()}.tmp")
            fd = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        return str(target.relative_to(self.root))

    def get(self, relative: str, result_id: str, serializer: str) -> bytes:
        """The bytes of a stored result, checked against its id."""
        path = self.root / relative
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SerializationError(
                f"result file {path} is missing; it was removed outside persevere"
            ) from None
        if content_id(serializer, data) != result_id:
            raise SerializationError(f"result file {path} was changed outside persevere")
        return data

    def remove(self, relatives: Iterable[str]) -> int:
        """Delete stored files; returns how many were there."""
        removed = 0
        for relative in relatives:
            try:
                (self.root / relative).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def orphans(self, known: set[str], older_than_s: float = 3600) -> list[str]:
        """Files no result row refers to, left by writes whose commit never came."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        found = []
        for path in self.root.glob("*/*"):
            if path.name not in known and path.stat().st_mtime < cutoff:
                found.append(str(path.relative_to(self.root)))
        return found
