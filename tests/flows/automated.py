"""Flows for the automation tests: one a deployment runs for an arrived file, one that
suspends itself (a Paused run for resume-flow-run)."""

from __future__ import annotations

import os
from pathlib import Path

import persevere
from persevere import flow


@flow
def ingest(path: str) -> str:
    """Appends the path it was given to the file AUTOMATED_SIDE names (if set)."""
    side = os.environ.get("AUTOMATED_SIDE")
    if side:
        with Path(side).open("a") as f:
            f.write(path + "\n")
    return f"ingested {path}"


@flow
def waits_for_go() -> str:
    persevere.suspend_flow_run(key="go")
    return "went"
