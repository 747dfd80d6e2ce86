"""``persevere runs``: list, inspect, read logs of, and resume flow runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .. import clock
from ..journal import FlowRun, Journal, maintenance
from ..statemachine import FINAL_TYPES, StateType
from ..worker import reap, refresh, resume, retry_from
from ..worker.answers import NOTHING, answer, approve_flow_run, reject_flow_run, shape
from ..worker.cancelling import cancel
from .app import UserError, cli, journal_of
from .output import (
    echo_table,
    iso,
    local,
    local_of,
    parameters_of,
    result_of,
    run_summary,
    task_graph_dot,
    task_summary,
    transition_summary,
    upstream_label,
)
from .run import report, run_here

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
@click.option(
    "--dot",
    "as_dot",
    is_flag=True,
    help="Print the task run graph in Graphviz DOT (pipe to `dot -Tsvg`).",
)
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool, as_dot: bool) -> None:
    """Show a run: its state history, its task runs (with the task runs their
    inputs came from) and its result."""
    journal = journal_of(ctx)
    run = refresh(journal, journal.resolve_flow_run(run_id))
    history = [transition_summary(t) for t in journal.history(run.id)]
    tasks = [task_summary(t) for t in journal.task_runs(run.id)]
    if as_dot:
        click.echo(task_graph_dot(run.id, tasks))
        return
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
    if run.state_type is StateType.PAUSED:
        _echo_pause(run)
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
                upstream_label(run.id, t["upstream"]),
                t["state_message"],
            ]
            for t in tasks
        ],
        ["#", "TASK", "STATE", "ATTEMPTS", "DURATION", "INPUTS FROM", "MESSAGE"],
    )
    if has_result:
        click.echo(f"\nresult: {json.dumps(result)}")


def _echo_pause(run: FlowRun) -> None:
    """How a paused run goes on."""
    waits = shape(run)
    if waits is not None:
        click.echo(f"  waits for:  {waits}")
    if run.pause_deadline_ms is not None:
        then = "cancelled" if run.pause_on_timeout == "cancel" else "failed"
        click.echo(f"  times out:  {local(run.pause_deadline_ms)} (then {then})")
    if run.state_name == "Suspended" and run.scheduled_ms is not None and waits is None:
        click.echo(f"  wakes:      {local(run.scheduled_ms)}")
    else:
        how = "--input JSON" if waits is not None else "or approve/reject"
        click.echo(f"  resume:     persevere runs resume {run.id} {how}")


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
@click.option("--input", "input_text", metavar="JSON", help="The input a paused run waits for.")
@click.option(
    "--input-file",
    metavar="FILE",
    help="The input a paused run waits for, read from a JSON file (- for stdin).",
)
@click.pass_context
def resume_cmd(
    ctx: click.Context, run_id: str, input_text: str | None, input_file: str | None
) -> None:
    """Go on with a run: a Paused one with the input it waits for (checked against
    its type; a bad input is refused and the run stays Paused), or a Crashed,
    Failed or Cancelled one, executed again here from its last checkpoint.

    Task runs that completed before are replayed from the journal, not run again.
    """
    value = _input_of(input_text, input_file)
    journal = journal_of(ctx)
    run = journal.resolve_flow_run(run_id)
    if run.state_type is StateType.PAUSED:
        _go_on(journal, answer(journal, run, value))
        return
    if value is not NOTHING:
        raise UserError(f"run {run.id} is {run.state_name}, not Paused: --input is for paused runs")
    state = run_here(lambda: resume(journal, run.id)[0])
    report(state, state.run_id or run.id)


@runs.command("approve")
@click.argument("run_id")
@click.option("--comment", help="Given to the flow if its input has a comment or reason field.")
@click.pass_context
def approve_cmd(ctx: click.Context, run_id: str, comment: str | None) -> None:
    """Approve a Paused run: resume it with a yes.

    A pause waiting for a bool gets true; one waiting for an input with a bool
    field `approved` gets {"approved": true} (and the comment); one waiting for
    no input simply goes on.
    """
    journal = journal_of(ctx)
    _go_on(journal, approve_flow_run(run_id, comment, journal))


@runs.command("reject")
@click.argument("run_id")
@click.option("--reason", help="Why; given to the flow (or in the error its pause raises).")
@click.pass_context
def reject_cmd(ctx: click.Context, run_id: str, reason: str | None) -> None:
    """Reject a Paused run: resume it with a no.

    A pause waiting for a bool gets false; one waiting for an input with a bool
    field `approved` gets {"approved": false} (and the reason); at a pause waiting
    for no input, the flow gets PauseRejected (the run fails unless it catches it).
    """
    journal = journal_of(ctx)
    _go_on(journal, reject_flow_run(run_id, reason, journal))


def _input_of(text: str | None, file: str | None) -> Any:
    """The input given on the command line, parsed; NOTHING if none."""
    if text is not None and file is not None:
        raise UserError("give the input with --input or with --input-file, not both")
    if file == "-":
        text = sys.stdin.read()
    elif file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise UserError(f"--input-file {file}: {exc.strerror or exc}") from None
    if text is None:
        return NOTHING
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"the input is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "e.g. --input '{\"approved\": true}'"
        ) from None


def _go_on(journal: Journal, run: FlowRun) -> None:
    """Say who goes on with an answered run; execute it here if nobody else will."""
    if run.state_type is StateType.RUNNING:
        owner = run.owner.label() if run.owner else "its process"
        click.echo(f"run {run.id} resumed: {owner} goes on with it", err=True)
        return
    if run.work_queue is not None:
        click.echo(
            f"run {run.id} resumed: Scheduled on work queue {run.work_queue!r}, "
            "where a worker takes it",
            err=True,
        )
        return
    click.echo(f"run {run.id} resumed: executing it here", err=True)
    state = run_here(lambda: resume(journal, run.id)[0])
    report(state, state.run_id or run.id)


@runs.command("retry")
@click.argument("run_id")
@click.option(
    "--from-task",
    "from_task",
    required=True,
    metavar="TASK",
    help="The task run to start from: key-N as `runs show` prints it, or key.",
)
@click.pass_context
def retry_cmd(ctx: click.Context, run_id: str, from_task: str) -> None:
    """Run a finished run again as a new run, from a chosen task on.

    The task runs before it completed are copied into the new run and
    replayed; that task and everything after it run again. The old run and
    its history are left as they are.
    """
    journal = journal_of(ctx)
    state = run_here(lambda: retry_from(journal, run_id, from_task)[0])
    report(state, state.run_id or "?")


@runs.command("cancel")
@click.argument("run_id")
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="After SIGTERM to the run's process group, when to SIGKILL it.",
)
@click.pass_context
def cancel_cmd(ctx: click.Context, run_id: str, grace_seconds: float) -> None:
    """Cancel a run: a Scheduled or Paused one at once; a Running one is stopped,
    its whole process group with it (SIGTERM, then SIGKILL after the grace period).

    Exit code 0 once the run is Cancelled (or Cancelling, when its process is
    on another host and stops itself), 1 if it ended otherwise first.
    """
    journal = journal_of(ctx)
    run = cancel(journal, run_id, grace_seconds, say=lambda line: click.echo(line, err=True))
    click.echo(f"run {run.id} {run.state_name}", err=True)
    if run.state_type is not StateType.CANCELLED and run.state_name != "Cancelling":
        sys.exit(1)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``15m``, ``90s``, ``2w`` as seconds."""
    number, unit = text[:-1], text[-1:].lower()
    try:
        seconds = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise click.BadParameter(
            f"{text!r}: give a number and a unit, e.g. 30d, 12h, 15m"
        ) from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r} must be greater than zero")
    return seconds


@runs.command()
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="Remove runs that ended longer ago than this (30d, 12h, 15m, 2w).",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["COMPLETED", "FAILED", "CRASHED", "CANCELLED"], case_sensitive=False),
    help="Only runs whose state is of this type (repeatable; default: all final).",
)
@click.pass_context
def prune(ctx: click.Context, older_than: str, states: tuple[str, ...]) -> None:
    """Remove old finished runs, their history, logs and unreferenced results."""
    cutoff = clock.now_ms() - int(parse_age(older_than) * 1000)
    chosen = [StateType(s.upper()) for s in states] or list(FINAL_TYPES)
    report = maintenance.prune(journal_of(ctx), cutoff, chosen)
    click.echo(
        f"removed {report.flow_runs} flow runs, {report.task_runs} task runs, "
        f"{report.results} results ({report.files} files); database "
        f"{report.bytes_before / 1e6:.2f} MB -> {report.bytes_after / 1e6:.2f} MB"
    )
