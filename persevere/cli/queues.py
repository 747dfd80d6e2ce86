"""``persevere queues``: the work queues where runs of deployments wait for a worker."""

from __future__ import annotations

import json
from typing import Any

import click

from ..journal.deployments import WorkQueue
from .app import UserError, cli, journal_of
from .output import echo_table, iso


def parse_limit(text: str) -> int | None:
    """``N`` (0 or more) or ``none`` as a queue limit."""
    if text.strip().lower() == "none":
        return None
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise UserError(f"queue limit {text!r} must be a whole number, 0 or more, or 'none'")
    return limit


def summary(queue: WorkQueue) -> dict[str, Any]:
    """The fields of ``queues ls --json``."""
    return {
        "name": queue.name,
        "concurrency_limit": queue.concurrency_limit,
        "paused": bool(queue.paused),
        "scheduled": queue.scheduled,
        "running": queue.active,
        "description": queue.description,
        "created": iso(queue.created_ms),
        "updated": iso(queue.updated_ms),
    }


@cli.group()
def queues() -> None:
    """Work queues: where runs of deployments wait for a worker.

    A paused queue keeps its runs waiting; a queue's limit caps how many of
    its runs are Pending or Running at once, across all workers.
    """


@queues.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List work queues with how many of their runs wait and run."""
    rows = [summary(q) for q in journal_of(ctx).deployments.queues()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    echo_table(
        [
            [
                r["name"],
                "-" if r["concurrency_limit"] is None else str(r["concurrency_limit"]),
                "yes" if r["paused"] else "no",
                str(r["scheduled"]),
                str(r["running"]),
                r["description"],
            ]
            for r in rows
        ],
        ["NAME", "LIMIT", "PAUSED", "SCHEDULED", "RUNNING", "DESCRIPTION"],
    )


@queues.command()
@click.argument("name")
@click.option("--limit", metavar="N", help="At most N of its runs Pending or Running at once.")
@click.option("--description", default="", help="What the queue is for.")
@click.pass_context
def create(ctx: click.Context, name: str, limit: str | None, description: str) -> None:
    """Create work queue NAME."""
    cap = None if limit is None else parse_limit(limit)
    queue = journal_of(ctx).deployments.create_queue(name, cap, description)
    shown = "no limit" if queue.concurrency_limit is None else f"limit {queue.concurrency_limit}"
    click.echo(f"created work queue {queue.name!r} ({shown})")


@queues.command()
@click.argument("name")
@click.pass_context
def pause(ctx: click.Context, name: str) -> None:
    """Pause work queue NAME: workers take none of its runs until it is resumed."""
    queue = journal_of(ctx).deployments.pause_queue(name, True)
    click.echo(
        f"paused work queue {queue.name!r}: {queue.scheduled} scheduled runs wait until "
        f"`persevere queues resume {queue.name}` (runs started already go on)"
    )


@queues.command()
@click.argument("name")
@click.pass_context
def resume(ctx: click.Context, name: str) -> None:
    """Resume work queue NAME: workers take its runs again."""
    queue = journal_of(ctx).deployments.pause_queue(name, False)
    click.echo(f"resumed work queue {queue.name!r} ({queue.scheduled} scheduled runs)")


@queues.command("set-limit", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("limit", metavar="N|none")
@click.pass_context
def set_limit(ctx: click.Context, name: str, limit: str) -> None:
    """Let at most N runs of work queue NAME be Pending or Running at once (none: no limit).

    0 keeps every run waiting, like a pause. Runs started already go on.
    """
    queue = journal_of(ctx).deployments.set_queue_limit(name, parse_limit(limit))
    shown = "no limit" if queue.concurrency_limit is None else f"limit {queue.concurrency_limit}"
    click.echo(f"work queue {queue.name!r}: {shown}")


@queues.command()
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Delete work queue NAME, if no deployment uses it and no run waits on it."""
    journal_of(ctx).deployments.delete_queue(name)
    click.echo(f"deleted work queue {name!r}")
