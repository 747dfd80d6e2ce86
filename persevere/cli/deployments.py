"""``persevere deploy`` and ``persevere deployments``: register flows for workers, run them."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import clock
from ..exceptions import PersevereError
from ..journal import FlowRun, Journal, Transition
from ..journal.deployments import Deployment
from ..statemachine import State, StateType
from ..worker import completed_state, deploying, entrypoints, parameters
from .app import UserError, cli, journal_of
from .output import echo_table, iso, local, local_of, run_summary, stored
from .run import report
from .schedules import (
    backfill,
    echo_schedules,
    next_of,
    pause_schedule,
    resume_schedule,
    schedule_doc,
    schedule_group,
    schedule_options,
    specs_from,
)

PARAM_HELP = "A parameter; VALUE is JSON if it parses, else a string. Repeatable."


def summary(deployment: Deployment) -> dict[str, Any]:
    """The fields of ``deployments ls --json``."""
    return {
        "name": deployment.name,
        "id": deployment.id,
        "flow_name": deployment.flow_name,
        "deployment_name": deployment.deployment_name,
        "entrypoint": deployment.entrypoint,
        "work_queue": deployment.work_queue,
        "parameters": stored(deployment.parameters),
        "tags": deployment.tag_list,
        "description": deployment.description,
        "created": iso(deployment.created_ms),
        "updated": iso(deployment.updated_ms),
    }


@cli.command()
@click.argument("entrypoint")
@click.option("--name", "-n", required=True, help="The deployment's name (without '/').")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@click.option(
    "--queue",
    "-q",
    default=deploying.DEFAULT_QUEUE,
    show_default=True,
    help="The work queue its runs wait on (made if missing).",
)
@click.option("--tag", "tags", multiple=True, help="A tag of the deployment and its runs.")
@click.option("--description", help="Shown by `deployments inspect` (default: the flow's).")
@schedule_options
@click.pass_context
def deploy(
    ctx: click.Context,
    /,
    entrypoint: str,
    name: str,
    params: tuple[str, ...],
    queue: str,
    tags: tuple[str, ...],
    description: str | None,
    **schedule: Any,
) -> None:
    """Register the flow ENTRYPOINT (path/to/file.py:func or module:func) as a
    deployment named FLOW-NAME/NAME, or update it.

    -p values are the defaults of its runs. `persevere deployments run` then
    makes runs that a worker (`persevere worker start`) polling the queue executes.

    --cron, --interval and --rrule (each repeatable) give its schedules;
    --timezone, --anchor, --catchup, --catchup-cap and --grace apply to all
    of them. They replace the schedules it had (one already there as given
    is kept as it is); given none, its schedules are kept. Workers (or
    `persevere scheduler`) make the scheduled runs.
    """
    journal = journal_of(ctx)
    specs = specs_from(schedule)
    flow = entrypoints.load(entrypoint)
    values, texts = parameters.parse_assignments(params)
    deployment, created = deploying.deploy(
        flow,
        name,
        values,
        queue,
        tags,
        description,
        given=entrypoint,
        texts=texts,
        journal=journal,
        schedules=specs,
    )
    click.echo(
        f"{'created' if created else 'updated'} deployment {deployment.name!r} "
        f"on work queue {deployment.work_queue!r}"
    )
    if specs is not None or journal.schedules.of(deployment):
        echo_schedules(journal, deployment)
    click.echo(f"  entrypoint: {deployment.entrypoint}", err=True)
    click.echo(f"  run it with `persevere deployments run {deployment.name}`", err=True)


@cli.group()
def deployments() -> None:
    """List, inspect, run and delete deployments; their schedules and backfills."""


deployments.add_command(schedule_group)
deployments.add_command(pause_schedule)
deployments.add_command(resume_schedule)
deployments.add_command(backfill)


@deployments.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List deployments by name."""
    journal = journal_of(ctx)
    found = journal.deployments.all()
    counts = journal.schedules.counts()
    if as_json:
        docs = [summary(d) for d in found]
        for doc, d in zip(docs, found, strict=True):
            active, total = counts.get(d.id, (0, 0))
            doc["schedules"] = {"active": active, "total": total}
        click.echo(json.dumps(docs, indent=2))
        return
    rows = []
    for d in found:
        active, total = counts.get(d.id, (0, 0))
        scheduled = f"{active}/{total}" if total else "-"
        rows.append(
            [d.name, d.work_queue, scheduled, ",".join(d.tag_list), local(d.updated_ms),
             d.entrypoint]
        )  # fmt: skip
    echo_table(rows, ["NAME", "QUEUE", "SCHEDULES", "TAGS", "UPDATED", "ENTRYPOINT"])


