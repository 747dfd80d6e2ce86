"""Flows whose tasks are tagged "db", for concurrency-limit tests across processes."""

from __future__ import annotations

import time

from persevere import ThreadPoolTaskRunner, concurrency, flow, task


@task(tags=["db"])
def hold(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
def limited(n: int = 7, seconds: float = 0.2) -> int:
    return sum(hold.map(range(n), seconds=seconds).result())


def hold_block(seconds: float) -> None:
    """Plain code (no flow) holding a slot of "db"."""
    with concurrency("db", strict=True):
        print("holding", flush=True)
        time.sleep(seconds)


if __name__ == "__main__":
    import sys

    hold_block(float(sys.argv[1]))
