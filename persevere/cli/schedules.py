"""Schedules on the command line: ``deploy --cron/--interval/--rrule``, ``deployments
schedule ...``, ``pause-schedule``, ``resume-schedule``, ``backfill``.

The commands here are added to the ``deployments`` group by
:mod:`persevere.cli.deployments`; ``persevere scheduler`` is with the worker's
commands (:mod:`persevere.cli.workers`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import clock
from ..journal import Journal
from ..journal.deployments import Deployment
from ..journal.schedules import Schedule
from ..statemachine.calendar import describe, local_iso, parse_time
from ..statemachine.catchup import POLICIES, grace_label
from ..worker import parameters, scheduling
from ..worker.scheduling import ScheduleSpec
from .app import UserError, journal_of
from .output import echo_table, iso, stored

F = TypeVar("F", bound=Callable[..., Any])

KIND_OPTIONS = ("cron", "interval", "rrule")
CATCHUP_HELP = (
    "Which overdue times still run after a scheduler was down or no worker took them: "
    "latest (the newest; default), skip (none), all (the newest --catchup-cap)."
)


def whole(ctx: click.Context, param: click.Parameter, value: Any) -> int | None:
    """Option callback: a whole number of at least 1; a bad one is one line, not a usage text."""
    if value is None:
        return None
    flag = param.opts[0] if param.opts else "value"
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} {value!r} must be a whole number") from None
    if number < 1:
        raise UserError(f"{flag} {number} must be at least 1")
    return number


def policy(ctx: click.Context, param: click.Parameter, value: Any) -> str | None:
    """Option callback: a catch-up policy; a bad one is one line that lists the good ones."""
    if value is not None and value not in POLICIES:
        raise UserError(
            f"--catchup {value!r} must be one of: latest (the newest overdue run), skip "
            "(none), all (the newest --catchup-cap)"
        )
    return None if value is None else str(value)


def _shared_options(fn: F) -> F:
    """--timezone, --anchor, --catchup, --catchup-cap, --grace (None when not given)."""
    for option in reversed(
        [
            click.option(
                "--timezone", "-z", help="IANA timezone its times are read in (default: UTC)."
            ),
            click.option(
                "--anchor",
                metavar="ISO",
                help="Where an --interval counts from, or an --rrule without DTSTART "
                "(naive: in --timezone).",
            ),
            click.option(
                "--catchup", metavar="latest|skip|all", callback=policy, help=CATCHUP_HELP
            ),
            click.option(
                "--catchup-cap",
                metavar="N",
                callback=whole,
                help="With --catchup all: at most this many overdue runs (default 100).",
            ),
            click.option(
                "--grace",
                metavar="DURATION",
                help="A run not started this long after its time is Late (default 60s).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def schedule_options(fn: F) -> F:
    """The options of ``persevere deploy`` that give the deployment's schedules."""
    fn = _shared_options(fn)
    for option in reversed(
        [
            click.option(
                "--cron",
                "crons",
                multiple=True,
                metavar="EXPR",
                help="A cron schedule, e.g. '0 7 * * 1-5' (repeatable).",
            ),
            click.option(
                "--interval",
                "intervals",
                multiple=True,
                metavar="EVERY",
                help="An interval schedule: 15m, 1h30m, 2d, or seconds (repeatable).",
            ),
            click.option(
                "--rrule",
                "rrules",
                multiple=True,
                metavar="RULE",
                help="An RFC 5545 rule, e.g. 'FREQ=WEEKLY;BYDAY=MO' (repeatable).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def specs_from(options: dict[str, Any]) -> list[ScheduleSpec] | None:
    """The schedules ``persevere deploy`` was given; None if none (they are kept)."""
    given = (
        [("cron", e) for e in options.get("crons", ())]
        + [("interval", e) for e in options.get("intervals", ())]
        + [("rrule", e) for e in options.get("rrules", ())]
    )
    if not given:
        shared = [k for k in ("timezone", "anchor", "catchup", "catchup_cap", "grace")
                  if options.get(k) is not None]  # fmt: skip
        if shared:
            flag = "--" + shared[0].replace("_", "-")
            raise UserError(f"{flag} is an option of schedules; give --cron, --interval or --rrule")
        return None
    return [_spec(kind, expression, options) for kind, expression in given]


def _spec(
    kind: str,
    expression: str,
    options: dict[str, Any],
    values: dict[str, Any] | None = None,
    texts: dict[str, str] | None = None,
    active: bool = True,
) -> ScheduleSpec:
    return ScheduleSpec(
        kind=kind,
        expression=expression,
        timezone=options.get("timezone") or "UTC",
        anchor=options.get("anchor"),
        parameters=values or {},
        texts=texts,
        catchup=options.get("catchup") or "latest",
        catchup_cap=options.get("catchup_cap") or 100,
        grace=options.get("grace") or 60.0,
        active=active,
    )


# -- showing schedules ---------------------------------------------------------------------


def schedule_line(schedule: Schedule, now: int) -> str:
    """``ab12cd34  cron '0 7 * * 1-5' in Europe/Berlin, catch-up latest; next 2026-...``."""
    text = f"{schedule.short_id}  {describe(schedule.calendar)}, catch-up {schedule.catchup}"
    if schedule.catchup == "all":
        text += f" (cap {schedule.catchup_cap})"
    text += f", grace {grace_label(schedule.grace_ms)}"
    if schedule.parameters != "{}":
        text += f", parameters {schedule.parameters}"
    if not schedule.is_active:
        return text + "; paused"
    return text + f"; next run {_next_label(schedule, now)}"


def _next_label(schedule: Schedule, now: int) -> str:
    found = scheduling.next_run(schedule, now)
    if found is None:
        return "-" if not schedule.is_active else "none (it never fires again)"
    return local_iso(found, schedule.timezone)


def schedule_doc(schedule: Schedule, now: int) -> dict[str, Any]:
    """One schedule for ``--json``."""
    found = scheduling.next_run(schedule, now)
    anchor = schedule.anchor_ms
    return {
        "id": schedule.id,
        "kind": schedule.kind,
        "expression": schedule.expression,
        "timezone": schedule.timezone,
        "anchor": None if anchor is None else local_iso(anchor, schedule.timezone),
        "description": describe(schedule.calendar),
        "parameters": stored(schedule.parameters),
        "active": schedule.is_active,
        "catchup": schedule.catchup,
        "catchup_cap": schedule.catchup_cap,
        "grace_seconds": schedule.grace_ms / 1000,
        "cursor": iso(schedule.cursor_ms),
        "next_run": None if found is None else local_iso(found, schedule.timezone),
    }


def next_of(schedules: list[Schedule], now: int) -> tuple[int, Schedule] | None:
    """The deployment's next scheduled time and the schedule it is of."""
    found = scheduling.preview(schedules, now, 1)
    return found[0] if found else None


def echo_schedules(journal: Journal, deployment: Deployment) -> None:
    """The deployment's schedules, a line each, and its next run."""
    now = clock.now_ms()
    found = journal.schedules.of(deployment)
    if not found:
        click.echo("  no schedules")
        return
    for s in found:
        click.echo(f"  schedule {schedule_line(s, now)}")
    upcoming = next_of(found, now)
    if upcoming is not None:
        t, s = upcoming
        click.echo(f"  next run: {local_iso(t, s.timezone)} (schedule {s.short_id})")


# -- deployments schedule ... ---------------------------------------------------------------


@click.group("schedule")
def schedule_group() -> None:
    """Add, list, preview and delete a deployment's schedules."""


@schedule_group.command("add")
@click.argument("name")
@click.option("--cron", metavar="EXPR", help="A cron expression, e.g. '0 7 * * 1-5'.")
@click.option("--interval", metavar="EVERY", help="An interval: 15m, 1h30m, 2d, or seconds.")
@click.option("--rrule", metavar="RULE", help="An RFC 5545 rule, e.g. 'FREQ=WEEKLY;BYDAY=MO'.")
@_shared_options
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A parameter of its runs, laid over the deployment's (JSON if it parses). Repeatable.",
)
@click.option("--inactive", is_flag=True, help="Add it paused (`resume-schedule` starts it).")
@click.pass_context
def add(
    ctx: click.Context, /, name: str, params: tuple[str, ...], inactive: bool, **options: Any
) -> None:
    """Add a schedule to deployment NAME: exactly one of --cron, --interval, --rrule."""
    kinds = [k for k in KIND_OPTIONS if options.get(k)]
    if len(kinds) != 1:
        what = "none" if not kinds else ", ".join("--" + k for k in kinds)
        raise UserError(f"give exactly one of --cron, --interval, --rrule (got {what})")
    journal = journal_of(ctx)
    deployment = journal.deployments.get(name)
    values, texts = parameters.parse_assignments(params)
    spec = _spec(kinds[0], options[kinds[0]], options, values, texts, not inactive)
    schedule = scheduling.add(journal, deployment, spec)
    click.echo(f"added schedule to {deployment.name}: {schedule_line(schedule, clock.now_ms())}")


@schedule_group.command("ls")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def ls(ctx: click.Context, name: str, as_json: bool) -> None:
    """List deployment NAME's schedules, with the next run of each in its timezone."""
    journal = journal_of(ctx)
    found = journal.schedules.of(journal.deployments.get(name))
    now = clock.now_ms()
    if as_json:
        click.echo(json.dumps([schedule_doc(s, now) for s in found], indent=2))
        return
    echo_table(
        [
            [
                s.short_id,
                s.kind,
                s.expression,
                s.timezone,
                "yes" if s.is_active else "paused",
                s.catchup,
                _next_label(s, now),
            ]
            for s in found
        ],
        ["ID", "KIND", "EXPRESSION", "TIMEZONE", "ACTIVE", "CATCHUP", "NEXT RUN"],
    )


@schedule_group.command("delete")
@click.argument("name")
@click.argument("schedule_id")
@click.pass_context
def delete(ctx: click.Context, name: str, schedule_id: str) -> None:
    """Delete schedule SCHEDULE_ID (or a unique prefix) of deployment NAME.

    Its runs made ahead that have not started are deleted too; its other runs stay.
    """
    journal = journal_of(ctx)
    deployment = journal.deployments.get(name)
    schedule = journal.schedules.get(deployment, schedule_id)
    deleted = journal.schedules.delete(schedule)
    click.echo(
        f"deleted schedule {schedule.short_id} of {deployment.name}"
        + (f" and {_runs(deleted)} it made ahead" if deleted else "")
    )


@schedule_group.command("preview")
@click.argument("name")
@click.option(
    "--count",
    type=str,
    metavar="N",
    callback=whole,
    default="10",
    show_default=True,
    help="How many times.",
)
@click.option("--timezone", "-z", help="Show the times in this zone (default: each schedule's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def preview(ctx: click.Context, name: str, count: int, timezone: str | None, as_json: bool) -> None:
    """The next COUNT times of deployment NAME's active schedules, in order. Makes nothing."""
    journal = journal_of(ctx)
    found = journal.schedules.of(journal.deployments.get(name))
    if timezone is not None:
        local_iso(0, timezone)  # an unknown zone: one clear line
    now = clock.now_ms()
    times = scheduling.preview(found, now, count)
    rows = [(local_iso(t, timezone or s.timezone), s) for t, s in times]
    if as_json:
        doc = [{"time": text, "schedule": s.id} for text, s in rows]
        click.echo(json.dumps(doc, indent=2))
        return
    echo_table(
        [[text, s.short_id, describe(s.calendar)] for text, s in rows],
        ["TIME", "SCHEDULE", "WHAT"],
    )
    if not rows:
        paused = sum(1 for s in found if not s.is_active)
        why = f" ({paused} paused)" if paused else ""
        click.echo(f"no upcoming times: {len(found) - paused} active schedules{why}", err=True)


# -- pause, resume, backfill ---------------------------------------------------------------


def _chosen(
    journal: Journal, name: str, schedule_id: str | None
) -> tuple[Deployment, list[Schedule]]:
    deployment = journal.deployments.get(name)
    if schedule_id is not None:
        return deployment, [journal.schedules.get(deployment, schedule_id)]
    found = journal.schedules.of(deployment)
    if not found:
        raise UserError(
            f"deployment {deployment.name!r} has no schedules; "
            f"`persevere deployments schedule add {deployment.name} --cron ...` adds one"
        )
    return deployment, found


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _next_day(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def _when(flag: str, text: str, zone: str) -> int:
    try:
        return parse_time(text, zone)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


@click.command("pause-schedule")
@click.argument("name")
@click.argument("schedule_id", required=False)
@click.pass_context
def pause_schedule(ctx: click.Context, name: str, schedule_id: str | None) -> None:
    """Pause schedule SCHEDULE_ID of deployment NAME (all its schedules if none given).

    The runs it made ahead that have not started are deleted; resuming makes
    them again. Times that pass while it is paused are not caught up.
    """
    journal = journal_of(ctx)
    deployment, chosen = _chosen(journal, name, schedule_id)
    changed, deleted = journal.schedules.set_active(chosen, False)
    paused = {s.id for s in changed}
    for s in chosen:
        state = "paused" if s.id in paused else "was paused already"
        click.echo(f"schedule {s.short_id} of {deployment.name} {state}")
    if deleted:
        click.echo(f"deleted {_runs(deleted)} made ahead that had not started")


@click.command("resume-schedule")
@click.argument("name")
@click.argument("schedule_id", required=False)
@click.pass_context
def resume_schedule(ctx: click.Context, name: str, schedule_id: str | None) -> None:
    """Resume schedule SCHEDULE_ID of deployment NAME (all its schedules if none given).

    It goes on from now: times that passed while it was paused are not
    caught up (`persevere deployments backfill` makes runs for them).
    """
    journal = journal_of(ctx)
    deployment, chosen = _chosen(journal, name, schedule_id)
    changed, _ = journal.schedules.set_active(chosen, True)
    resumed = {s.id: s for s in changed}
    now = clock.now_ms()
    for s in chosen:
        if s.id in resumed:
            upcoming = _next_label(resumed[s.id], now)
            click.echo(f"schedule {s.short_id} of {deployment.name} resumed; next run {upcoming}")
        else:
            click.echo(f"schedule {s.short_id} of {deployment.name} was active already")


@click.command("backfill")
@click.argument("name")
@click.option("--from", "start", required=True, metavar="ISO", help="The first time (inclusive).")
@click.option(
    "--to",
    "end",
    required=True,
    metavar="ISO",
    help="The last time (inclusive); a date alone means the whole of that day.",
)
@click.option("--schedule", "schedule_id", help="Only this schedule (default: the active ones).")
@click.option(
    "--timezone",
    "-z",
    help="Zone of --from/--to without an offset (default: the schedules' zone if they "
    "share one, else UTC).",
)
@click.option(
    "--max",
    "max_runs",
    type=str,
    metavar="N",
    callback=whole,
    default="1000",
    show_default=True,
    help="Refuse to make more runs than this.",
)
@click.pass_context
def backfill(
    ctx: click.Context,
    name: str,
    start: str,
    end: str,
    schedule_id: str | None,
    timezone: str | None,
    max_runs: int,
) -> None:
    """Make a run of deployment NAME for every time of its schedules from --from to --to.

    The runs are due now, in time order, for workers to take; catch-up never
    drops them. A time that has a run already is skipped, so a backfill can
    be repeated.
    """
    journal = journal_of(ctx)
    deployment, chosen = _chosen(journal, name, schedule_id)
    if schedule_id is None:
        chosen = [s for s in chosen if s.is_active]
        if not chosen:
            raise UserError(
                f"deployment {deployment.name!r} has no active schedules; give --schedule ID"
            )
    zones = {s.timezone for s in chosen}
    zone = timezone or (zones.pop() if len(zones) == 1 else "UTC")
    from_ms, to_ms = _when("--from", start, zone), _when("--to", end, zone)
    if _DATE_ONLY.fullmatch(end.strip()):  # --to 2026-11-07: that whole day
        to_ms = _when("--to", _next_day(end.strip()), zone) - 1
    done = scheduling.backfill(journal, deployment, chosen, from_ms, to_ms, max_runs)
    for s, t, run_id in done.made:
        click.echo(f"made run {run_id} for {local_iso(t, s.timezone)} (schedule {s.short_id})")
    for s, t in done.skipped:
        click.echo(f"skipped {local_iso(t, s.timezone)} (schedule {s.short_id}): it has a run")
    click.echo(
        f"backfill of {deployment.name} from {local_iso(from_ms, zone)} to "
        f"{local_iso(to_ms, zone)}: {_runs(len(done.made))} made, {len(done.skipped)} skipped",
        err=True,
    )
