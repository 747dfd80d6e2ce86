"""``persevere automations``: define, list, inspect, pause, resume, delete; their history."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..automations import load_automations
from ..journal.automations import Automation, Firing, check_name
from ..statemachine import triggers
from ..statemachine.actions import parse_actions
from .app import UserError, cli, journal_of
from .output import echo_table, iso, local


def summary(automation: Automation) -> dict[str, Any]:
    """The fields of ``automations ls/inspect --json``."""
    return {
        "id": automation.id,
        "name": automation.name,
        "description": automation.description,
        "enabled": bool(automation.enabled),
        "trigger": automation.trigger_spec,
        "actions": automation.action_specs,
        "cursor": automation.cursor_seq,
        "due": iso(automation.due_ms),
        "created": iso(automation.created_ms),
        "updated": iso(automation.updated_ms),
    }


def firing_summary(firing: Firing) -> dict[str, Any]:
    """The fields of ``automations history --json``."""
    return {
        "id": firing.id,
        "fired": iso(firing.fired_ms),
        "trigger": firing.path or "trigger",
        "reason": firing.reason,
        "events": json.loads(firing.event_ids),
        "group": json.loads(firing.grp),
        "status": firing.status,
        "actions": firing.outcomes,
        "retry_at": iso(firing.next_ms) if firing.status == "pending" else None,
        "ended": iso(firing.ended_ms),
    }


def _describe(automation: Automation) -> str:
    try:
        return triggers.describe(triggers.parse_trigger(automation.trigger_spec))
    except ValueError as exc:
        return f"(invalid: {exc})"


@cli.group()
def automations() -> None:
    """Automations: when a trigger fires (events arrived, or an expected one did not
    arrive in time), run actions (run a deployment, call a webhook, notify, ...).

    Every worker and every `persevere scheduler` evaluates them; each firing is
    journaled once and shown by `persevere automations history NAME`.
    """


@automations.command("create")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--replace", is_flag=True, help="Redefine automations that exist (they start over).")
@click.pass_context
def create_cmd(ctx: click.Context, file: str, replace: bool) -> None:
    """Create the automations in FILE (YAML or JSON: one, or a list; - for stdin)."""
    if file == "-":
        specs = load_automations("<stdin>", sys.stdin.read())
    else:
        try:
            specs = load_automations(file)
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc.strerror}") from None
    journal = journal_of(ctx)
    for spec in specs:  # each is checked before any is written
        check_name(spec["name"])
        triggers.parse_trigger(spec["trigger"])
        parse_actions(spec["actions"])
        if not replace and spec["name"] in {a.name for a in journal.automations.all()}:
            raise UserError(
                f"automation {spec['name']!r} exists already; use --replace to redefine it "
                "(nothing in the file was created)"
            )
    for spec in specs:
        automation = journal.automations.create(
            spec["name"], spec["trigger"], spec["actions"], spec.get("description", ""),
            bool(spec.get("enabled", True)), replace,
        )  # fmt: skip
        click.echo(f"automation {automation.name} created: {_describe(automation)}")


@automations.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls_cmd(ctx: click.Context, as_json: bool) -> None:
    """List automations: enabled or paused, trigger, actions, last firing."""
    journal = journal_of(ctx)
    found = journal.automations.all()
    if as_json:
        click.echo(json.dumps([summary(a) for a in found], indent=2))
        return
    rows = []
    for a in found:
        last = journal.automations.history(a, 1)
        rows.append([
            a.name, "enabled" if a.enabled else "paused", _describe(a),
            ", ".join(s["type"] for s in a.action_specs),
            local(last[0].fired_ms) if last else "-",
        ])  # fmt: skip
    echo_table(rows, ["NAME", "STATUS", "TRIGGER", "ACTIONS", "LAST FIRED"])


@automations.command("inspect")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def inspect_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show an automation: its trigger, actions, state and recent firings."""
    journal = journal_of(ctx)
    automation = journal.automations.get(name)
    if as_json:
        click.echo(json.dumps(summary(automation), indent=2))
        return
    click.echo(f"automation {automation.name} ({automation.id})")
    if automation.description:
        click.echo(f"  {automation.description}")
    click.echo(f"  status:   {'enabled' if automation.enabled else 'paused'}")
    click.echo(f"  trigger:  {_describe(automation)}")
    for i, action in enumerate(automation.action_specs):
        fields = {k: v for k, v in action.items() if k != "type"}
        click.echo(f"  action {i}: {action['type']} {json.dumps(fields, sort_keys=True)}")
    if automation.due_ms is not None:
        click.echo(f"  next due: {local(automation.due_ms)}")
    for firing in journal.automations.history(automation, 5):
        click.echo(f"  fired {local(firing.fired_ms)}  {firing.status}  {firing.reason}")


def _set(ctx: click.Context, name: str, enabled: bool) -> None:
    automation = journal_of(ctx).automations.set_enabled(name, enabled)
    click.echo(f"automation {automation.name} {'resumed' if enabled else 'paused'}")


@automations.command("pause")
@click.argument("name")
@click.pass_context
def pause_cmd(ctx: click.Context, name: str) -> None:
    """Stop an automation from evaluating and firing."""
    _set(ctx, name, False)


@automations.command("resume")
@click.argument("name")
@click.pass_context
def resume_cmd(ctx: click.Context, name: str) -> None:
    """Let a paused automation evaluate again, from the events of now on."""
    _set(ctx, name, True)


@automations.command("delete")
@click.argument("name")
@click.pass_context
def delete_cmd(ctx: click.Context, name: str) -> None:
    """Delete an automation and its history."""
    automation = journal_of(ctx).automations.delete(name)
    click.echo(f"automation {automation.name} deleted")


@automations.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, help="At most this many firings.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def history_cmd(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    """The automation's firings, newest first: why, which events, each action's outcome."""
    if limit < 1:
        raise UserError(f"--limit {limit} must be 1 or more")
    journal = journal_of(ctx)
    firings = journal.automations.history(journal.automations.get(name), limit)
    if as_json:
        click.echo(json.dumps([firing_summary(f) for f in firings], indent=2))
        return
    if not firings:
        click.echo("no firings yet")
    for firing in firings:
        click.echo(f"{local(firing.fired_ms)}  {firing.status:<7}  {firing.reason}")
        events = json.loads(firing.event_ids)
        if events:
            click.echo(f"    events: {', '.join(events[:5])}" + (" ..." if len(events) > 5 else ""))
        for i, outcome in enumerate(firing.outcomes):
            text = outcome.get("outcome") or outcome.get("error") or ""
            retry = f" (retry at {local(outcome['next_ms'])})" if outcome.get("next_ms") else ""
            click.echo(
                f"    action {i} {outcome['type']}: {outcome['status']} "
                f"after {outcome.get('attempts', 0)} attempt(s){retry} {text}".rstrip()
            )
