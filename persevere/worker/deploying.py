"""Deployments: registering a flow for workers, and making runs of it.

A deployment is stored with what it takes to make a run of it without the
flow's code, which only a worker's machine may be able to import: the
entrypoint, the default parameters as typed JSON, and a *signature* (the
parameters' names, which are required, whether the flow takes ``**kwargs``).

A run's parameters are the defaults with the given values laid over them,
merged as JSON text, one level deep. Decoding the defaults instead would need
the classes of any enum, dataclass or model among them, which may not be
importable here. So the values of a run are checked by name only where it is
made; their types are checked, and coerced, by the worker that executes it
(:func:`run_parameters`), as ``persevere run`` does before it starts a run.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import EntrypointError, ParameterError
from ..journal import FlowRun, Journal, Transition, open_journal, to_json
from ..journal.deployments import DEFAULT_QUEUE, Deployment, overlay
from ..statemachine import FINAL_TYPES, StateType
from . import entrypoints, parameters, recovery

if TYPE_CHECKING:
    from .scheduling import ScheduleSpec

__all__ = [
    "DEFAULT_QUEUE",
    "Deployment",
    "Signature",
    "deploy",
    "describe",
    "entrypoint_for",
    "follow",
    "has_ended",
    "merge",
    "run_deployment",
    "run_parameters",
    "schedule",
]

#: The key typed JSON uses to tag its values: no parameter may be called so.
_RESERVED = "__persevere__"

#: How often a wait for a run looks at the journal, in seconds.
POLL_SECONDS = 0.1


# -- signatures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """A flow's parameters as a deployment stores them (JSON), to check runs by name."""

    parameters: list[dict[str, Any]]
    var_keyword: bool

    @classmethod
    def of(cls, deployment: Deployment) -> Signature:
        doc = json.loads(deployment.signature or "{}")
        return cls(list(doc.get("parameters", [])), bool(doc.get("var_keyword", False)))

    @property
    def names(self) -> list[str]:
        return [p["name"] for p in self.parameters]

    @property
    def required(self) -> list[str]:
        return [p["name"] for p in self.parameters if p.get("required")]

    def takes_text(self, name: str) -> bool:
        """True if the parameter is a ``str`` (or ``str | None``)."""
        return any(p["name"] == name and p.get("takes_text") for p in self.parameters)

    def label(self) -> str:
        """``n: int, when: date (required), **kwargs`` for people."""
        parts = []
        for p in self.parameters:
            text = p["name"] + (f": {p['annotation']}" if p.get("annotation") else "")
            parts.append(text + (" (required)" if p.get("required") else ""))
        if self.var_keyword:
            parts.append("**kwargs")
        return ", ".join(parts) or "no parameters"


def _is_text(hint: Any) -> bool:
    if hint is str:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = set(typing.get_args(hint))
        return str in args and args <= {str, type(None)}
    return False


