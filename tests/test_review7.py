"""Regressions found by the review of events and automations: each test failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from persevere import flow, task
from persevere.automations import load_automations
from persevere.journal.automations import EVENTS_PER_PASS
from persevere.testing import Harness, harness
from persevere.worker.evaluator import Evaluator

from .test_automations import ARRIVED, NOTE, Receiver, create, emit, firings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def h() -> Iterator[Harness]:
    with harness(start="2026-11-23T06:00:00Z") as test_harness:
        yield test_harness


def test_an_automation_never_fires_on_its_own_events(h: Harness) -> None:
    # Its firing and its notification are events too; matching everything, it
    # used to fire on them, doubling each pass.
    create(h, "everything", {"match": "*"}, NOTE)
    emit(h)
    for _ in range(5):
        h.tick()
    assert len(firings(h, "everything")) == 1


def test_a_backlog_is_read_before_the_time_is_judged(h: Harness) -> None:
    create(h, "heartbeat", {"type": "absence", "expect": "app.heartbeat", "within": "1m"}, NOTE)
    h.clock.advance(10)
    for i in range(EVENTS_PER_PASS + 500):  # more than one page of noise
        h.journal.events.emit("noise.made", {"id": f"n{i}"})
    h.clock.advance(20)
    emit(h, "app.heartbeat", "app")
    h.clock.advance(40)  # the first pass after the window's end
    h.tick()
    assert firings(h, "heartbeat") == []


def test_a_firing_keeps_the_actions_it_fired_with_after_a_redefinition(h: Harness) -> None:
    automation = create(h, "two", ARRIVED, [*NOTE, {"type": "notify", "message": "second"}])
    emit(h)
    h.journal.automations.evaluate(automation.id, h.clock.now_ms())
    h.journal.automations.create("two", ARRIVED, NOTE, replace=True)
    lines = Evaluator(h.journal).tick()
    [firing] = firings(h, "two")
    assert firing.status == "done", lines
    assert [o["status"] for o in firing.outcomes] == ["done", "done"]
    assert "second" in firing.outcomes[1]["outcome"]


def test_each_action_is_recorded_and_the_lease_renewed_as_it_ends(h: Harness) -> None:
    server = Receiver()
    try:
        create(h, "hook", ARRIVED, [{"type": "webhook", "url": server.url}, *NOTE])
        emit(h)
        seen: list[list[str]] = []
        journal = h.journal
        real = journal.automations.progress

        def progress(firing, token, outcomes):  # type: ignore[no-untyped-def]
            ok = real(firing, token, outcomes)
            row = journal.query(
                "SELECT actions, lease_expires_ms FROM firings WHERE id = ?", (firing.id,)
            )[0]
            assert row["lease_expires_ms"] > h.clock.now_ms() + 60_000
            seen.append([o["status"] for o in __import__("json").loads(row["actions"])])
            return ok

        journal.automations.progress = progress  # type: ignore[method-assign]
        h.tick()
        assert seen == [["done", "pending"], ["done", "done"]]
        assert len(server.posts) == 1
    finally:
        server.close()


def test_a_lost_lease_stops_the_rest_of_the_actions(h: Harness) -> None:
    create(h, "two", ARRIVED, [*NOTE, {"type": "notify", "message": "second"}])
    emit(h)
    journal = h.journal
    journal.automations.progress = lambda *a: False  # type: ignore[method-assign]
    lines = h.tick()
    assert any("was taken over" in line for line in lines)
    assert len(journal.events.newest(10, names=["persevere.automation.notification"])) == 1


@task
def step() -> int:
    return 1


@flow(name="review7-ordered")
def ordered() -> int:
    return step()


def test_task_run_events_come_before_the_end_of_their_flow_run(h: Harness) -> None:
    create(
        h,
        "in-order",
        {
            "type": "sequence",
            "triggers": [
                {"match": "persevere.task-run.Completed"},
                {"match": "persevere.flow-run.Completed"},
            ],
        },
        NOTE,
    )
    assert ordered() == 1
    h.tick()
    assert len(firings(h, "in-order")) == 1


def test_automation_files_check_description_and_enabled(tmp_path: Path) -> None:
    base = "name: a\ntrigger: {match: x}\nactions: [{type: notify, message: m}]\n"
    assert load_automations("a.yaml", base + "description:\n")[0]["description"] == ""
    with pytest.raises(ValueError, match="enabled must be true or false"):
        load_automations("a.yaml", base + 'enabled: "false"\n')
    with pytest.raises(ValueError, match="description must be text"):
        load_automations("a.yaml", base + "description: [1]\n")
