"""Automations: their specs, their evaluation state, and their firings.

An automation's evaluation is one ``BEGIN IMMEDIATE`` transaction: read its
row (cursor, state), the events after its cursor, evaluate (pure, in
statemachine/triggers.py), then write the new state and cursor together with
the firings. So a crash before the commit changes nothing (the next pass
evaluates the same events again) and after it nothing is evaluated twice;
several evaluators (every worker, every ``persevere scheduler``) take turns
on the same row and never fire twice. A firing's id is the automation's id
and the trigger's deterministic firing key: written with ``INSERT OR IGNORE``.

A firing's actions run outside that transaction (a webhook may take
seconds): whoever leases the firing runs its due actions and records each
outcome under its lease; an action that fails may be retried later
(``next_ms``). Actions run at least once; each carries an idempotency key
(the firing id and its position) so that, say, a deployment run is made
once per firing.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import clock
from ..exceptions import AutomationNotFound
from ..statemachine import triggers
from ..statemachine.actions import parse_actions
from .events import Event
from .records import from_row

if TYPE_CHECKING:
    from .journal import Journal

#: How many events one evaluation of one automation reads at most.
EVENTS_PER_PASS = 2000
#: How long a firing's lease lasts; renewed after each action (an action's own
#: time limit, a webhook's timeout, is at most 120 s).
LEASE_MS = 300_000
_AUTOMATION = (
    "id, name, description, trigger, actions, enabled, cursor_seq, state, due_ms, version, "
    "created_ms, updated_ms"
)
_FIRING = (
    "id, automation_id, fired_ms, path, reason, event_ids, event, grp, status, actions, "
    "next_ms, lease_token, lease_expires_ms, ended_ms"
)


@dataclass(frozen=True)
class Automation:
    """An automation as the journal holds it (specs and state as JSON text)."""

    id: str
    name: str
    description: str
    trigger: str
    actions: str
    enabled: int
    cursor_seq: int
    state: str
    due_ms: int | None
    version: int
    created_ms: int
    updated_ms: int

    @property
    def trigger_spec(self) -> dict[str, Any]:
        return json.loads(self.trigger)  # type: ignore[no-any-return]

    @property
    def action_specs(self) -> list[dict[str, Any]]:
        return json.loads(self.actions)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Firing:
    """One firing of an automation and its actions' outcomes."""

    id: str
    automation_id: str
    fired_ms: int
    path: str
    reason: str
    event_ids: str
    event: str | None
    grp: str
    status: str  # pending (actions to run), done, failed (an action failed for good)
    actions: str  # JSON list: {type, status, attempts, outcome, error, next_ms}
    next_ms: int | None
    lease_token: str | None
    lease_expires_ms: int | None
    ended_ms: int | None

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        return json.loads(self.actions)  # type: ignore[no-any-return]

    @property
    def event_json(self) -> dict[str, Any] | None:
        return json.loads(self.event) if self.event else None


