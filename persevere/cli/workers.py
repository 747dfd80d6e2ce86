"""``persevere worker start``, ``persevere scheduler`` and ``persevere workers ls``."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import clock
from ..worker.owners import this_process
from ..worker.scheduler import Scheduler
from ..worker.supervisor import Worker, is_live
from .app import UserError, cli, journal_of
from .output import echo_table, iso, local


def _stamped(line: str) -> None:
    """A line of what a worker or scheduler does, on stderr, with the local time."""
    click.echo(f"{local(clock.now_ms())} {line}", err=True)


@cli.group("worker")
def worker_group() -> None:
    """Run a worker: it executes the Scheduled runs of work queues."""


@worker_group.command("start")
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    metavar="QUEUE",
    help="A work queue to take runs from (repeatable; default: every queue).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Runs executed at once, each in a process of its own.",
)
@click.option("--name", help="The worker's name (default: HOST-PID).")
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="How often to look for due runs, crashed runs and cancel requests.",
)
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM/SIGINT, how long to let running runs finish before releasing them.",
)
@click.option(
    "--kill-grace-seconds",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="After SIGTERM to a run's process group (cancel, release), when to SIGKILL it.",
)
@click.option(
    "--no-scheduler",
    is_flag=True,
    help="Do not run the scheduler here: the runs of schedules, Late runs, waking "
    "suspended sleeps, timing out pauses and automations (`persevere scheduler` or other "
    "workers do).",
)
@click.pass_context
def start(
    ctx: click.Context,
    queues: tuple[str, ...],
    limit: int,
    name: str | None,
    poll_seconds: float,
    grace_seconds: float,
    kill_grace_seconds: float,
    no_scheduler: bool,
) -> None:
    """Claim and execute Scheduled runs until stopped (SIGTERM or Ctrl-C).

    A first signal stops claiming and waits up to --grace-seconds for the
    runs in hand, then releases the rest to other workers; a second one
    releases them at once. Crashed runs are resumed automatically (see
    @flow(max_auto_resumes=...)). Each round also makes the runs of
    deployments' schedules, marks waiting runs Late and evaluates automations,
    unless --no-scheduler.
    """
    worker = Worker(
        journal_of(ctx),
        name=name,
        queues=queues,
        limit=limit,
        poll_seconds=poll_seconds,
        grace_seconds=grace_seconds,
        kill_grace_seconds=kill_grace_seconds,
        say=_stamped,
        scheduler=not no_scheduler,
    )
    worker.run()


def _seconds(ctx: click.Context, param: click.Parameter, value: Any) -> float:
    """Option callback: seconds, at least 0.01; a bad value is one line, not a usage text."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UserError(f"--poll-seconds {value!r} must be a number of seconds") from None
    if not seconds >= 0.01:
        raise UserError(f"--poll-seconds {value} must be at least 0.01")
    return seconds


@cli.command("scheduler")
@click.option(
    "--poll-seconds",
    type=str,
    metavar="SECONDS",
    callback=_seconds,
    default="5",
    show_default=True,
    help="How often to make the runs of schedules, mark late runs and evaluate automations.",
)
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.pass_context
def scheduler(ctx: click.Context, poll_seconds: float, once: bool) -> None:
    """Make the runs of every deployment's schedules and evaluate automations (and run
    their actions), until SIGTERM or Ctrl-C.

    Every worker does this too (unless started with --no-scheduler); run this
    where no worker runs, or to keep schedules going while workers are
    stopped. Any number of schedulers may run at once: a time never gets two
    runs, an automation never fires twice.
    """
    journal = journal_of(ctx)
    say = _stamped
    runner = Scheduler(journal, say=say)
    if not once:
        say(f"scheduler started: a pass every {poll_seconds:g} s")
    runner.run(poll_seconds, once=once)
    if not once:
        say("scheduler stopped")


@cli.group("workers")
def workers_group() -> None:
    """Inspect workers."""


@workers_group.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Also workers that stopped or died.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List live workers: name, host, pid, queues, runs held, last heartbeat."""
    journal = journal_of(ctx)
    now = clock.now_ms()
    lease_ms = int(journal.settings.lease_seconds * 1000)
    rows = []
    for w in journal.workers.all():
        live = is_live(w, now, lease_ms)
        if not live and not show_all:
            continue
        status = "live" if live else ("stopped" if w.stopped_ms else "gone")
        rows.append((w, status))
    if as_json:
        doc = [
            {
                "name": w.name,
                "status": status,
                "host": w.host,
                "pid": w.pid,
                "queues": w.queue_list,
                "limit": w.run_limit,
                "runs_held": w.held,
                "started": iso(w.started_ms),
                "heartbeat": iso(w.heartbeat_ms),
                "this_host": w.host == this_process().host,
            }
            for w, status in rows
        ]
        click.echo(json.dumps(doc, indent=2))
        return
    echo_table(
        [
            [
                w.name,
                status,
                w.host,
                str(w.pid),
                ",".join(w.queue_list) or "*",
                f"{w.held}/{w.run_limit}",
                local(w.heartbeat_ms),
            ]
            for w, status in rows
        ],
        ["NAME", "STATUS", "HOST", "PID", "QUEUES", "RUNS", "HEARTBEAT"],
    )
