"""Shared fixtures: every test gets its own database file in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from persevere.cli import cli
from persevere.journal import Journal, close_all, open_journal

FLOWS = Path(__file__).parent / "flows"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh database path, made the default for this test (PERSEVERE_DB)."""
    path = tmp_path / "persevere.db"
    monkeypatch.setenv("PERSEVERE_DB", str(path))
    monkeypatch.setenv("PERSEVERE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSEVERE_LOG_LEVEL", "WARNING")
    yield path
    close_all()


@pytest.fixture
def journal(db: Path) -> Journal:
    """This process's journal on the test's database."""
    return open_journal(db)


def cli_env(db: Path, **extra: str) -> dict[str, str]:
    """Environment for a `persevere` subprocess on this database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSEVERE_", "CRASHY_"))}
    env.update(PERSEVERE_DB=str(db), PERSEVERE_HOME=str(db.parent / "home"))
    env.update(extra)
    return env


def run_cli(
    db: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m persevere ARGS` as a real process on this database."""
    return subprocess.run(
        [sys.executable, "-m", "persevere", *args],
        env=cli_env(db, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], object], timeout: float = 20, every: float = 0.02) -> object:
    """Poll until ``condition()`` is truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(every)


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of [start, end) intervals that overlap at one instant."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    running = peak = 0
    for _, step in events:  # at equal times an end sorts before a start
        running += step
        peak = max(peak, running)
    return peak


def invoke(*args: str) -> Result:
    """Run the CLI in this process; an unexpected exception fails the test."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def error_line(result: Result, code: int = 2) -> str:
    """Assert a one-line error on stderr, nothing on stdout; return the line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started processes; any still alive at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(
    started: list[subprocess.Popen[bytes]], db: Path, *args: str, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``persevere ARGS`` on ``db``; its output goes to the log file returned."""
    log = db.parent / f"process-{len(started)}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "persevere", *args],
            env=cli_env(db, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started.append(proc)
    return proc, log
