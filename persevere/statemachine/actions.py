"""Automation actions as data: their kinds, their checks, and the small template.

An action is a JSON object with a ``type`` and the fields of that type. They
are checked when an automation is created, so a typo is refused then, not
found when the automation fires. A string field may hold ``{{ ... }}``
placeholders naming fields of the firing: ``event.payload.path``,
``event.resource.id``, ``event.event``, ``event.id``, ``event.occurred``,
``automation.name``, ``firing.reason``, ``firing.id``, ``flow_run_id`` (the
flow run the event is about, if any). A string that is a single placeholder
becomes that field's value as it is (a number stays a number).

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: type -> (required fields, optional fields)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "run-deployment": (("deployment",), ("parameters",)),
    "pause-schedule": (("deployment",), ("schedule",)),
    "resume-schedule": (("deployment",), ("schedule",)),
    "pause-work-queue": (("queue",), ()),
    "resume-work-queue": (("queue",), ()),
    "cancel-flow-run": ((), ("flow_run", "reason")),
    "suspend-flow-run": ((), ("flow_run", "reason")),
    "resume-flow-run": ((), ("flow_run",)),
    "webhook": (("url",), ("headers", "body", "timeout", "retries")),
    "notify": (("message",), ("level",)),
    "pause-automation": ((), ("automation",)),
    "resume-automation": ((), ("automation",)),
}
LEVELS = ("info", "warning", "error")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.\-]*)\s*\}\}")
_ROOTS = ("event", "automation", "firing", "flow_run_id")


def parse_actions(specs: Any) -> list[dict[str, Any]]:
    """Check a list of action specs; return them normalized (JSON-able).

    Raises:
        ValueError: one line naming the action (by position) and what is wrong.
    """
    if not isinstance(specs, Sequence) or isinstance(specs, str | bytes) or not specs:
        raise ValueError("actions must be a non-empty list, e.g. [{type: notify, message: hi}]")
    return [_parse_one(spec, f"actions[{i}]") for i, spec in enumerate(specs)]


def _parse_one(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{where} must be a mapping with a type, e.g. {{type: notify, message: hi}}"
        )
    kind = spec.get("type")
    if kind not in KINDS:
        raise ValueError(f"{where}.type {kind!r} is not an action; use one of {', '.join(KINDS)}")
    required, optional = KINDS[kind]
    for key in spec:
        if key != "type" and key not in required and key not in optional:
            allowed = ", ".join((*required, *optional)) or "no other field"
            raise ValueError(f"{where}: {kind} has no field {key!r} (it takes {allowed})")
    for key in required:
        if spec.get(key) in (None, ""):
            raise ValueError(f"{where}: {kind} needs {key!r}")
    out = {str(k): v for k, v in spec.items()}
    _check_templates(out, where)
    if kind == "run-deployment" and not isinstance(out.get("parameters", {}), Mapping):
        raise ValueError(f"{where}.parameters must be a mapping of parameter names to values")
    if kind == "webhook":
        _check_webhook(out, where)
    if kind == "notify" and out.setdefault("level", "warning") not in LEVELS:
        raise ValueError(f"{where}.level must be one of {', '.join(LEVELS)}")
    return out


def _check_webhook(spec: dict[str, Any], where: str) -> None:
    url = spec["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "{{")):
        raise ValueError(f"{where}.url must be an http:// or https:// URL")
    headers = spec.setdefault("headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError(f"{where}.headers must be a mapping of header names to strings")
    timeout = spec.setdefault("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 120:
        raise ValueError(f"{where}.timeout must be seconds between 0 and 120")
    retries = spec.setdefault("retries", 5)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise ValueError(f"{where}.retries must be a whole number from 0 to 100")


def _check_templates(value: Any, where: str) -> None:
    if isinstance(value, str):
        if value.count("{{") != value.count("}}"):
            raise ValueError(f"{where}: unbalanced {{{{ }}}} in {value!r}")
        for match in _PLACEHOLDER.finditer(value):
            root = match.group(1).split(".")[0]
            if root not in _ROOTS:
                raise ValueError(
                    f"{where}: {{{{ {match.group(1)} }}}} names no field; use event.*, "
                    "automation.name, firing.reason, firing.id or flow_run_id"
                )
        if value.count("{{") != len(_PLACEHOLDER.findall(value)):
            raise ValueError(f"{where}: a {{{{ }}}} in {value!r} is not a field name")
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_templates(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_templates(item, where)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with its placeholders filled from ``context`` (recursively).

    Raises:
        KeyError: a placeholder names a field the firing does not have (its
            message names the field).
    """
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value.strip())
        if whole is not None:
            return lookup(context, whole.group(1))
        return _PLACEHOLDER.sub(lambda m: _text(lookup(context, m.group(1))), value)
    if isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``event.payload.path``)."""
    current: Any = context
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            raise KeyError(f"{{{{ {path} }}}}: the firing has no {part!r} there")
    return current


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value)
