"""What an automation does when it fires: its actions, run under the firing's lease.

Each action's outcome is recorded in the firing (done, failed, or pending
again with the time of its retry). An action is run at least once: a process
that dies while running one leaves the firing's lease to expire, and the
next evaluator runs the unfinished actions again. So each action is
idempotent or carries the firing's key:

- ``run-deployment`` makes its run with the run key
  ``automation/<firing id>/<position>``: one run per firing, however often
  the action runs;
- pausing or resuming a schedule, a work queue or an automation, and
  cancelling or resuming a run, are idempotent (a second time changes
  nothing);
- a ``webhook`` POSTs the same JSON (with the firing's id, for the receiver
  to deduplicate) and is retried with exponential backoff, durably, up to
  its ``retries``;
- ``notify`` writes a log line and a ``persevere.automation.notification``
  event with the firing's id as its event id (journaled once).

Not here: ``suspend-flow-run`` of a Running run from outside. A run
suspends itself (``suspend_flow_run``); the state graph has no move by which
another process could stop it at a line and resume it there.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from .. import clock
from ..exceptions import PersevereError
from ..journal import Journal
from ..journal.automations import Automation, Firing
from ..journal.events import FLOW_RUN
from ..statemachine import StateType
from ..statemachine.actions import render
from ..statemachine.retries import RetryPolicy, exponential_backoff, next_attempt_ms
from . import deploying
from .answers import resume_flow_run
from .logs import get_run_logger

#: The backoff of webhook retries: 2, 4, 8, ... seconds (exponential, base 2).
WEBHOOK_BACKOFF_SECONDS = 2.0


class ActionFailed(PersevereError):
    """An action that cannot succeed (bad target, bad template): not retried."""


class ActionRetry(PersevereError):
    """An action that failed for now (a webhook's server): retried if retries are left."""


def context(automation: Automation, firing: Firing) -> dict[str, Any]:
    """What an action's templates can name."""
    event = firing.event_json or {}
    return {
        "event": event,
        "automation": {"name": automation.name, "id": automation.id},
        "firing": {"id": firing.id, "reason": firing.reason, "group": json.loads(firing.grp)},
        "flow_run_id": _flow_run_of(event),
    }


def _flow_run_of(event: dict[str, Any]) -> str | None:
    resource = event.get("resource", {}).get("id", "")
    if resource.startswith(FLOW_RUN):
        return str(resource[len(FLOW_RUN) :])
    for related in event.get("related", []):
        if related.get("role") == "flow-run" and related.get("id", "").startswith(FLOW_RUN):
            return str(related["id"][len(FLOW_RUN) :])
    return None


def run_due(
    journal: Journal,
    automation: Automation,
    firing: Firing,
    say: Callable[[str], None],
    progress: Callable[[list[dict[str, Any]]], bool] = lambda outcomes: True,
) -> list[dict[str, Any]] | None:
    """Run the firing's actions that are due; returns the outcomes to record.

    After each action, ``progress(outcomes)`` records it and renews the lease;
    if that says the lease is lost, stop (None): another evaluator has it.
    """
    now = clock.now_ms()
    outcomes = firing.outcomes
    specs = automation.action_specs
    ctx = context(automation, firing)
    for i, outcome in enumerate(outcomes):
        spec = outcome.get("spec") or (specs[i] if i < len(specs) else {"type": outcome["type"]})
        if outcome["status"] != "pending" or outcome.get("next_ms", 0) > now:
            continue
        outcome["attempts"] = outcome.get("attempts", 0) + 1
        try:
            result = _run(journal, spec, ctx, f"automation/{firing.id}/{i}")
        except ActionRetry as exc:
            policy = RetryPolicy(
                spec.get("retries", 0), exponential_backoff(WEBHOOK_BACKOFF_SECONDS)
            )
            when = next_attempt_ms(policy, outcome["attempts"] - 1, now, random.random())
            outcome["error"] = str(exc)
            if when is None:
                outcome["status"] = "failed"
            else:
                outcome["next_ms"] = when
        except (PersevereError, ValueError, KeyError, LookupError) as exc:
            outcome.update(status="failed", error=_one_line(exc))
        except Exception as exc:  # a bug or a database error: recorded, not raised
            outcome.update(status="failed", error=f"{type(exc).__name__}: {_one_line(exc)}")
        else:
            outcome.update(status="done", outcome=result)
            outcome.pop("error", None)
            outcome.pop("next_ms", None)
        line = f"automation {automation.name}: {spec['type']} " + (
            f"done: {outcome['outcome']}" if outcome["status"] == "done"
            else f"{outcome['status']}: {outcome.get('error', '')}"
        )  # fmt: skip
        say(line)
        if not progress(outcomes):
            return None
    return outcomes


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).splitlines()[0] if str(text) else type(exc).__name__


