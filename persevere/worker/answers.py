"""Answering a paused flow run: resume it (with input), approve it, or reject it.

The input is checked against the JSON schema the pause stored (its
``wait_for_input`` type, as pydantic describes it), so a resume from the
command line needs neither the flow's code nor its types: a bad input is
refused with the field it concerns, and the run stays Paused. The pause call
then turns the input into the type it waits for.

Who goes on after an answer: the process waiting at the pause, if it is
alive (the run goes back to Running under it); else the run becomes
Scheduled, for a worker if it is on a work queue, else for the caller
(``persevere runs resume`` executes it in the foreground).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from .. import clock
from ..exceptions import InputError, RunNotResumable
from ..journal import FlowRun, Journal, open_journal
from ..statemachine import StateType
from .owners import this_process
from .recovery import is_abandoned

#: "No input given" (None is an input: JSON null).
NOTHING: Any = object()


def resume_flow_run(
    run_id: str, run_input: Any = NOTHING, journal: Journal | None = None
) -> FlowRun:
    """Resume a paused flow run, with ``run_input`` (JSON-able) if its pause waits for input.

    Returns the run as it is then: Running (its waiting process goes on) or
    Scheduled (a worker, or ``persevere runs resume``, executes it again).
    Raises :class:`InputError` if the input does not fit, and
    :class:`RunNotResumable` if the run is not paused.
    """
    journal = journal or open_journal()
    return answer(journal, journal.resolve_flow_run(run_id), run_input)


def approve_flow_run(
    run_id: str, comment: str | None = None, journal: Journal | None = None
) -> FlowRun:
    """Approve a paused run: resume it with a yes (see :func:`yes_or_no`)."""
    journal = journal or open_journal()
    run = journal.resolve_flow_run(run_id)
    return answer(journal, run, yes_or_no(run, True, comment))


def reject_flow_run(
    run_id: str, reason: str | None = None, journal: Journal | None = None
) -> FlowRun:
    """Reject a paused run: resume it with a no, or, if its pause waits for no input,
    make the pause call raise :class:`~persevere.exceptions.PauseRejected`."""
    journal = journal or open_journal()
    run = journal.resolve_flow_run(run_id)
    if run.pause_input is None:
        why = f": {reason}" if reason else ""
        return answer(journal, run, NOTHING, rejected=f"rejected by {_who()}{why}")
    return answer(journal, run, yes_or_no(run, False, reason))


def yes_or_no(run: FlowRun, yes: bool, text: str | None) -> Any:
    """The input that says yes or no to a pause: nothing (no input is waited for),
    ``true``/``false`` (a bool input), or ``{"approved": ..., "reason"/"comment": text}``
    (an input with a bool field ``approved``)."""
    if run.pause_input is None:
        return NOTHING
    schema = json.loads(run.pause_input)
    if schema.get("type") == "boolean":
        return yes
    fields = schema.get("properties", {})
    if fields.get("approved", {}).get("type") == "boolean":
        value: dict[str, Any] = {"approved": yes}
        for name in ("reason", "comment"):
            if text is not None and name in fields:
                value[name] = text
                break
        return value
    raise InputError(
        run.id,
        "its pause waits for an input of its own shape, not a yes or no; give it with "
        f"`persevere runs resume {run.id} --input JSON`",
    )


def answer(
    journal: Journal, run: FlowRun, value: Any = NOTHING, rejected: str | None = None
) -> FlowRun:
    """Check and journal the answer to a paused run (see the module docstring)."""
    pause = _open_pause(journal, run)
    if rejected is None:
        check_input(run, value)
    waiting = run.state_name == "Paused" and run.lease_token is not None
    in_process = waiting and not is_abandoned(run)
    verb = "rejected" if rejected is not None else "resumed"
    message = f"{verb} by {_who()}"
    stored = None if value is NOTHING else value
    return journal.pauses.answer(run, pause, stored, rejected, message, in_process)


def _open_pause(journal: Journal, run: FlowRun) -> Any:
    if run.state_type is not StateType.PAUSED:
        raise RunNotResumable(
            run.id,
            run.state_name,
            f"run {run.id} is {run.state_name}, not Paused: nothing to answer",
        )
    pause = journal.pauses.open_pause(run.id)
    if pause is None and run.pause_deadline_ms is not None:  # it is ending this moment
        raise RunNotResumable(
            run.id, run.state_name, f"run {run.id}'s pause timed out just now; it is ending"
        )
    if pause is None:  # a sleep
        raise RunNotResumable(
            run.id,
            run.state_name,
            f"run {run.id} is suspended in a sleep ({run.state_message}); it wakes by itself "
            "while a worker or `persevere scheduler` runs; `persevere runs cancel` stops it",
        )
    deadline = run.pause_deadline_ms
    if deadline is not None and deadline <= clock.now_ms():
        waiting = run.state_name == "Paused" and run.lease_token is not None
        if not waiting or is_abandoned(run):
            run = journal.pauses.expire(run, "its pause timed out")
        raise RunNotResumable(
            run.id, run.state_name, f"run {run.id}'s pause timed out; the run is {run.state_name}"
        )
    return pause


def check_input(run: FlowRun, value: Any) -> None:
    """Refuse an input that does not fit the type the pause waits for, naming the field."""
    if run.pause_input is None:
        if value is not NOTHING and value is not None:
            raise InputError(run.id, "its pause waits for no input; resume it without one")
        return
    if value is NOTHING:
        raise InputError(
            run.id,
            f"its pause waits for input ({_shape(run.pause_input)}); give it with --input JSON, "
            "or use `persevere runs approve/reject` for a yes or no",
        )
    import jsonschema  # deferred: ~50 ms, for resumes with input only

    validator = jsonschema.Draft202012Validator(
        json.loads(run.pause_input), format_checker=_format_checker()
    )
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        raise InputError(run.id, f"{f'field {where!r}' if where else 'the input'}: {error.message}")


#: The string formats pydantic writes into the schemas of these types.
_FORMATS = {
    "date-time": dt.datetime,
    "date": dt.date,
    "time": dt.time,
    "duration": dt.timedelta,
    "uuid": uuid.UUID,
}


def _format_checker() -> Any:
    """The string formats pydantic writes into schemas (dates, times, durations, uuids),
    checked by pydantic itself: JSON Schema leaves ``format`` unchecked, and an input the
    pause call's type refuses would fail the run instead of being refused here."""
    import jsonschema
    from pydantic import TypeAdapter, ValidationError

    checker = jsonschema.FormatChecker(formats=())
    for name, kind in _FORMATS.items():
        adapter: Any = TypeAdapter(kind)

        def check(value: Any, adapter: Any = adapter) -> bool:
            return not isinstance(value, str) or adapter.validate_python(value) is not None

        checker.checks(name, raises=ValidationError)(check)
    return checker


def _shape(schema_json: str) -> str:
    """A short description of the input a schema asks for."""
    schema = json.loads(schema_json)
    fields = schema.get("properties")
    if fields:
        required = set(schema.get("required", ()))
        parts = [
            f"{name}: {spec.get('type', 'any')}{'' if name in required else '?'}"
            for name, spec in fields.items()
        ]
        return "{" + ", ".join(parts) + "}"
    return str(schema.get("type", "any JSON"))


def shape(run: FlowRun) -> str | None:
    """What input a paused run waits for, for people (None: none)."""
    return None if run.pause_input is None else _shape(run.pause_input)


def _who() -> str:
    return this_process().label()
