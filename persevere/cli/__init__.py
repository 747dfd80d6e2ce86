"""The command line: click commands only, thin over the packages below."""

from __future__ import annotations

from . import cache, limits, run, runs, workers  # noqa: F401  (they register their commands)
from .app import cli


def main() -> None:
    """The ``persevere`` console script."""
    cli(prog_name="persevere")


__all__ = ["cli", "main"]
