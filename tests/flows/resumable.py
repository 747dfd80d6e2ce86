"""Flows for engine tests, steered by environment variables and side files.

RESUMABLE_SIDE_FILE: every task body appends "name idempotency-key" here.
RESUMABLE_FAIL_AT: the name of a task that raises (until the variable is unset).
RESUMABLE_SWAP: makes `etl` call `audit` where it called `transform` (non-determinism).
"""

from __future__ import annotations

import os

from persevere import flow, get_run_logger, idempotency_key, task


def _mark(name: str) -> None:
    with open(os.environ["RESUMABLE_SIDE_FILE"], "a") as side:
        side.write(f"{name} {idempotency_key()}\n")
    if os.environ.get("RESUMABLE_FAIL_AT") == name:
        raise RuntimeError(f"{name} failed on purpose")


@task
def extract(day: str) -> list[int]:
    _mark("extract")
    return [1, 2, 3]


@task
def transform(rows: list[int]) -> list[int]:
    _mark("transform")
    return [r * 10 for r in rows]


@task
def audit(rows: list[int]) -> list[int]:
    _mark("audit")
    return rows


@task
def load(rows: list[int]) -> int:
    _mark("load")
    get_run_logger().info("loaded", rows=len(rows))
    return sum(rows)


@flow(log_prints=True)
def etl(day: str = "2026-11-21") -> int:
    rows = extract(day)
    print(f"extracted {len(rows)} rows")
    rows = audit(rows) if os.environ.get("RESUMABLE_SWAP") else transform(rows)
    return load(rows)


@flow
def child(x: int) -> int:
    _mark_child(x)
    return transform([x])[0]


def _mark_child(x: int) -> None:
    with open(os.environ["RESUMABLE_SIDE_FILE"], "a") as side:
        side.write(f"child-body {x}\n")


@flow
def parent(n: int = 3) -> list[int]:
    first = extract("p")
    return [child(x) for x in first[:n]]
