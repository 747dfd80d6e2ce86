"""``persevere run``: start a flow in the foreground."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable

import click

from ..exceptions import RunInterrupted, Terminated
from ..journal import open_journal
from ..statemachine import State, StateType
from ..worker import entrypoints, parameters
from ..worker.signals import raise_terminated
from .app import cli
from .output import jsonable

#: The exit code of ``persevere run`` (and ``runs resume``) when the run suspended itself.
SUSPENDED_EXIT = 3


def report(state: State, run_id: str) -> None:
    """Say how a run ended; exit 0 if it completed, 3 if it suspended itself, else 1."""
    if state.type is StateType.COMPLETED:
        click.echo(f"run {run_id} {state.name}", err=True)
        if state.data is not None:
            click.echo(json.dumps(jsonable(state.data)))
        return
    detail = f": {state.message}" if state.message else ""
    click.echo(f"run {run_id} {state.name}{detail}", err=True)
    if state.type is StateType.PAUSED:  # it suspended itself
        how = (
            "a worker goes on with it when its sleep is over"
            if state.message.startswith("sleeping")
            else f"it goes on after `persevere runs resume {run_id}` (or approve/reject)"
        )
        click.echo(f"  {how}", err=True)
        sys.exit(SUSPENDED_EXIT)
    click.echo(
        f"  see `persevere runs show {run_id}`; after a fix, `persevere runs resume {run_id}`",
        err=True,
    )
    sys.exit(1)


def interrupted(run_id: str) -> None:
    """Say how to go on after Ctrl-C; exit 130."""
    click.echo(f"run {run_id} interrupted; `persevere runs resume {run_id}` goes on", err=True)
    sys.exit(130)


def terminated(exc: Terminated) -> None:
    """Say how a run that SIGTERM stopped ended (Cancelled, or Crashed); exit 143."""
    if exc.run_id is not None:
        run = open_journal().get_flow_run(exc.run_id)
        click.echo(f"run {run.id} {run.state_name}: {run.state_message}", err=True)
    else:
        click.echo("persevere: stopped by SIGTERM", err=True)
    sys.exit(143)


def run_here(start: Callable[[], State]) -> State:
    """Run a flow in this process: Ctrl-C and SIGTERM are journaled, then reported."""
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return start()
    except RunInterrupted as exc:
        interrupted(exc.run_id)
    except Terminated as exc:
        terminated(exc)
    raise AssertionError("unreachable")


@cli.command()
@click.argument("entrypoint")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A flow parameter; VALUE is JSON if it parses, else a string. Repeatable.",
)
@click.option("--run-key", help="Idempotency key: resume or return the run that has it.")
def run(entrypoint: str, params: tuple[str, ...], run_key: str | None) -> None:
    """Run the flow ENTRYPOINT (path/to/file.py:func or module:func) now.

    Exit code 0 when the run completes, 1 when it fails, 2 on bad input, 3 when it
    suspended itself (`persevere runs resume` goes on with it).
    """
    flow = entrypoints.load(entrypoint)
    values, texts = parameters.parse_assignments(params)
    checked = parameters.check(flow.fn, flow.name, values, texts)
    if run_key:
        flow = flow.with_options(run_key=run_key)
    state = run_here(lambda: flow(**checked, return_state=True))
    report(state, state.run_id or "?")
