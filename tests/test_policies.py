"""Deciding whether a run's owner is dead (pure) and observing processes (real)."""

from __future__ import annotations

import os
import subprocess
import sys

from persevere.statemachine import Owner, owner_is_dead
from persevere.worker.owners import process_start, this_process

ME = Owner("here", 100, "boot:1234")


def test_same_host_owner_alive_while_its_start_time_matches() -> None:
    assert not owner_is_dead(ME, "here", "boot:1234", lease_expires_ms=0, now_ms=10**12)


def test_same_host_owner_dead_when_pid_gone_even_with_a_live_lease() -> None:
    assert owner_is_dead(ME, "here", None, lease_expires_ms=10**12, now_ms=0)


def test_same_host_owner_dead_when_pid_reused_by_another_process() -> None:
    assert owner_is_dead(ME, "here", "boot:9999", lease_expires_ms=10**12, now_ms=0)


def test_other_host_owner_dead_only_after_lease_expiry() -> None:
    assert not owner_is_dead(ME, "elsewhere", None, lease_expires_ms=2000, now_ms=1999)
    assert owner_is_dead(ME, "elsewhere", None, lease_expires_ms=2000, now_ms=2001)


def test_no_owner_and_no_lease_is_not_declared_dead() -> None:
    assert not owner_is_dead(None, "here", None, lease_expires_ms=None, now_ms=10**12)


def test_this_process_is_observed_alive() -> None:
    me = this_process()
    assert me.pid == os.getpid()
    assert process_start(me.pid) == me.started


def test_an_exited_process_is_observed_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(child.pid)
    child.wait(timeout=30)
    assert started is not None
    assert process_start(child.pid) != started
