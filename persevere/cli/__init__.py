"""The command line: click commands only, thin over the packages below."""

from __future__ import annotations

# The command modules register their commands on import.
from . import (  # noqa: F401
    automations,
    cache,
    deployments,
    events,
    limits,
    queues,
    run,
    runs,
    schedules,
    workers,
)
from .app import cli


def main() -> None:
    """The ``persevere`` console script."""
    cli(prog_name="persevere")


__all__ = ["cli", "main"]
