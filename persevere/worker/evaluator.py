"""The automations' evaluator: one pass reads new events and the time, fires, acts.

It runs in every scheduler pass (so in every worker, every ``persevere
scheduler``, and ``Harness.tick()``). Each automation with new events or a
time that has come is evaluated in one transaction of its own (see
journal/automations.py), so several evaluators never fire twice; the events
are read and filled in once per pass for all automations, outside those
transactions. Then the firings with actions due are leased, one at a time,
and their actions run, each outcome recorded (and the lease renewed) as it
comes. An idle pass is two reads and no write lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import clock
from ..journal import Journal
from ..journal.automations import Firing
from .actions import run_due

#: Firings whose actions one pass runs at most (the rest wait for the next pass).
FIRINGS_PER_PASS = 50
#: Pages of events (of EVENTS_PER_PASS) one pass reads per automation at most.
PAGES_PER_PASS = 10


class Evaluator:
    """Evaluates the journal's automations and runs their actions; one :meth:`tick` per pass."""

    def __init__(self, journal: Journal, say: Callable[[str], None] | None = None) -> None:
        self.journal = journal
        self.say = say
        self._failing: dict[str, str] = {}

    def tick(self) -> list[str]:
        """One pass at ``clock.now_ms()``; returns what it did, a line each."""
        lines: list[str] = []
        automations = self.journal.automations
        now = clock.now_ms()
        filled: dict[Any, Any] = {}  # events read once for all automations of the pass
        for automation in automations.due(now):
            try:
                fired: list[Firing] = []
                for _ in range(PAGES_PER_PASS):
                    new, more = automations.evaluate(automation.id, now, filled)
                    fired += new
                    if not more:
                        break
            except Exception as exc:  # one broken automation must not stop the others
                line = f"automation {automation.name} failed: {type(exc).__name__}: {exc}"
                if self._failing.get(automation.id) != line:
                    self._failing[automation.id] = line
                    lines.append(line)
                continue
            self._failing.pop(automation.id, None)
            lines += [f"automation {automation.name} fired: {f.reason}" for f in fired]
        lines += self.act()
        if self.say is not None:
            for line in lines:
                self.say(line)
        return lines

    def act(self) -> list[str]:
        """Run the due actions of firings, under each firing's lease."""
        lines: list[str] = []
        automations = self.journal.automations
        for _ in range(FIRINGS_PER_PASS):
            claimed = automations.claim_firing(clock.now_ms())
            if claimed is None:
                break
            firing, token = claimed
            try:
                automation = automations.get(firing.automation_id)
            except LookupError:  # deleted meanwhile: its firings went with it
                continue
            try:
                outcomes = run_due(
                    self.journal, automation, firing, lines.append,
                    lambda o, f=firing, t=token: automations.progress(f, t, o),  # type: ignore[misc]
                )  # fmt: skip
                if outcomes is None or not automations.record(firing, token, outcomes):
                    lines.append(f"automation {automation.name}: firing {firing.id} was taken over")
            except Exception as exc:  # one bad firing must not stop the pass; its lease lapses
                lines.append(
                    f"automation {automation.name}: firing {firing.id} failed: "
                    f"{type(exc).__name__}: {exc}"
                )
        return lines
