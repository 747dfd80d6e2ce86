"""Typed JSON for dataclasses, enums and pydantic models; cloudpickle for closures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from pathlib import Path
from typing import Any

import pydantic
import pytest

from persevere import SerializationError, flow, task
from persevere.journal import Journal
from persevere.journal.results import Codec, from_json, to_json


@dataclasses.dataclass(frozen=True)
class Order:
    id: int
    lines: tuple[str, ...] = ()
    placed: dt.date = dt.date(2026, 11, 21)
    total: float = dataclasses.field(default=0.0, init=False)


class Status(enum.Enum):
    OPEN = "open"
    SHIPPED = "shipped"


class Customer(pydantic.BaseModel):
    name: str
    tags: list[str] = []
    since: dt.datetime | None = None


@pytest.mark.parametrize(
    "value",
    [
        Order(7, ("a", "b")),
        Status.SHIPPED,
        Customer(name="Ada", tags=["x"], since=dt.datetime(2026, 1, 2, 3, 4)),
        {"orders": [Order(1), Order(2)], "status": {Status.OPEN}},
    ],
    ids=["dataclass", "enum", "pydantic", "nested"],
)
def test_typed_values_come_back_equal_and_of_their_type(value: Any) -> None:
    back = from_json(to_json(value))
    assert back == value and type(back) is type(value)


def test_a_field_outside_init_is_restored() -> None:
    order = Order(1)
    object.__setattr__(order, "total", 12.5)
    assert from_json(to_json(order)).total == 12.5


def test_loading_never_imports_a_module_the_database_names() -> None:
    forged = '{"__persevere__":"dataclass","v":["antigravity:Thing",{}]}'
    with pytest.raises(SerializationError, match="not imported"):
        from_json(forged)


def test_a_class_made_inside_a_function_is_refused_by_json_with_advice(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(SerializationError, match='result_serializer="pickle"'):
        Codec(tmp_path / "k").dumps(Local(1), "json", "the value")


def test_pickle_takes_closures(tmp_path: Path) -> None:
    codec = Codec(tmp_path / "k")
    offset = 10
    add = lambda x: x + offset  # noqa: E731
    assert codec.loads(codec.dumps(add, "pickle", "f"), "pickle")(1) == 11


def test_a_task_returning_a_dataclass_replays_it(journal: Journal) -> None:
    @task
    def make() -> Order:
        return Order(3, ("z",))

    @flow
    def orders() -> Order:
        return make()

    assert orders() == Order(3, ("z",))
    [run] = journal.list_flow_runs()
    [t] = journal.task_runs(run.id)
    assert journal.load_task_result(t) == Order(3, ("z",))


class Level(str, enum.Enum):
    LOW = "low"


def test_a_str_based_enum_comes_back_as_the_enum() -> None:
    back = from_json(to_json({"level": Level.LOW}))
    assert back["level"] is Level.LOW
