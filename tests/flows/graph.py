"""A flow whose task runs take futures, lists of futures and States as inputs."""

from __future__ import annotations

from persevere import flow, task


@task
def number(x: int) -> int:
    return x


@task
def total(values: object) -> int:
    if isinstance(values, dict):
        values = list(values.values())
    assert all(isinstance(v, int) for v in values)  # type: ignore[attr-defined]
    return sum(values)  # type: ignore[call-overload]


@flow
def diamond() -> list[int]:
    a = number.submit(1)  # 0
    b = number.submit(a)  # 1 <- 0
    c = number(b)  # 2 <- 1 (a direct call waits for the future)
    d = number.submit(4, wait_for=[a, b])  # 3 <- 0, 1
    nested = total.submit([a, b, d])  # 4 <- 0, 1, 3 (futures in a list)
    keyed = total({"x": a, "y": c})  # 5 <- 0 (c is a plain int by now)
    mapped = number.map([a, b])  # 6 <- 0, 7 <- 1
    together = total(mapped)  # 8 <- 6, 7 (the list .map returned)
    state = number(5, return_state=True)  # 9
    from_state = number(state)  # 10 <- 9
    plain = number(7)  # 11: no upstream
    return [nested.result(), keyed, together, from_state, plain]
