"""``persevere cache``: list and clear cross-run cache entries."""

from __future__ import annotations

import json

import click

from .app import cli, journal_of
from .output import echo_table, iso, local


@cli.group()
def cache() -> None:
    """Inspect and clear cached task results."""


@cache.command("ls")
@click.option("--task", "task_key", help="Only the entries of this task.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(ctx: click.Context, task_key: str | None, as_json: bool) -> None:
    """List cache entries, newest first."""
    entries = journal_of(ctx).cache.entries(task_key)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "key": e.key,
                        "task_key": e.task_key,
                        "task_run_id": e.task_run_id,
                        "created": iso(e.created_ms),
                        "expires": iso(e.expires_ms),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    echo_table(
        [
            [
                e.key[:16],
                e.task_key,
                local(e.created_ms),
                local(e.expires_ms) if e.expires_ms else "never",
            ]
            for e in entries
        ],
        ["KEY", "TASK", "CREATED", "EXPIRES"],
    )


@cache.command()
@click.option("--task", "task_key", help="Only the entries of this task.")
@click.pass_context
def clear(ctx: click.Context, task_key: str | None) -> None:
    """Remove cache entries (all of them, or one task's)."""
    removed = journal_of(ctx).cache.clear(task_key)
    click.echo(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")
