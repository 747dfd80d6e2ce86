"""Flows for the schedule tests."""

from __future__ import annotations

from persevere import flow


@flow
def nightly(day: str = "today", full: bool = False) -> str:
    return f"{day} {'full' if full else 'incremental'}"


@flow
def needs(region: str, retries: int = 0) -> str:
    return f"{region} {retries}"


@flow
def quick() -> int:
    return 1
