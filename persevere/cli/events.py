"""``persevere events``: emit events, list them, follow them."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from .. import clock
from ..journal.events import Event
from ..statemachine.calendar import parse_interval, parse_time
from ..statemachine.triggers import matches
from .app import UserError, cli, journal_of
from .output import local


def labels(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    """``key=value`` pairs as labels."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} {pair!r} must be label=value, e.g. id=bucket/sales")
        out[key.strip()] = value
    return out


def json_object(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not JSON ({exc.msg} at character {exc.pos})") from None


def since_ms(text: str | None, option: str = "--since") -> int | None:
    """``--since``: a time (``2026-11-23T08:00``, UTC unless it says) or a span back (``1h``)."""
    if text is None:
        return None
    try:
        return clock.now_ms() - parse_interval(text) * 1000
    except ValueError:
        pass
    try:
        return parse_time(text, "UTC")
    except ValueError:
        raise UserError(
            f"{option} {text!r} is neither a time (2026-11-23T08:00) nor a span back (1h, 2d)"
        ) from None


def _line(event: Event) -> str:
    extra = {k: v for k, v in event.resource.items() if k != "id"}
    tail = " ".join(f"{k}={v}" for k, v in extra.items())
    payload = json.dumps(event.payload, sort_keys=True) if event.payload else ""
    if len(payload) > 80:
        payload = payload[:77] + "..."
    parts = [local(event.occurred_ms), event.event, event.resource["id"], tail, payload]
    return "  ".join(p for p in parts if p)


def _keep(event: Event, resource: dict[str, str]) -> bool:
    return all(matches(v, event.resource.get(k, "")) for k, v in resource.items())


@cli.group()
def events() -> None:
    """Events: what happened (runs' state changes, deployments, queues, your own).

    An event has a dotted name, a resource (an id and labels), related
    resources, a JSON payload and the time it occurred. Automations react
    to them (`persevere automations`).
    """


@events.command("emit")
@click.argument("name")
@click.option("--resource", "-r", "resource", multiple=True, required=True,
              help="A label of the resource, label=value; id=... is required.")  # fmt: skip
@click.option("--related", multiple=True, help="A related resource as JSON (repeatable).")
@click.option("--payload", "-p", help="The payload, a JSON object.")
@click.option(
    "--id", "event_id", help="The event's id (default: a new one); an id seen before is ignored."
)
@click.option(
    "--occurred",
    help="When it happened (default: now): a time, e.g. 2026-11-23T08:00Z, or 5m (ago).",
)
@click.pass_context
def emit_cmd(
    ctx: click.Context,
    name: str,
    resource: tuple[str, ...],
    related: tuple[str, ...],
    payload: str | None,
    event_id: str | None,
    occurred: str | None,
) -> None:
    """Journal an event NAME, e.g. `persevere events emit s3.file.arrived -r id=bucket/sales`.

    Prints the event's id. With --id, emitting the same event twice journals it once.
    """
    links = [json_object(r, "--related") for r in related]
    occurred_ms = since_ms(occurred, "--occurred") if occurred else None
    event, new = journal_of(ctx).events.emit(
        name,
        labels(resource, "--resource"),
        json_object(payload, "--payload"),
        links,
        id=event_id,
        occurred_ms=occurred_ms,
    )
    click.echo(event.id if new else f"{event.id} (journaled already: not emitted again)")


@events.command("ls")
@click.option("--name", "-n", "names", multiple=True, help="Only names matching (* wildcard).")
@click.option(
    "--resource", "-r", multiple=True, help="Only resources with label=value (* wildcard)."
)
@click.option("--since", help="Only since a time (2026-11-23T08:00) or a span back (1h).")
@click.option("--limit", default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    resource: tuple[str, ...],
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the newest events, oldest first."""
    if limit < 1:
        raise UserError(f"--limit {limit} must be 1 or more")
    wanted = labels(resource, "--resource")
    found: list[Event] = []
    before = None
    journal = journal_of(ctx)
    while len(found) < limit:  # labels other than id are matched here, page by page
        page = journal.events.newest(
            max(limit, 200), since_ms(since), before, wanted.get("id"), names
        )
        if not page:
            break
        found += [e for e in page if _keep(e, wanted)]
        before = page[-1].seq
    shown = list(reversed(found[:limit]))
    if as_json:
        click.echo(json.dumps([e.to_json() for e in shown], indent=2))
        return
    for event in shown:
        click.echo(_line(event))


@events.command("tail")
@click.option("--name", "-n", "names", multiple=True, help="Only names matching (* wildcard).")
@click.option(
    "--resource", "-r", multiple=True, help="Only resources with label=value (* wildcard)."
)
@click.option("--since", help="Start from a time or a span back (default: only new events).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--poll-seconds", default=0.5, show_default=True, help="How often to look.")
@click.option("--count", type=int, help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@click.pass_context
def tail_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    resource: tuple[str, ...],
    since: str | None,
    as_json: bool,
    poll_seconds: float,
    count: int | None,
    timeout: float | None,
) -> None:
    """Print events as they are journaled, until Ctrl-C (or --count, --timeout)."""
    wanted = labels(resource, "--resource")
    journal = journal_of(ctx)
    cursor = journal.events.last_seq()
    start = since_ms(since)
    if start is not None:
        older = journal.events.newest(10_000, start)
        cursor = older[-1].seq - 1 if older else cursor
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    stop = _stopper()
    while not stop() and (deadline is None or time.monotonic() < deadline):
        page = journal.events.after(cursor, 500)
        for event in page:
            cursor = event.seq
            if names and not any(matches(n, event.event) for n in names):
                continue
            if not _keep(event, wanted) or (start is not None and event.occurred_ms < start):
                continue
            click.echo(json.dumps(event.to_json()) if as_json else _line(event))
            shown += 1
            if count is not None and shown >= count:
                return
        if not page:
            time.sleep(poll_seconds)


def _stopper() -> Callable[[], bool]:
    """A check that turns true on SIGTERM or Ctrl-C (so `tail` ends with exit 0)."""
    stopped = {"yes": False}

    def handle(signum: int, frame: FrameType | None) -> None:
        stopped["yes"] = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
    return lambda: stopped["yes"]
