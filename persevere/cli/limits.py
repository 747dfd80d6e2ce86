"""``persevere concurrency-limit``: create, list, inspect, reset and delete limits."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import clock
from ..journal import Journal
from ..journal.limits import ConcurrencyLimit, SlotHolder
from ..worker.concurrency import holder_is_dead
from .app import UserError, cli, journal_of
from .output import echo_table, iso, local_of


@cli.group("concurrency-limit")
def concurrency_limit() -> None:
    """Limit how many task runs (by tag) or blocks (by name) run at once."""


def _free_dead(journal: Journal, names: list[str]) -> None:
    """Free the slots of holders that are gone, so what is shown is live."""
    if names:
        stale_ms = int(journal.settings.lease_seconds * 1000)
        journal.limits.free_dead(names, holder_is_dead, clock.now_ms(), stale_ms)


def _limit(journal: Journal, name: str) -> ConcurrencyLimit:
    found = journal.limits.get(name)
    if found is None:
        raise UserError(
            f"no concurrency limit named {name!r}; `persevere concurrency-limit ls` lists them"
        )
    return found


def _summary(journal: Journal, limit: ConcurrencyLimit) -> dict[str, Any]:
    held = journal.limits.holders(limit.name)
    waiting = {w.ticket for w in journal.limits.waiters(limit.name)}
    return {
        "name": limit.name,
        "slots": limit.slots,
        "active_slots": sum(h.occupy for h in held),
        "draining_slots": round(limit.draining(clock.now_ms()), 3),
        "slot_decay_per_second": limit.decay_per_second,
        "waiting": len(waiting),
        "created": iso(limit.created_ms),
        "updated": iso(limit.updated_ms),
    }


@concurrency_limit.command()
@click.argument("name")
@click.argument("slots", type=click.IntRange(min=0))
@click.option(
    "--slot-decay-per-second",
    "decay",
    type=click.FloatRange(min=0),
    default=None,
    help="Make it a rate limit: released slots drain away at this many per second "
    "(0: a plain limit; default: 0 for a new limit, unchanged for an existing one).",
)
@click.pass_context
def create(ctx: click.Context, name: str, slots: int, decay: float | None) -> None:
    """Create limit NAME of SLOTS slots (or change the size of an existing one).

    Task runs tagged NAME (``@task(tags=["NAME"])``) and ``concurrency("NAME")``
    blocks then hold at most SLOTS slots at once, across every process on
    the database. With 0 slots they fail at once (ConcurrencyError) instead of running.
    """
    journal = journal_of(ctx)
    if decay is None:
        existing = journal.limits.get(name)
        decay = existing.decay_per_second if existing else 0.0
    created = journal.limits.put(name, slots, decay, clock.now_ms())
    rate = f", draining {decay:g} slot(s) per second" if decay else ""
    click.echo(
        f"{'created' if created else 'updated'} concurrency limit {name!r}: {slots} slots{rate}"
    )


@concurrency_limit.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List the limits, with the slots held now and how many wait."""
    journal = journal_of(ctx)
    limits = journal.limits.all()
    _free_dead(journal, [lim.name for lim in limits])
    rows = [_summary(journal, lim) for lim in limits]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    echo_table(
        [
            [
                r["name"],
                str(r["slots"]),
                str(r["active_slots"]),
                str(r["waiting"]),
                f"{r['slot_decay_per_second']:g}" if r["slot_decay_per_second"] else "-",
            ]
            for r in rows
        ],
        ["NAME", "SLOTS", "ACTIVE", "WAITING", "DECAY/S"],
    )


def _holder_row(journal: Journal, held: SlotHolder) -> dict[str, Any]:
    task = journal.query("SELECT task_key, dynamic_key FROM task_runs WHERE id = ?", (held.holder,))
    return {
        "holder": held.holder,
        "task": f"{task[0][0]}-{task[0][1]}" if task else None,
        "flow_run_id": held.flow_run_id,
        "owner": held.owner.label(),
        "occupy": held.occupy,
        "since": iso(held.since_ms),
        **({"ticket": held.ticket} if held.ticket is not None else {}),
    }


@concurrency_limit.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def inspect(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show who holds each slot of limit NAME and since when, and who waits, in order."""
    journal = journal_of(ctx)
    limit = _limit(journal, name)
    _free_dead(journal, [name])
    doc = _summary(journal, limit)
    doc["holders"] = [_holder_row(journal, h) for h in journal.limits.holders(name)]
    waiters = {w.ticket: w for w in journal.limits.waiters(name)}
    doc["waiters"] = [_holder_row(journal, w) for w in waiters.values()]
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    rate = f", draining {doc['draining_slots']:g}" if limit.decay_per_second else ""
    click.echo(f"limit {name}: {doc['active_slots']} of {limit.slots} slots held{rate}")
    click.echo("\nholders:")
    echo_table(_rows(doc["holders"]), ["HOLDER", "TASK", "FLOW RUN", "OWNER", "SLOTS", "SINCE"])
    click.echo("\nwaiting (first in line first):")
    echo_table(_rows(doc["waiters"]), ["HOLDER", "TASK", "FLOW RUN", "OWNER", "SLOTS", "SINCE"])


def _rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            e["holder"],
            e["task"] or "-",
            e["flow_run_id"] or "-",
            e["owner"],
            str(e["occupy"]),
            local_of(e["since"]),
        ]
        for e in entries
    ]


@concurrency_limit.command()
@click.argument("name")
@click.pass_context
def reset(ctx: click.Context, name: str) -> None:
    """Free every slot of limit NAME (their holders go on; new ones wait again)."""
    journal = journal_of(ctx)
    _limit(journal, name)
    freed = journal.limits.reset(name)
    click.echo(f"freed {freed} slot holder{'' if freed == 1 else 's'} of {name!r}")


@concurrency_limit.command()
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Remove limit NAME: what it limited runs unlimited."""
    journal = journal_of(ctx)
    _limit(journal, name)
    journal.limits.delete(name)
    click.echo(f"deleted concurrency limit {name!r}")
