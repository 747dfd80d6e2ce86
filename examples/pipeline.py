"""A small ETL pipeline: six tasks, each a little slow, like real work."""

from __future__ import annotations

import time

from persevere import flow, get_run_logger, task


@task
def extract(source: str) -> list[int]:
    print(f"  running extract({source!r})", flush=True)
    time.sleep(0.3)
    return list(range(1, 11))


@task
def clean(rows: list[int]) -> list[int]:
    print("  running clean", flush=True)
    time.sleep(0.3)
    return [r for r in rows if r % 5]


@task
def enrich(rows: list[int]) -> list[dict[str, int]]:
    print("  running enrich", flush=True)
    time.sleep(0.3)
    return [{"id": r, "square": r * r} for r in rows]


@task
def aggregate(rows: list[dict[str, int]]) -> int:
    print("  running aggregate", flush=True)
    time.sleep(0.3)
    return sum(r["square"] for r in rows)


@task
def publish(total: int) -> str:
    print("  running publish", flush=True)
    time.sleep(0.3)
    return f"published total={total}"


@task
def notify(message: str) -> str:
    print("  running notify", flush=True)
    time.sleep(0.3)
    get_run_logger().info("notified", message=message)
    return message


@flow(log_prints=True)
def pipeline(source: str = "sales.csv") -> str:
    """Extract, clean, enrich, aggregate, publish, notify."""
    rows = extract(source)
    rows = clean(rows)
    enriched = enrich(rows)
    total = aggregate(enriched)
    return notify(publish(total))


if __name__ == "__main__":
    print(pipeline())
