"""Real processes killed with SIGKILL, then resumed with `persevere runs resume`.

The flow (tests/flows/crashy.py) has 20 tasks; task i appends "i key" to a
side file. After the resume, the run completes with the right result, every
index appears exactly once except at most the one in flight at the kill, and
the database passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .conftest import FLOWS, cli_env, run_cli, wait_for

N = 20
EXPECTED = sum(i * i for i in range(N))
ENTRYPOINT = f"{FLOWS / 'crashy.py'}:crashy"


def start(db: Path, side: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "persevere", "run", ENTRYPOINT, "-p", f"n={N}"],
        env=cli_env(db, CRASHY_SIDE_FILE=str(side), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def counts(side: Path) -> Counter[int]:
    return Counter(int(line.split()[0]) for line in side.read_text().splitlines())


def the_run(db: Path) -> dict[str, object]:
    listing = run_cli(db, "runs", "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    [run] = json.loads(listing.stdout)
    return run  # type: ignore[no-any-return]


def resume_and_check(db: Path, side: Path) -> Counter[int]:
    """Resume the one run on `db`; check the outcome; return how often each task ran."""
    run = the_run(db)
    assert run["state_name"] == "Crashed", run  # detected at once: same host, pid gone
    done = run_cli(db, "runs", "resume", str(run["id"]), CRASHY_SIDE_FILE=str(side))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == EXPECTED
    ran = counts(side)
    assert set(ran) == set(range(N))
    assert sum(1 for c in ran.values() if c > 1) <= 1
    assert max(ran.values()) <= 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    shown = json.loads(run_cli(db, "runs", "show", str(run["id"]), "--json").stdout)
    assert shown["state_name"] == "Completed" and shown["result"] == EXPECTED
    assert [t["state_name"] for t in shown["task_runs"]] == ["Completed"] * N
    return ran


@pytest.mark.parametrize("k", [0, 9, N - 1])
def test_killed_after_task_k_resumes_without_running_any_task_twice(
    db: Path, tmp_path: Path, k: int
) -> None:
    side = tmp_path / "side.txt"
    proc = start(db, side, CRASHY_KILL_AFTER=str(k))
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert counts(side) == Counter(range(k + 1))
    ran = resume_and_check(db, side)
    assert all(c == 1 for c in ran.values())  # task k was recorded before the kill


@pytest.mark.parametrize("k", [0, 10, N - 1])
def test_killed_inside_task_k_runs_only_that_task_again(db: Path, tmp_path: Path, k: int) -> None:
    side = tmp_path / "side.txt"
    proc = start(db, side, CRASHY_KILL_INSIDE=str(k))
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ran = resume_and_check(db, side)
    assert ran[k] == 2  # in flight at the kill: at-least-once
    assert all(c == 1 for i, c in ran.items() if i != k)


@pytest.mark.parametrize("k", [1, 7, 15])
def test_killed_from_outside_at_an_arbitrary_moment(db: Path, tmp_path: Path, k: int) -> None:
    side = tmp_path / "side.txt"
    proc = start(db, side, CRASHY_PAUSE="0.01")
    wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= k)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    resume_and_check(db, side)


def test_task_killed_while_running_is_journaled_crashed_then_run_again(
    db: Path, tmp_path: Path
) -> None:
    side = tmp_path / "side.txt"
    proc = start(db, side, CRASHY_PAUSE="0.3")

    def running_task() -> object:
        if not db.exists():
            return None
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute(
                    "SELECT position FROM task_runs WHERE state_type = 'RUNNING' AND position >= 3"
                ).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return None

    [position] = wait_for(running_task)  # type: ignore[misc]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    run_id = the_run(db)["id"]
    resume_and_check(db, side)
    with sqlite3.connect(db) as conn:
        task_id, attempt = conn.execute(
            "SELECT id, attempt FROM task_runs WHERE flow_run_id = ? AND position = ?",
            (run_id, position),
        ).fetchone()
        names = [r[0] for r in conn.execute(
            "SELECT name FROM states WHERE run_id = ? ORDER BY version", (task_id,)
        )]  # fmt: skip
    assert attempt == 2
    assert names == ["Pending", "Running", "Crashed", "Scheduled", "Pending", "Running",
                     "Completed"]  # fmt: skip


def test_every_idempotency_key_is_the_same_on_reexecution(db: Path, tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    proc = start(db, side, CRASHY_KILL_INSIDE="5")
    proc.communicate(timeout=60)
    resume_and_check(db, side)
    keys = [line.split()[1] for line in side.read_text().splitlines() if line.startswith("5 ")]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].endswith(":step:5")


def test_a_script_run_with_python_is_resumed_by_the_cli(db: Path, tmp_path: Path) -> None:
    """`python crashy.py` records its file as entrypoint, so the CLI can resume it."""
    side = tmp_path / "side.txt"
    proc = subprocess.run(
        [sys.executable, str(FLOWS / "crashy.py")],
        env=cli_env(db, CRASHY_SIDE_FILE=str(side), CRASHY_KILL_AFTER="12"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    assert the_run(db)["entrypoint"] == ENTRYPOINT
    ran = resume_and_check(db, side)
    assert all(c == 1 for c in ran.values())


def test_ctrl_c_crashes_the_run_cleanly_and_it_resumes(db: Path, tmp_path: Path) -> None:
    side = tmp_path / "side.txt"
    proc = start(db, side, CRASHY_PAUSE="0.05")
    wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= 5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "runs resume" in err
    run = the_run(db)
    assert run["state_name"] == "Crashed" and "KeyboardInterrupt" in str(run["state_message"])
    resume_and_check(db, side)
