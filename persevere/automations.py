"""Events and automations from Python: emit an event, define an automation.

Example::

    import persevere
    from persevere.automations import create_automation

    create_automation(
        "ingest-new-files",
        trigger={"match": "s3.file.arrived", "resource": {"id": "bucket/*"}},
        actions=[{"type": "run-deployment", "deployment": "ingest/prod",
                  "parameters": {"path": "{{ event.payload.path }}"}}],
    )
    persevere.emit_event("s3.file.arrived", {"id": "bucket/sales"}, {"path": "q3.csv"})

The trigger and actions are the same mappings an automation file holds
(`persevere automations create FILE`); docs/automations.md describes them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .journal import Journal, open_journal
from .journal.automations import Automation
from .journal.events import Event

__all__ = [
    "Automation",
    "Event",
    "create_automation",
    "delete_automation",
    "emit_event",
    "load_automations",
    "pause_automation",
    "resume_automation",
]

_FILE_KEYS = ("name", "description", "enabled", "trigger", "actions")


def emit_event(
    event: str,
    resource: Mapping[str, Any],
    payload: Mapping[str, Any] | None = None,
    *,
    related: Sequence[Mapping[str, Any]] = (),
    id: str | None = None,
    occurred: dt.datetime | None = None,
) -> Event:
    """Journal an event (durable) and return it.

    Args:
        event: a dotted name, e.g. ``s3.file.arrived``.
        resource: labels of what it is about; ``id`` is required.
        payload: a JSON object.
        related: other resources, each with an ``id`` (and usually a ``role``).
        id: the event's id; an event with an id journaled before is not
            journaled again (the earlier one is returned). Default: a new id.
        occurred: when it happened (default: now); a naive datetime is local time.
    """
    occurred_ms = None if occurred is None else int(occurred.timestamp() * 1000)
    found, _ = open_journal().events.emit(event, resource, payload, related, id, occurred_ms)
    return found


def create_automation(
    name: str,
    trigger: Mapping[str, Any],
    actions: Sequence[Mapping[str, Any]],
    *,
    description: str = "",
    enabled: bool = True,
    replace: bool = False,
    journal: Journal | None = None,
) -> Automation:
    """Define an automation: when ``trigger`` fires, run ``actions`` (durable).

    Raises ValueError, naming the field, for a trigger or action that is not
    valid, and for a name that exists unless ``replace``.
    """
    journal = journal or open_journal()
    return journal.automations.create(
        name, dict(trigger), [dict(a) for a in actions], description, enabled, replace
    )


def load_automations(path: str | Path, text: str | None = None) -> list[dict[str, Any]]:
    """The automations a YAML or JSON file holds (one mapping, or a list of them),
    checked for their keys (the trigger and actions are checked when created)."""
    if text is None:
        text = Path(path).read_text()
    try:
        if str(path).endswith(".json"):
            data = json.loads(text)
        else:
            import yaml  # deferred: only automation files need it

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json errors: one line, where it is
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not valid YAML or JSON ({first})") from None
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        where = f"{path}" + (f"[{i}]" if isinstance(data, list) else "")
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: an automation is a mapping with name, trigger and actions")
        for key in item:
            if key not in _FILE_KEYS:
                raise ValueError(
                    f"{where}: unknown key {key!r} (an automation has {', '.join(_FILE_KEYS)})"
                )
        for key in ("name", "trigger", "actions"):
            if key not in item:
                raise ValueError(f"{where}: missing {key!r}")
        if not isinstance(item.get("description") or "", str):
            raise ValueError(f"{where}: description must be text")
        if not isinstance(item.get("enabled", True), bool):
            raise ValueError(f"{where}: enabled must be true or false")
    return [{**i, "description": i.get("description") or ""} for i in items]


def pause_automation(name: str) -> Automation:
    """Stop an automation from evaluating and firing (durable)."""
    return open_journal().automations.set_enabled(name, False)


def resume_automation(name: str) -> Automation:
    """Let a paused automation evaluate again, from now on (durable)."""
    return open_journal().automations.set_enabled(name, True)


def delete_automation(name: str) -> Automation:
    """Delete an automation and its firings (durable)."""
    return open_journal().automations.delete(name)
