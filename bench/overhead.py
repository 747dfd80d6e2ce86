"""Per-task overhead of persevere against one raw SQLite commit, measured side by side.

Prints:
- the per-task overhead of a flow of N sequential no-op tasks (flow time minus
  the same loop of plain function calls, divided by N);
- one raw SQLite transaction of the same shape (UPDATE one row by primary key
  + INSERT one history row, WAL, synchronous=NORMAL) on the same disk, now;
- their ratio (target: <= 3 now, <= 2 later);
- ``import persevere`` time (target <= 0.15 s) and a hello-world flow as a
  whole process (target <= 0.25 s), each the median of several runs.

Not a test: nothing here fails on speed. Figures vary with machine load, so
each is the best or the median of several rounds.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELLO = """
from persevere import flow, task

@task
def greet(name: str) -> str:
    return f"hello, {name}"

@flow
def hello(name: str = "world") -> str:
    return greet(name)

if __name__ == "__main__":
    hello()
"""


def raw_commit_seconds(path: Path, n: int) -> float:
    """Seconds per raw transaction: UPDATE by primary key + INSERT history, committed."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, state TEXT, version INTEGER)")
    conn.execute(
        "CREATE TABLE history (run_id TEXT, version INTEGER, state TEXT, ts INTEGER, "
        "PRIMARY KEY (run_id, version)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO runs VALUES ('r', 'PENDING', 0)")
    start = time.perf_counter()
    for version in range(1, n + 1):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET state = 'RUNNING', version = ? WHERE id = 'r'", (version,))
        conn.execute("INSERT INTO history VALUES ('r', ?, 'RUNNING', ?)", (version, version))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed / n


def flow_task_seconds(n: int) -> float:
    """Seconds of persevere overhead per sequential no-op task."""
    from persevere import flow, task

    def noop(i: int) -> int:
        return i

    noop_task = task(noop, name="noop")

    @flow
    def many(n: int) -> int:
        for i in range(n):
            noop_task(i)
        return n

    @flow
    def warm() -> None:
        noop_task(0)

    warm()  # open the journal, import the lazy parts once
    start = time.perf_counter()
    for i in range(n):
        noop(i)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    many(n)
    return (time.perf_counter() - start - plain) / n


def whole_process(args: list[str], env: dict[str, str], rounds: int) -> float:
    """Median wall time of a Python process."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process_import(env: dict[str, str], rounds: int) -> float:
    """Median time of ``import persevere`` measured inside fresh processes."""
    code = "import time; t = time.perf_counter(); import persevere; print(time.perf_counter() - t)"
    values = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
        values.append(float(out.stdout))
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per flow (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measure")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="persevere-bench-") as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "PERSEVERE_HOME": str(folder / "home"),
            "PERSEVERE_LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        raw, ours = [], []
        for i in range(options.rounds):  # interleaved, so both see the same load
            raw.append(raw_commit_seconds(folder / f"raw-{i}.db", options.n))
            ours.append(flow_task_seconds(options.n))
        raw_best, ours_best = min(raw), min(ours)
        print(f"raw SQLite commit (UPDATE+INSERT, WAL, NORMAL): {raw_best * 1e6:7.1f} µs")
        print(f"persevere per sequential task (n={options.n}):      {ours_best * 1e6:7.1f} µs")
        print(f"ratio (target <= 3, goal <= 2):                  {ours_best / raw_best:7.2f}")
        print(
            f"  medians: raw {statistics.median(raw) * 1e6:.1f} µs, "
            f"persevere {statistics.median(ours) * 1e6:.1f} µs, "
            f"ratio {statistics.median(ours) / statistics.median(raw):.2f}"
        )

        imp = in_process_import(env, options.rounds * 2)
        print(f"import persevere (median):                       {imp:7.3f} s  (target <= 0.15)")
        script = folder / "hello.py"
        script.write_text(HELLO)
        bare = whole_process(["-c", "pass"], env, options.rounds)
        # The hello flow runs with the default settings (INFO logs on stderr).
        user_env = {k: v for k, v in env.items() if k != "PERSEVERE_LOG_LEVEL"}
        warm_env = {**user_env, "PERSEVERE_HOME": str(folder / "hello-home")}
        subprocess.run([sys.executable, str(script)], env=warm_env, check=True, capture_output=True)
        hello = whole_process([str(script)], warm_env, options.rounds * 2)
        fresh = []
        for i in range(options.rounds):
            fresh_env = {**user_env, "PERSEVERE_HOME": str(folder / f"fresh-{i}")}
            fresh.append(whole_process([str(script)], fresh_env, 1))
        print(f"hello flow, whole process (median):              {hello:7.3f} s  (target <= 0.25)")
        print(f"  same, on a new database (median):              {statistics.median(fresh):7.3f} s")
        print(f"  a bare `python -c pass` for reference:         {bare:7.3f} s")


if __name__ == "__main__":
    main()
