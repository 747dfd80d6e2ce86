"""``persevere runs``: list, inspect, read logs of, and resume flow runs."""

from __future__ import annotations

import json

import click

from ..exceptions import RunInterrupted
from ..statemachine import StateType
from ..worker import reap, refresh, resume
from .app import cli, journal_of
from .output import (
    echo_table,
    iso,
    local,
    parameters_of,
    result_of,
    run_summary,
    task_summary,
    transition_summary,
)
from .run import interrupted, report

STATE_TYPES = [t.value for t in StateType]


@cli.group()
def runs() -> None:
    """Inspect and resume flow runs."""


@runs.command("ls")
@click.option(
    "--state",
    type=click.Choice(STATE_TYPES, case_sensitive=False),
    help="Only runs whose state is of this type.",
)
@click.option("--flow", "flow_name", help="Only runs of this flow.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(
    ctx: click.Context, state: str | None, flow_name: str | None, limit: int, as_json: bool
) -> None:
    """List flow runs, newest first."""
    journal = journal_of(ctx)
    reap(journal)
    found = journal.list_flow_runs(StateType(state.upper()) if state else None, flow_name, limit)
    if as_json:
        click.echo(json.dumps([run_summary(r) for r in found], indent=2))
        return
    echo_table(
        [[r.id, r.flow_name, r.state_name, local(r.created_ms), r.run_key or ""] for r in found],
        ["ID", "FLOW", "STATE", "CREATED", "RUN KEY"],
    )


@runs.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show a run: its state history, its task runs and its result."""
    journal = journal_of(ctx)
    run = refresh(journal, journal.resolve_flow_run(run_id))
    history = [transition_summary(t) for t in journal.history(run.id)]
    tasks = [task_summary(t) for t in journal.task_runs(run.id)]
    has_result, result = result_of(journal, run)
    if as_json:
        doc = {**run_summary(run), "history": history, "task_runs": tasks}
        if has_result:
            doc["result"] = result
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"run {run.id}  flow {run.flow_name}  {run.state_name} ({run.state_type.value})")
    if run.state_message:
        click.echo(f"  message:    {run.state_message}")
    click.echo(f"  parameters: {json.dumps(parameters_of(run))}")
    for label, value in (
        ("run key", run.run_key),
        ("entrypoint", run.entrypoint),
        ("parent run", run.parent_flow_run_id),
    ):
        if value:
            click.echo(f"  {label + ':':<11} {value}")
    if run.owner is not None:
        click.echo(f"  owner:      {run.owner.label()}")
    click.echo("\nhistory:")
    echo_table(
        [
            [str(h["version"]), h["type"], h["name"], local_of(h["timestamp"]), h["message"]]
            for h in history
        ],
        ["V", "TYPE", "NAME", "TIME", "MESSAGE"],
    )
    click.echo("\ntask runs:")
    echo_table(
        [
            [
                str(t["position"]),
                f"{t['task_key']}-{t['dynamic_key']}",
                t["state_name"],
                str(t["attempts"]),
                _secs(t["duration_seconds"]),
                t["state_message"],
            ]
            for t in tasks
        ],
        ["#", "TASK", "STATE", "ATTEMPTS", "DURATION", "MESSAGE"],
    )
    if has_result:
        click.echo(f"\nresult: {json.dumps(result)}")


def local_of(iso_text: str) -> str:
    """An ISO timestamp from the JSON form, as local time for the table."""
    import datetime as dt

    return local(int(dt.datetime.fromisoformat(iso_text).timestamp() * 1000))


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


@runs.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def logs(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Print the log lines stored with a run."""
    journal = journal_of(ctx)
    run = journal.resolve_flow_run(run_id)
    lines = journal.logs(run.id)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "timestamp": iso(line.ts_ms),
                        "level": line.level,
                        "logger": line.logger,
                        "task_run_id": line.task_run_id,
                        "message": line.message,
                        "extra": json.loads(line.extra) if line.extra else None,
                    }
                    for line in lines
                ],
                indent=2,
            )
        )
        return
    for line in lines:
        extra = f" {line.extra}" if line.extra else ""
        click.echo(f"{local(line.ts_ms)} {line.level:<7} {line.message}{extra}")


@runs.command("resume")
@click.argument("run_id")
@click.pass_context
def resume_cmd(ctx: click.Context, run_id: str) -> None:
    """Execute a Crashed, Failed or Cancelled run again, here, from its last checkpoint.

    Task runs that completed before are replayed from the journal, not run again.
    """
    journal = journal_of(ctx)
    run = journal.resolve_flow_run(run_id)
    try:
        state, run = resume(journal, run.id)
    except RunInterrupted as exc:
        interrupted(exc.run_id)
        return
    report(state, run.id)
