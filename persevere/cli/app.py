"""The ``persevere`` command group: options every command shares, and error handling.

Errors a user can act on become one line on stderr and exit code 2 (1 for a
database that fails underneath); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import click

from ..exceptions import PersevereError
from ..journal import Journal, open_journal


class UserError(click.ClickException):
    """Bad usage or bad input: one line, exit code 2."""

    exit_code = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (PersevereError, ValueError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise UserError(str(exc)) from None
        except sqlite3.Error as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(f"database error: {exc}") from None


@click.group(cls=_Group)
@click.option(
    "--db",
    "database",
    type=click.Path(dir_okay=False),
    envvar="PERSEVERE_DB",
    help="Database file (default: $PERSEVERE_HOME/persevere.db).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="persevere")
@click.pass_context
def cli(ctx: click.Context, database: str | None, debug: bool) -> None:
    """persevere: durable flows and tasks on one SQLite file."""
    ctx.obj = {"debug": debug}
    if database:
        # The engine opens its journal from the environment; keep them in step.
        os.environ["PERSEVERE_DB"] = database


def journal_of(ctx: click.Context) -> Journal:
    """The journal the command works on."""
    return open_journal()
