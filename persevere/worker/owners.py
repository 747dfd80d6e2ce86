"""Who this process is, and whether another process is still alive.

A run's owner is recorded as host, pid and the process's start time. On
Linux the start time comes from ``/proc/<pid>/stat`` (in clock ticks since
boot) together with the boot id, so a pid that the kernel reused for another
process, or a pid from before a reboot, does not pass for the owner. Where
there is no ``/proc``, a live pid is taken for the owner (pid reuse is then
not detected) and leases cover the rest.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

from ..statemachine import Owner

_PROC = Path("/proc")


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of the process with this pid, or None if there is none."""
    if _PROC.is_dir():
        try:
            stat = (_PROC / str(pid) / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            return "?"
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] == "Z":
            return None  # a zombie has exited; only its exit status is left
        return f"{_boot_id()}:{fields[19]}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


_this: tuple[int, Owner] | None = None


def this_process() -> Owner:
    """The Owner record of the calling process (recomputed after a fork)."""
    global _this
    pid = os.getpid()
    if _this is None or _this[0] != pid:
        _this = (pid, Owner(socket.gethostname(), pid, process_start(pid) or "?"))
    return _this[1]