def describe(fn: Callable[..., Any]) -> dict[str, Any]:
    """The signature a deployment stores: each parameter's name, whether it is
    required, its annotation as text, and whether the function takes ``**kwargs``."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    described = []
    for name, p in signature.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(name, p.annotation)
        annotation = None
        if hint is not inspect.Parameter.empty:
            annotation = hint if isinstance(hint, str) else inspect.formatannotation(hint)
        described.append(
            {
                "name": name,
                "required": p.default is inspect.Parameter.empty,
                "annotation": annotation,
                "takes_text": _is_text(hint),
            }
        )
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return {"parameters": described, "var_keyword": var_keyword}


# -- entrypoints ----------------------------------------------------------------------


def _attribute(module: Any, dotted: str) -> Any:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _names_in(module: Any, flow: Any) -> Iterable[str]:
    """Names under which ``module`` holds ``flow`` (or an equal flow): its function's
    qualname first, then any module-level name."""
    candidates = [flow.fn.__qualname__, *sorted(vars(module))]
    for name in candidates:
        try:
            found = _attribute(module, name)
            if found is flow or (getattr(found, "__persevere_flow__", False) and found == flow):
                yield name
        except Exception:
            continue  # an attribute whose comparison raises is not our flow


def _absolute(given: str) -> str:
    target, _, attr = given.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return given


def entrypoint_for(flow: Any, given: str | None = None) -> str:
    """The entrypoint a worker loads ``flow`` from: ``/absolute/file.py:name``.

    The flow must be found under that name in its module, so that the worker
    gets the same flow with the same options. Failing that, ``given`` (what
    the flow was loaded from) is used, with a file path made absolute.
    """
    found = entrypoints.entrypoint_of(flow.fn)
    module = sys.modules.get(getattr(flow.fn, "__module__", "") or "")
    if found is not None and module is not None:
        path = found.rpartition(":")[0]
        for name in _names_in(module, flow):
            return f"{path}:{name}"
    if given is not None:
        return _absolute(given)
    if found is None:
        why = "it was defined interactively or inside a function"
    else:
        why = f"its module {flow.fn.__module__!r} holds no name for it (made by with_options?)"
    raise EntrypointError(
        f"flow {flow.name!r} cannot be deployed: {why}, so a worker could not import it; "
        "define it at the top level of a .py file and deploy that"
    )


# -- deploying ----------------------------------------------------------------------


def _encodable(values: dict[str, Any], what: str) -> None:
    if _RESERVED in values:
        raise ParameterError(f"{what}: the parameter name {_RESERVED!r} is reserved")
    try:
        to_json(values)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{what} must be storable as JSON: {exc}") from None


def deploy(
    flow: Any,
    name: str,
    defaults: Mapping[str, Any] | None = None,
    queue: str = DEFAULT_QUEUE,
    tags: Iterable[str] = (),
    description: str | None = None,
    *,
    given: str | None = None,
    texts: Mapping[str, str] | None = None,
    journal: Journal | None = None,
    schedules: Sequence[ScheduleSpec] | None = None,
) -> tuple[Deployment, bool]:
    """Register ``flow`` as deployment ``name`` (or update it); True if it was new.

    ``defaults`` are checked and coerced against the flow's signature and
    type hints (required ones may be left for each run to give). ``given``
    is the entrypoint the flow was loaded from, ``texts`` the command-line
    text of each default (see :func:`parameters.check`). ``schedules``, if
    given, replace the deployment's schedules (those already there as given
    are kept as they are, with their runs made ahead); None keeps them. The
    runs made ahead that have not started take the deployment as it is now.
    """
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, not the string {tags!r}")
    journal = journal or open_journal()
    entrypoint = entrypoint_for(flow, given)
    checked = parameters.check(flow.fn, flow.name, dict(defaults or {}), texts, partial=True)
    _encodable(checked, f"default parameters of deployment {flow.name}/{name}")
    fields: dict[str, Any] = {
        "flow_name": flow.name,
        "name": name,
        "entrypoint": entrypoint,
        "parameters": checked,
        "signature": describe(flow.fn),
        "work_queue": queue,
        "tags": list(tags),
        "description": (flow.description or "") if description is None else description,
    }
    prepared = None
    if schedules is not None:
        # Deferred: the calendar (and zoneinfo) is loaded only by those who schedule.
        from . import scheduling

        # Checked against the deployment as it will be, before anything is written.
        prepared = scheduling.prepare_all(journal, _unsaved(fields), schedules)
    existed = journal.deployments.find(f"{flow.name}/{name}") is not None
    deployment = journal.deployments.put(**fields)
    if prepared is not None:
        journal.schedules.replace(deployment, *prepared)
    if existed:  # the runs its schedules made ahead go by the deployment as it is now
        journal.schedules.refresh_ahead(deployment)
    return deployment, not existed


def _unsaved(fields: Mapping[str, Any]) -> Deployment:
    """The record a deployment with these fields will have once stored."""
    return Deployment(
        id="",
        name=f"{fields['flow_name']}/{fields['name']}",
        flow_name=fields["flow_name"],
        entrypoint=fields["entrypoint"],
        parameters=to_json(fields["parameters"]),
        signature=json.dumps(fields["signature"], sort_keys=True),
        work_queue=fields["work_queue"],
        tags=json.dumps(sorted(set(fields["tags"]))),
        description=fields["description"],
        created_ms=0,
        updated_ms=0,
    )


# -- runs of a deployment --------------------------------------------------------------


def merge(stored: str, overrides: Mapping[str, Any]) -> str:
    """Stored parameters (typed JSON of a dict) with ``overrides`` laid over them,
    as typed JSON, without decoding the stored values."""
    return overlay(stored, encode(overrides))


def encode(values: Mapping[str, Any]) -> str:
    """Parameter values as typed JSON of a dict, one value at a time (a clear error
    names the one that cannot be stored)."""
    encoded = {}
    for name, value in values.items():
        if name == _RESERVED:
            raise ParameterError(f"the parameter name {_RESERVED!r} is reserved")
        try:
            encoded[name] = json.loads(to_json(value))
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"parameter {name!r} must be storable as JSON: {exc}") from None
    return json.dumps(encoded, separators=(",", ":"), allow_nan=True)


def _check_names(deployment: Deployment, given: Iterable[str]) -> None:
    signature = Signature.of(deployment)
    names = signature.names
    for name in given:
        if name not in names and not signature.var_keyword:
            raise ParameterError(
                f"deployment {deployment.name!r} has no parameter {name!r}; "
                f"it takes: {', '.join(names) or 'none'}"
            )


def _check_required(deployment: Deployment, stored: str) -> None:
    present = json.loads(stored)
    for name in Signature.of(deployment).required:
        if name not in present:
            raise ParameterError(
                f"deployment {deployment.name!r} needs parameter {name!r}, which it has no "
                f"default for (-p {name}=VALUE)"
            )


def given_parameters(
    deployment: Deployment,
    values: Mapping[str, Any] | None,
    texts: Mapping[str, str] | None = None,
) -> str:
    """Parameters given for runs of a deployment (a run's, or a schedule's), as stored
    typed JSON to lay over its defaults.

    Their names are checked against the flow's stored signature, and the
    defaults with them laid over must hold every required parameter. A
    ``str`` parameter given on the command line keeps its text (``texts``)
    even where that parses as JSON.
    """
    given = dict(values or {})
    _check_names(deployment, given)
    signature = Signature.of(deployment)
    for key, text in (texts or {}).items():
        value = given.get(key)
        if value is not None and not isinstance(value, str) and signature.takes_text(key):
            given[key] = text  # -p label=123 for a str parameter: the text "123"
    override = encode(given)
    _check_required(deployment, overlay(deployment.parameters, override))
    return override


def schedule(
    name: str,
    values: Mapping[str, Any] | None = None,
    texts: Mapping[str, str] | None = None,
    run_key: str | None = None,
    scheduled_ms: int | None = None,
    journal: Journal | None = None,
) -> tuple[Deployment, FlowRun]:
    """Make a Scheduled run of deployment ``name`` on its work queue (durable).

    ``values`` are laid over the deployment's defaults and checked by name
    against the flow's stored signature; a ``str`` parameter given on the
    command line keeps its text (``texts``) even where that parses as JSON.
    With a ``run_key`` a run holds already, that run is returned.
    """
    journal = journal or open_journal()
    deployment = journal.deployments.get(name)
    stored = overlay(deployment.parameters, given_parameters(deployment, values, texts))
    how = f"run key {run_key!r}" if run_key else "by request"
    run = journal.deployments.schedule_run(
        deployment, stored, run_key, scheduled_ms, f"scheduled from deployment ({how})"
    )
    return deployment, run


def run_parameters(journal: Journal, flow: Any, run: FlowRun) -> dict[str, Any]:
    """The parameters to execute a run of a deployment with: decoded, then checked
    and coerced against the flow (raises :class:`ParameterError`)."""
    return parameters.check(flow.fn, flow.name, parameters.decode(journal, run.parameters))


def has_ended(run: FlowRun) -> bool:
    """True if the run is final and stays so.

    A Crashed run on a work queue that a worker will resume by itself (it
    has automatic resumes left) has not ended.
    """
    if run.state_type not in FINAL_TYPES:
        return False
    if run.state_type is not StateType.CRASHED or run.work_queue is None:
        return True
    return run.parent_flow_run_id is not None or run.auto_resumes >= run.auto_resumes_allowed


def follow(
    journal: Journal,
    run_id: str,
    timeout: float | None = None,
    on_move: Callable[[Transition], None] | None = None,
    seen: int = 0,
) -> FlowRun:
    """Poll the journal until the run has ended, or ``timeout`` seconds passed (None:
    no limit); returns the run as it is then.

    ``on_move`` is called with each transition past version ``seen``, in
    order. A run whose process died is declared Crashed on the way.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = recovery.refresh(journal, journal.get_flow_run(run_id))
        if on_move is not None and run.version > seen:
            for move in journal.history(run_id):
                if move.version > seen:
                    on_move(move)
                    seen = move.version
        if has_ended(run):
            return run
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return run
        time.sleep(POLL_SECONDS if left is None else min(POLL_SECONDS, left))


def run_deployment(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    run_key: str | None = None,
    scheduled_time: dt.datetime | None = None,
    timeout: float | None = 0,
) -> FlowRun:
    """Make a run of deployment ``name`` (``flow-name/deployment-name``) for a worker.

    Args:
        name: the deployment, as ``persevere deployments ls`` lists it.
        parameters: values laid over the deployment's defaults; names are
            checked here, types by the worker that executes the run.
        run_key: an idempotency key: the run that has it already is returned.
        scheduled_time: when the run is due (default: now); a naive datetime
            is local time.
        timeout: seconds to wait for the run to end (0, the default: do not
            wait; None: wait as long as it takes). The run is returned as it
            is when the wait ends; it goes on if the wait timed out.

    Returns:
        The flow run record (``.id``, ``.state_type``, ``.state_name``, ...).
    """
    scheduled_ms = None
    if scheduled_time is not None:
        scheduled_ms = int(scheduled_time.timestamp() * 1000)
    journal = open_journal()
    _, run = schedule(name, parameters, None, run_key, scheduled_ms, journal)
    if timeout is not None and timeout <= 0:
        return run
    return follow(journal, run.id, timeout)
