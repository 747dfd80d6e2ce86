"""`make demo`: a pipeline is killed half way, and `persevere runs resume` finishes it.

Everything runs in a temporary folder; nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRYPOINT = f"{HERE / 'pipeline.py'}:pipeline"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def persevere(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persevere", *args],
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="persevere-demo-") as home:
        env = {**os.environ, "PERSEVERE_HOME": home, "PERSEVERE_LOG_LEVEL": "WARNING"}
        env.pop("PERSEVERE_DB", None)
        say(f"persevere run examples/pipeline.py:pipeline   (database in {home})")
        proc = subprocess.Popen(
            [sys.executable, "-m", "persevere", "run", ENTRYPOINT],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        started = 0
        for line in proc.stdout:
            print(line, end="", flush=True)
            started += line.startswith("  running")
            if started == 4:  # aggregate is under way: kill it in the middle
                time.sleep(0.15)
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=30)
        print(
            f"  ... the process is killed with SIGKILL in the middle of task 4 "
            f"(exit {proc.returncode})"
        )

        say("persevere runs ls   (the dead owner is noticed at once: Crashed, not 'Running')")
        print(persevere(env, "runs", "ls").stdout, end="")
        run_id = json.loads(persevere(env, "runs", "ls", "--json").stdout)[0]["id"]

        say(f"persevere runs resume {run_id}")
        print(
            "  (extract, clean and enrich completed before the kill: they are replayed from "
            "the journal, not run again)"
        )
        env_info = {**env, "PERSEVERE_LOG_LEVEL": "INFO"}
        done = persevere(env_info, "runs", "resume", run_id)
        print(done.stdout, end="")
        print(done.stderr, end="")

        say(f"persevere runs show {run_id}")
        print(persevere(env, "runs", "show", run_id).stdout, end="")
        shown = json.loads(persevere(env, "runs", "show", run_id, "--json").stdout)
        again = [t["task_key"] for t in shown["task_runs"] if t["attempts"] > 1]
        print(
            f"\nran twice (in flight at the kill): {', '.join(again) or 'none'}; "
            "every other task ran exactly once."
        )
        sys.exit(done.returncode)


if __name__ == "__main__":
    main()