@deployments.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--runs",
    "limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of its newest runs to show.",
)
@click.pass_context
def inspect(ctx: click.Context, name: str, as_json: bool, limit: int) -> None:
    """Show deployment NAME (flow-name/deployment-name) and its recent runs."""
    journal = journal_of(ctx)
    deployment = journal.deployments.get(name)
    signature = deploying.Signature.of(deployment)
    recent = journal.deployments.runs(deployment, limit)
    doc = summary(deployment)
    doc["signature"] = {"parameters": signature.parameters, "var_keyword": signature.var_keyword}
    doc["runs"] = [run_summary(r) for r in recent]
    now = clock.now_ms()
    schedules = journal.schedules.of(deployment)
    doc["schedules"] = [schedule_doc(s, now) for s in schedules]
    upcoming = next_of(schedules, now)
    doc["next_run"] = None if upcoming is None else schedule_doc(upcoming[1], now)["next_run"]
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    queue = journal.deployments.queue(deployment.work_queue)
    queue_note = " (paused)" if queue.paused else ""
    click.echo(f"deployment {deployment.name}  (id {deployment.id})")
    for label, value in (
        ("flow", deployment.flow_name),
        ("entrypoint", deployment.entrypoint),
        ("work queue", deployment.work_queue + queue_note),
        ("parameters", json.dumps(doc["parameters"])),
        ("takes", signature.label()),
        ("tags", ", ".join(doc["tags"]) or "-"),
        ("description", deployment.description or "-"),
        ("created", local(deployment.created_ms)),
        ("updated", local(deployment.updated_ms)),
    ):
        click.echo(f"  {label + ':':<12} {value}")
    click.echo("\nschedules:")
    echo_schedules(journal, deployment)
    click.echo("\nrecent runs:")
    echo_table(
        [
            [r["id"], r["state_name"], local_of(r["created"]), r["run_key"] or ""]
            for r in doc["runs"]
        ],
        ["ID", "STATE", "CREATED", "RUN KEY"],
    )


def _say_where(journal: Journal, deployment: Deployment, run: FlowRun, fresh: bool) -> None:
    """Tell (stderr) what became of the request and who will run it."""
    if not fresh:
        click.echo(
            f"run key {run.run_key!r}: run {run.id} exists already ({run.state_name})", err=True
        )
        return
    queue = journal.deployments.queue(run.work_queue or deployment.work_queue)
    click.echo(
        f"scheduled run {run.id} of {deployment.name}; a worker polling work queue "
        f"{queue.name!r} (`persevere worker start`) picks it up",
        err=True,
    )
    if queue.paused:
        click.echo(
            f"  work queue {queue.name!r} is paused: `persevere queues resume {queue.name}` "
            "lets workers take its runs",
            err=True,
        )
    elif queue.concurrency_limit == 0:
        click.echo(
            f"  work queue {queue.name!r} has a limit of 0: "
            f"`persevere queues set-limit {queue.name} none` lets workers take its runs",
            err=True,
        )


def _print_move(move: Transition) -> None:
    message = f": {move.message}" if move.message else ""
    click.echo(f"{local(move.ts_ms)}  {move.name}{message}", err=True)


def _final_state(journal: Journal, run: FlowRun) -> State:
    if run.state_type is StateType.COMPLETED:
        try:
            return completed_state(journal, run)
        except (PersevereError, ImportError, AttributeError) as exc:
            # A pickled result of a class only the worker's code defines.
            click.echo(f"  its result cannot be loaded here: {type(exc).__name__}: {exc}", err=True)
    return State(run.state_type, run.state_name, run.state_message, run.ended_ms or 0, run.id)


def _watch(journal: Journal, run: FlowRun) -> None:
    """Follow the run to its end, printing each transition; exit as `persevere run` does."""
    try:
        run = deploying.follow(journal, run.id, on_move=_print_move)
    except KeyboardInterrupt:
        click.echo(
            f"stopped watching run {run.id}; it goes on (`persevere runs show {run.id}`)",
            err=True,
        )
        sys.exit(130)
    report(_final_state(journal, run), run.id)


@deployments.command("run")
@click.argument("name")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@click.option("--run-key", help="Idempotency key: return the run that has it, if there is one.")
@click.option(
    "--watch",
    is_flag=True,
    help="Follow the run to its end (Ctrl-C stops watching, not the run); "
    "exit 0 if it completes, 1 if not.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
@click.pass_context
def run_cmd(
    ctx: click.Context,
    name: str,
    params: tuple[str, ...],
    run_key: str | None,
    watch: bool,
    as_json: bool,
) -> None:
    """Make a run of deployment NAME (flow-name/deployment-name) for a worker.

    -p values are laid over the deployment's defaults. Prints the run's id
    (with --watch: its result, as `persevere run` does).
    """
    if watch and as_json:
        raise UserError(
            "--watch and --json do not go together; `persevere runs show ID --json` shows the run"
        )
    journal = journal_of(ctx)
    values, texts = parameters.parse_assignments(params)
    before = journal.find_flow_run_by_key(run_key) if run_key else None
    deployment, run = deploying.schedule(name, values, texts, run_key, journal=journal)
    _say_where(journal, deployment, run, fresh=before is None or before.id != run.id)
    if watch:
        _watch(journal, run)
    elif as_json:
        click.echo(json.dumps(run_summary(run), indent=2))
    else:
        click.echo(run.id)


@deployments.command()
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, name: str) -> None:
    """Delete deployment NAME; its runs waiting for a worker are cancelled, the rest stay."""
    deployment, cancelled = journal_of(ctx).deployments.delete(name)
    runs = f"; cancelled {len(cancelled)} scheduled run{'' if len(cancelled) == 1 else 's'}"
    click.echo(f"deleted deployment {deployment.name!r}{runs if cancelled else ''}")