def _run(journal: Journal, spec: dict[str, Any], ctx: dict[str, Any], key: str) -> str:
    """Run one action; returns what it did, one line."""
    kind = spec["type"]
    fields = {k: render(v, ctx) for k, v in spec.items() if k != "type"}
    if kind == "run-deployment":
        name = str(fields["deployment"])
        deployment, run = deploying.schedule(
            name, fields.get("parameters") or {}, None, key, None, journal
        )
        return f"run {run.id} of {deployment.name} ({run.state_name})"
    if kind in ("pause-schedule", "resume-schedule"):
        deployment = journal.deployments.get(str(fields["deployment"]))
        schedules = journal.schedules.of(deployment)
        if fields.get("schedule"):
            schedules = [journal.schedules.get(deployment, str(fields["schedule"]))]
        if not schedules:
            raise ActionFailed(f"deployment {deployment.name} has no schedules")
        changed, _ = journal.schedules.set_active(schedules, kind == "resume-schedule")
        verb = "resumed" if kind == "resume-schedule" else "paused"
        return f"{len(changed)} schedule(s) of {deployment.name} {verb}"
    if kind in ("pause-work-queue", "resume-work-queue"):
        queue = journal.deployments.pause_queue(str(fields["queue"]), kind == "pause-work-queue")
        return f"work queue {queue.name} {'paused' if queue.paused else 'resumed'}"
    if kind in ("pause-automation", "resume-automation"):
        target = str(fields.get("automation") or ctx["automation"]["id"])
        found = journal.automations.set_enabled(target, kind == "resume-automation")
        return f"automation {found.name} {'resumed' if found.enabled else 'paused'}"
    if kind in ("cancel-flow-run", "resume-flow-run", "suspend-flow-run"):
        return _flow_run_action(journal, kind, fields, ctx)
    if kind == "webhook":
        return _post(fields, ctx)
    if kind == "notify":
        return _notify(journal, fields, ctx, key)
    raise ActionFailed(f"unknown action type {kind!r}")


def _flow_run_action(
    journal: Journal, kind: str, fields: dict[str, Any], ctx: dict[str, Any]
) -> str:
    run_id = fields.get("flow_run") or ctx["flow_run_id"]
    if not run_id:
        raise ActionFailed(f"{kind}: the triggering event is not about a flow run; give flow_run")
    run = journal.resolve_flow_run(str(run_id))
    who = f"automation {ctx['automation']['name']}"
    if kind == "cancel-flow-run":
        if run.state_type in (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED):
            return f"run {run.id} is {run.state_name} already"
        reason = fields.get("reason") or ctx["firing"]["reason"]
        run = journal.workers.request_cancel(run, f"cancelled by {who}: {reason}")
        return f"run {run.id} {run.state_name}"
    if kind == "suspend-flow-run":
        raise ActionFailed(
            f"run {run.id} is {run.state_name}: a run can only suspend itself "
            "(suspend_flow_run in the flow); cancel it, or pause its work queue"
        )
    if run.state_type is StateType.PAUSED:
        run = resume_flow_run(run.id, journal=journal)
        return f"run {run.id} resumed ({run.state_name})"
    if run.state_type in (StateType.CRASHED, StateType.FAILED, StateType.CANCELLED):
        if run.work_queue is None or run.parent_flow_run_id is not None:
            raise ActionFailed(
                f"run {run.id} is not a top-level run on a work queue: resume it with "
                f"`persevere runs resume {run.id}`"
            )
        run = journal.workers.reschedule(run, f"resumed by {who}", automatic=False)
        return f"run {run.id} Scheduled again for a worker"
    return f"run {run.id} is {run.state_name}: nothing to resume"


def _post(fields: dict[str, Any], ctx: dict[str, Any]) -> str:
    body = fields.get("body")
    if body is None:
        body = {
            "automation": ctx["automation"]["name"],
            "firing": ctx["firing"]["id"],
            "reason": ctx["firing"]["reason"],
            "event": ctx["event"] or None,
        }
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": ctx["firing"]["id"]}
    headers.update(fields.get("headers") or {})
    url = str(fields["url"])
    if not url.startswith(("http://", "https://")):
        raise ActionFailed(f"webhook url {url!r} is not an http:// or https:// URL")
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=float(fields.get("timeout", 10))) as reply:
            return f"POST {fields['url']}: {reply.status}"
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise ActionFailed(f"POST {fields['url']}: {exc.code} {exc.reason}") from None
        raise ActionRetry(f"POST {fields['url']}: {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ActionRetry(f"POST {fields['url']}: {reason}") from None


def _notify(journal: Journal, fields: dict[str, Any], ctx: dict[str, Any], key: str) -> str:
    message, level = str(fields["message"]), str(fields.get("level", "warning"))
    automation = ctx["automation"]
    journal.events.emit(
        "persevere.automation.notification",
        {"id": f"persevere.automation.{automation['id']}", "name": automation["name"]},
        {"message": message, "level": level, "firing": ctx["firing"]["id"]},
        id=f"notification/{key}",
    )
    getattr(get_run_logger("persevere.automation"), level)(message, automation=automation["name"])
    return f"notified ({level}): {message}"
