"""Runs through a worker, against the same flows started as processes by hand.

Prints, measured side by side in one run:
- by hand: N hello flows, each `python -m persevere run FILE:hello` in turn
  (a process per run, as a worker makes), seconds per run;
- worker: N deployment runs of the same flow through one `persevere worker
  start --limit L`, from the first Scheduled to the last Completed, runs per
  second and seconds per run, and the ratio to the by-hand figure (below 1:
  the worker runs L at once);
- crash to resumed: a run whose process is SIGKILLed, from the kill to the
  run executing again under the worker (detection + automatic resume + a
  new process).

Not a test: nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLOW = """
import os, signal
from persevere import flow, task

@task
def greet(name: str) -> str:
    return f"hello {name}"

@flow
def hello(name: str = "world") -> str:
    return greet(name)

@flow
def wait_to_die() -> None:
    open(os.environ["BENCH_PID_FILE"], "w").write(str(os.getpid()))
    import time
    while not os.path.exists(os.environ["BENCH_PID_FILE"] + ".resumed"):
        time.sleep(0.01)
"""


def _env(db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSEVERE_")}
    return {**env, "PERSEVERE_DB": str(db), "PERSEVERE_LOG_LEVEL": "WARNING", **extra}


def by_hand(folder: Path, n: int) -> float:
    db = folder / "hand.db"
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(
            [sys.executable, "-m", "persevere", "run", f"{folder / 'flows.py'}:hello"],
            env=_env(db),
            check=True,
            capture_output=True,
        )
    return (time.perf_counter() - start) / n


def _deploy(journal: Any, folder: Path, function: str) -> Any:
    return journal.deployments.put(
        flow_name=function,
        name="bench",
        entrypoint=f"{folder / 'flows.py'}:{function}",
        parameters={},
        signature={},
    )


def _worker(db: Path, limit: int, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "persevere", "worker", "start", "--limit", str(limit),
         "--poll-seconds", "0.05"],
        env=_env(db, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)


def through_worker(folder: Path, n: int, limit: int) -> float:
    from persevere.journal import open_journal

    db = folder / "worker.db"
    journal = open_journal(db)
    deployment = _deploy(journal, folder, "hello")
    runs = [journal.deployments.schedule_run(deployment, json.dumps({})) for _ in range(n)]
    start = time.perf_counter()
    worker = _worker(db, limit)
    try:
        while any(journal.get_flow_run(r.id).state_name != "Completed" for r in runs):
            time.sleep(0.01)
        return (time.perf_counter() - start) / n
    finally:
        _stop(worker)


def crash_to_resumed(folder: Path) -> float:
    from persevere.journal import open_journal

    db = folder / "crash.db"
    pid_file = folder / "pid"
    journal = open_journal(db)
    deployment = _deploy(journal, folder, "wait_to_die")
    run = journal.deployments.schedule_run(deployment, "{}")
    worker = _worker(db, 1, BENCH_PID_FILE=str(pid_file))
    try:
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.005)
        first = int(pid_file.read_text())
        pid_file.unlink()
        killed = time.perf_counter()
        os.kill(first, signal.SIGKILL)
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.002)
        elapsed = time.perf_counter() - killed
        Path(str(pid_file) + ".resumed").write_text("")
        while journal.get_flow_run(run.id).state_name != "Completed":
            time.sleep(0.01)
        return elapsed
    finally:
        _stop(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40, help="runs per measurement")
    parser.add_argument("--limit", type=int, default=4, help="the worker's --limit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "flows.py").write_text(FLOW)
        hand = by_hand(folder, args.n)
        worker = through_worker(folder, args.n, args.limit)
        crash = crash_to_resumed(folder)
    print(f"by hand, `persevere run` per run (n={args.n}):        {hand:.3f} s")
    print(f"through a worker, --limit {args.limit} (n={args.n}):      {worker:.3f} s per run, "
          f"{1 / worker:.1f} runs/s")  # fmt: skip
    print(f"ratio worker / by hand:                         {worker / hand:.2f}")
    print(f"crash (SIGKILL) to executing again:             {crash:.3f} s")


if __name__ == "__main__":
    main()
