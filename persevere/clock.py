"""The one clock persevere reads: UTC epoch milliseconds.

Everything that needs "now" calls :func:`now_ms`, so tests (and later a
controllable test clock) can replace it in one place.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the epoch, UTC."""
    return time.time_ns() // 1_000_000