def check_name(name: str) -> str:
    """An automation's name: non-empty, no spaces at the ends."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"automation name {name!r} must be non-empty, without outer spaces")
    return name


class Automations:
    """The journal's automations and firings."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # -- the automations ---------------------------------------------------------

    def create(
        self,
        name: str,
        trigger: dict[str, Any],
        actions: list[dict[str, Any]],
        description: str = "",
        enabled: bool = True,
        replace: bool = False,
    ) -> Automation:
        """Make (or, with ``replace``, redefine) an automation (durable).

        Its trigger sees the events journaled from now on. A redefined one
        starts over: its evaluation state is reset, its firings kept.
        """
        check_name(name)
        parsed = triggers.parse_trigger(trigger)
        checked = parse_actions(actions)
        now = clock.now_ms()
        state = json.dumps(triggers.initial_state(parsed, now))
        due = triggers.next_due(parsed, json.loads(state))
        spec = json.dumps(parsed.spec, sort_keys=True)
        acts = json.dumps(checked, sort_keys=True)

        def work(conn: sqlite3.Connection) -> None:
            cursor = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            row = conn.execute("SELECT id FROM automations WHERE name = ?", (name,)).fetchone()
            if row is not None and not replace:
                raise ValueError(
                    f"automation {name!r} exists already; use --replace to redefine it "
                    "or delete it first"
                )
            if row is not None:
                conn.execute(
                    "UPDATE automations SET description = ?, trigger = ?, actions = ?, "
                    "enabled = ?, cursor_seq = ?, state = ?, due_ms = ?, version = version + 1, "
                    "updated_ms = ? WHERE id = ?",
                    (description, spec, acts, int(enabled), cursor, state, due, now, row[0]),
                )
            else:
                conn.execute(
                    f"INSERT INTO automations ({_AUTOMATION}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (uuid.uuid4().hex, name, description, spec, acts, int(enabled), cursor,
                     state, due, now, now),
                )  # fmt: skip

        self._journal.writer.transaction(work)
        return self.get(name)

    def get(self, name: str) -> Automation:
        """The automation with this name (or id, or a unique id prefix)."""
        rows = self._journal.query(
            f"SELECT {_AUTOMATION} FROM automations WHERE name = ? OR id = ?", (name, name)
        )
        if not rows and len(name) >= 4:
            rows = self._journal.query(
                f"SELECT {_AUTOMATION} FROM automations WHERE id LIKE ? || '%'", (name,)
            )
        if len(rows) != 1:
            raise AutomationNotFound(name)
        return from_row(Automation, rows[0])

    def all(self) -> list[Automation]:
        rows = self._journal.query(f"SELECT {_AUTOMATION} FROM automations ORDER BY name")
        return [from_row(Automation, r) for r in rows]

    def set_enabled(self, name: str, enabled: bool) -> Automation:
        """Pause (False) or resume (True) an automation (durable).

        A resumed automation starts from now: the events journaled while it
        was paused are not evaluated, and its trigger starts over.
        """
        automation = self.get(name)
        if bool(automation.enabled) == enabled:
            return automation
        now = clock.now_ms()
        parsed = triggers.parse_trigger(automation.trigger_spec)
        state = triggers.initial_state(parsed, now)
        due = triggers.next_due(parsed, state)

        def work(conn: sqlite3.Connection) -> None:
            cursor = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            conn.execute(
                "UPDATE automations SET enabled = ?, cursor_seq = ?, state = ?, due_ms = ?, "
                "version = version + 1, updated_ms = ? WHERE id = ?",
                (int(enabled), cursor, json.dumps(state), due, now, automation.id),
            )

        self._journal.writer.transaction(work)
        return self.get(automation.id)

    def delete(self, name: str) -> Automation:
        """Delete an automation and its firings (durable)."""
        automation = self.get(name)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM firings WHERE automation_id = ?", (automation.id,))
            conn.execute("DELETE FROM automations WHERE id = ?", (automation.id,))

        self._journal.writer.transaction(work)
        return automation

    # -- evaluation ----------------------------------------------------------------

    def due(self, now_ms: int) -> list[Automation]:
        """Enabled automations with events to read or a time that has come (one read)."""
        rows = self._journal.query(
            f"SELECT {_AUTOMATION} FROM automations WHERE enabled = 1 AND "
            "(cursor_seq < (SELECT coalesce(max(seq), 0) FROM events) OR due_ms <= ?)",
            (now_ms,),
        )
        return [from_row(Automation, r) for r in rows]

    def evaluate(
        self, automation_id: str, now_ms: int, filled: dict[Any, Any] | None = None
    ) -> tuple[list[Firing], bool]:
        """Evaluate one automation on its new events and the time (one transaction).

        Returns the firings it journaled, and True if events are left to read
        (a backlog longer than :data:`EVENTS_PER_PASS`): then the time is not
        judged yet, since an event still unread may be the one expected.
        The events are read and filled in before the transaction (they never
        change once written), ``filled`` keeping them for the next automation.
        """
        filled = {} if filled is None else filled
        before = self._journal.query(
            "SELECT cursor_seq, trigger FROM automations WHERE id = ?", (automation_id,)
        )
        if not before:
            return [], False
        names = triggers.names_of(triggers.parse_trigger(json.loads(before[0][1])))
        page = self._page(before[0][0], names, filled)

        def work(conn: sqlite3.Connection) -> tuple[list[str], bool]:
            row = conn.execute(
                f"SELECT {_AUTOMATION} FROM automations WHERE id = ? AND enabled = 1",
                (automation_id,),
            ).fetchone()
            if row is None:
                return [], False
            automation = from_row(Automation, row)
            parsed = triggers.parse_trigger(automation.trigger_spec)
            rows = page
            if (automation.cursor_seq, automation.trigger) != tuple(before[0]):
                # another evaluator went on meanwhile, or it was redefined: read again, here
                rows = self._page(automation.cursor_seq, triggers.names_of(parsed), {})
            state: dict[str, Any] = json.loads(automation.state)
            cursor, events, more = rows
            own = f"persevere.automation.{automation.id}"  # its own firings never feed it
            fired: list[triggers.Firing] = []
            for event in events:
                if event.resource.get("id") != own:
                    state, new = triggers.on_event(parsed, state, _seen(event), now_ms)
                    fired += new
            if not more:
                state, new = triggers.on_time(parsed, state, now_ms)
                fired += new
            due = 0 if more else triggers.next_due(parsed, state)
            conn.execute(
                "UPDATE automations SET cursor_seq = ?, state = ?, due_ms = ?, "
                "version = version + 1 WHERE id = ? AND version = ?",
                (max(cursor, automation.cursor_seq), json.dumps(state), due, automation.id,
                 automation.version),
            )  # fmt: skip
            return [self._journal_firing(conn, automation, f, now_ms) for f in fired], more

        ids, more = self._journal.writer.transaction(work)
        return [self.firing(i) for i in ids if i], more

    def _page(
        self, after: int, names: tuple[str, ...], filled: dict[Any, Any]
    ) -> tuple[int, list[Event], bool]:
        """The next events after ``after`` whose names match ``names``, filled in (most,
        task runs' events, are not); the seq read up to; whether more are left.
        ``filled`` keeps the pages read and the events filled in for the whole pass."""
        rows = filled.get(("page", after))
        if rows is None:
            rows = filled[("page", after)] = self._journal.query(
                "SELECT seq, id, event, occurred_ms, received_ms, resource_id, resource, "
                "related, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, EVENTS_PER_PASS),
            )
        if not rows:
            return after, [], False
        hits: dict[str, bool] = {}  # a page has few distinct names
        for row in rows:
            if row["event"] not in hits:
                hits[row["event"]] = any(triggers.matches(n, row["event"]) for n in names)
        wanted = [r for r in rows if hits[r["event"]]]
        missing = [r for r in wanted if r["seq"] not in filled]
        for event in self._journal.events.fill(missing):
            filled[event.seq] = event
        return rows[-1]["seq"], [filled[r["seq"]] for r in wanted], len(rows) == EVENTS_PER_PASS

    def _journal_firing(
        self, conn: sqlite3.Connection, automation: Automation, fired: triggers.Firing, now: int
    ) -> str:
        """Write a firing (once) and its event; returns its id ('' if it was there)."""
        firing_id = f"{automation.id}:{fired.key}"
        # The actions as they are now: a redefinition does not change a firing's.
        outcomes = [
            {"type": a["type"], "status": "pending", "attempts": 0, "spec": a}
            for a in automation.action_specs
        ]
        event = _event_json(fired.event) if fired.event is not None else None
        inserted = conn.execute(
            f"INSERT OR IGNORE INTO firings ({_FIRING}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, NULL, NULL, NULL)",
            (firing_id, automation.id, fired.at_ms, fired.path, fired.reason,
             json.dumps(list(fired.event_ids)), json.dumps(event) if event else None,
             json.dumps(fired.group), json.dumps(outcomes), now),
        ).rowcount  # fmt: skip
        if inserted != 1:
            return ""
        resource = {"id": f"persevere.automation.{automation.id}", "name": automation.name}
        related = [{"id": event["resource"]["id"], "role": "triggering-resource"}] if event else []
        payload = {"firing": firing_id, "reason": fired.reason, "events": list(fired.event_ids)}
        conn.execute(
            "INSERT OR IGNORE INTO events (id, event, occurred_ms, received_ms, resource_id, "
            "resource, related, payload, derived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (f"firing/{firing_id}", "persevere.automation.triggered", now, now, resource["id"],
             json.dumps(resource), json.dumps(related), json.dumps(payload)),
        )  # fmt: skip
        return firing_id

    # -- firings -------------------------------------------------------------------

    def firing(self, firing_id: str) -> Firing:
        rows = self._journal.query(f"SELECT {_FIRING} FROM firings WHERE id = ?", (firing_id,))
        if not rows:
            raise AutomationNotFound(firing_id)
        return from_row(Firing, rows[0])

    def history(self, automation: Automation, limit: int = 20) -> list[Firing]:
        """The automation's newest firings, newest first."""
        rows = self._journal.query(
            f"SELECT {_FIRING} FROM firings WHERE automation_id = ? "
            "ORDER BY fired_ms DESC, rowid DESC LIMIT ?",
            (automation.id, limit),
        )
        return [from_row(Firing, r) for r in rows]

    def claim_firing(self, now_ms: int, lease_ms: int = LEASE_MS) -> tuple[Firing, str] | None:
        """Lease the next firing with actions due (durable); returns it and the lease token.

        The firings of paused automations wait. Nothing due: one read, no write lock.
        """
        token = uuid.uuid4().hex
        due = (
            "SELECT id FROM firings WHERE status = 'pending' AND next_ms <= ? "
            "AND (lease_expires_ms IS NULL OR lease_expires_ms < ?) "
            "AND automation_id IN (SELECT id FROM automations WHERE enabled = 1) "
            "ORDER BY next_ms LIMIT 1"
        )
        if not self._journal.query(due, (now_ms, now_ms)):
            return None

        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(due, (now_ms, now_ms)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE firings SET lease_token = ?, lease_expires_ms = ? WHERE id = ?",
                (token, now_ms + lease_ms, row[0]),
            )
            return str(row[0])

        firing_id = self._journal.writer.transaction(work)
        return None if firing_id is None else (self.firing(firing_id), token)

    def progress(self, firing: Firing, token: str, outcomes: list[dict[str, Any]]) -> bool:
        """Write the outcomes so far under the lease and renew it (durable); False if
        the lease was lost: then stop, another evaluator has the firing."""
        now = clock.now_ms()

        def work(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE firings SET actions = ?, lease_expires_ms = ? "
                    "WHERE id = ? AND lease_token = ?",
                    (json.dumps(outcomes), now + LEASE_MS, firing.id, token),
                ).rowcount
                == 1
            )

        return self._journal.writer.transaction(work)

    def record(self, firing: Firing, token: str, outcomes: list[dict[str, Any]]) -> bool:
        """Write the actions' outcomes under the lease (durable) and let the firing go.

        The firing is done when every action is, failed when every action is
        done or failed and one failed, else pending again at the earliest
        retry. Returns False if the lease was lost (another took the firing).
        """
        now = clock.now_ms()
        statuses = {o["status"] for o in outcomes}
        retry = [o.get("next_ms", now) for o in outcomes if o["status"] == "pending"]
        if retry:
            status, next_ms, ended = "pending", min(retry), None
        else:
            status, next_ms, ended = ("failed" if "failed" in statuses else "done"), None, now

        def work(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE firings SET actions = ?, status = ?, next_ms = ?, ended_ms = ?, "
                    "lease_token = NULL, lease_expires_ms = NULL WHERE id = ? AND lease_token = ?",
                    (json.dumps(outcomes), status, next_ms, ended, firing.id, token),
                ).rowcount
                == 1
            )

        return self._journal.writer.transaction(work)


def _seen(event: Event) -> triggers.Event:
    """The event as the triggers see it."""
    return triggers.Event(
        event.seq, event.id, event.event, event.occurred_ms, event.resource, event.related,
        event.payload,
    )  # fmt: skip


def _event_json(event: triggers.Event) -> dict[str, Any]:
    from .events import iso

    return {
        "id": event.id,
        "event": event.event,
        "occurred": iso(event.occurred_ms),
        "resource": event.resource,
        "related": list(event.related),
        "payload": event.payload,
    }
