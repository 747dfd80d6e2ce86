"""Caching by hashed inputs: key properties (hypothesis) and behaviour across runs."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from persevere import FLOW_PARAMETERS, INPUTS, NO_CACHE, TASK_SOURCE, flow, task
from persevere.cli import cli
from persevere.journal import Journal
from persevere.statemachine.caching import Unhashable, cache_key, encode

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.binary(max_size=8),
    st.floats(allow_nan=False), st.dates(), st.uuids(),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
        st.frozensets(st.integers(), max_size=4),
    ),
    max_leaves=12,
)


def key(value: Any) -> str:
    return cache_key(INPUTS, "t", {"x": value})


@given(st.dictionaries(st.text(max_size=4), values, max_size=5))
def test_dict_order_does_not_change_the_key(mapping: dict[str, Any]) -> None:
    reordered = dict(reversed(list(mapping.items())))
    assert key(mapping) == key(reordered)


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_equal_ints_and_floats_give_equal_keys(number: int) -> None:
    assert key(number) == key(float(number))
    assert key([number, {"n": number}]) == key([float(number), {"n": float(number)}])


def same_structure(a: Any, b: Any) -> bool:
    """Equality that also tells a bool from an int and a tuple from a list."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same_structure(x, y) for x, y in zip(a, b, strict=True)))  # fmt: skip
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(same_structure(a[k], b[k]) for k in a))  # fmt: skip
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


@given(values, values)
def test_equal_keys_only_for_equal_inputs(a: Any, b: Any) -> None:
    """Never a wrong cache hit: a shared key means the inputs were the same."""
    if key(a) == key(b):
        assert same_structure(a, b)
    if same_structure(a, b):
        assert key(a) == key(b)


def test_keys_are_stable_across_processes_and_hash_seeds() -> None:
    probe = (
        "from persevere.statemachine.caching import INPUTS, cache_key;"
        "print(cache_key(INPUTS, 't', {'x': {'b': [1, 2.0, (3,)], 'a': {4, 5}}, 'y': 'z'}))"
    )
    keys = {
        subprocess.run([sys.executable, "-c", probe], env={"PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    here = cache_key(INPUTS, "t", {"y": "z", "x": {"a": {5, 4}, "b": [1.0, 2, (3,)]}})
    assert keys == {here}


def test_an_object_without_a_stable_hash_is_refused_by_name() -> None:
    with pytest.raises(Unhashable) as info:
        encode({"ok": 1, "conn": object()}, "config")
    assert "config['conn']" in str(info.value)


def test_policies_combine_and_drop_arguments() -> None:
    inputs = {"x": 1, "verbose": True}
    assert cache_key(INPUTS - "verbose", "t", inputs) == cache_key(INPUTS, "t", {"x": 1})
    assert cache_key(INPUTS, "t", inputs) != cache_key(INPUTS + TASK_SOURCE, "t", inputs, "src")
    assert cache_key(TASK_SOURCE, "t", inputs, "a") != cache_key(TASK_SOURCE, "t", inputs, "b")
    assert repr(INPUTS + TASK_SOURCE - "verbose") == "INPUTS + TASK_SOURCE - 'verbose'"
    assert not NO_CACHE.caches and (INPUTS + FLOW_PARAMETERS).caches


def counted(**options: Any) -> tuple[Any, list[Any]]:
    calls: list[Any] = []

    @task(**options)
    def square(x: Any) -> int:
        calls.append(x)
        return int(x) ** 2 if not isinstance(x, dict) else len(x)

    return square, calls


def run_twice(t: Any, *args: Any) -> tuple[Any, Any]:
    @flow
    def once() -> Any:
        return [t(a) for a in args]

    return once(), once()


def states(journal: Journal) -> list[list[str]]:
    return [
        [t.state_name for t in journal.task_runs(r.id)] for r in reversed(journal.list_flow_runs())
    ]


def test_a_hit_skips_the_body_and_is_journaled_cached(journal: Journal) -> None:
    square, calls = counted(cache_policy=INPUTS)
    assert run_twice(square, 2, 3) == ([4, 9], [4, 9])
    assert calls == [2, 3]
    assert states(journal) == [["Completed", "Completed"], ["Cached", "Cached"]]


def test_reordered_dict_inputs_hit(journal: Journal) -> None:
    square, calls = counted(cache_policy=INPUTS)
    run_twice(square, {"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert calls == [{"a": 1, "b": 2}]


def test_no_cache_is_the_default(journal: Journal) -> None:
    square, calls = counted()
    run_twice(square, 2)
    assert calls == [2, 2]


def test_expired_entries_are_recomputed(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    from persevere import clock

    square, calls = counted(cache_policy=INPUTS, cache_expiration=dt.timedelta(seconds=60))

    @flow
    def once() -> int:
        return square(5)

    once()
    real = clock.now_ms
    monkeypatch.setattr(clock, "now_ms", lambda: real() + 30_000)
    once()
    monkeypatch.setattr(clock, "now_ms", lambda: real() + 61_000)
    once()
    assert calls == [5, 5]


def test_refresh_cache_runs_the_body_and_replaces_the_entry(journal: Journal) -> None:
    square, calls = counted(cache_policy=INPUTS)
    run_twice(square.with_options(refresh_cache=True), 4)
    assert calls == [4, 4]
    assert len(journal.cache.entries("square")) == 1


def test_an_unhashable_input_is_not_cached_and_warns(
    journal: Journal, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSEVERE_LOG_LEVEL", "WARNING")
    calls: list[int] = []

    @task(cache_policy=INPUTS)
    def use(handle: object, x: int) -> int:
        calls.append(x)
        return x

    @flow
    def twice() -> None:
        use(object(), 1)
        use(object(), 1)

    twice()
    assert calls == [1, 1]
    err = capsys.readouterr().err
    assert "not cached" in err and "'handle'" in err and "cache_key_fn" in err
    assert journal.cache.entries() == []


def test_cache_key_fn_decides_the_key(journal: Journal) -> None:
    square, calls = counted(cache_key_fn=lambda ctx, inputs: f"sq-{inputs['x'] % 2}")
    run_twice(square, 2, 4)  # same parity: one key
    assert calls == [2]


def test_flow_parameters_policy(journal: Journal) -> None:
    calls: list[int] = []

    @task(cache_policy=FLOW_PARAMETERS)
    def report() -> int:
        calls.append(1)
        return len(calls)

    @flow
    def nightly(day: str) -> int:
        return report()

    assert [nightly("a"), nightly("a"), nightly("b")] == [1, 1, 2]


def test_cache_cli_lists_and_clears(journal: Journal, db: Path) -> None:
    square, _ = counted(cache_policy=INPUTS)
    run_twice(square, 1, 2)
    runner = CliRunner()
    listed = runner.invoke(cli, ["cache", "ls", "--json"], catch_exceptions=False)
    assert {e["task_key"] for e in json.loads(listed.output)} == {"square"}
    assert len(json.loads(listed.output)) == 2
    assert "square" in runner.invoke(cli, ["cache", "ls"]).output
    cleared = runner.invoke(cli, ["cache", "clear", "--task", "other"])
    assert cleared.exit_code == 0 and "removed 0" in cleared.output
    cleared = runner.invoke(cli, ["cache", "clear"])
    assert "removed 2" in cleared.output
    assert journal.cache.entries() == []
