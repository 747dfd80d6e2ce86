"""Cache policies and cache keys: a stable hash of a canonical encoding of the inputs.

Equal inputs must give equal keys across processes, Python restarts and dict
orderings, and unequal inputs different keys: a wrong cache hit returns
another call's result, so anything that cannot be encoded faithfully makes the
task uncacheable (:class:`Unhashable` says which argument) rather than being
guessed at. ``hash()`` is salted per process and ``pickle`` output depends on
insertion order and protocol, so neither is used; ``repr`` of arbitrary
objects includes memory addresses.

Canonical encoding: every value becomes a tagged, nested list; dicts and sets
are sorted by the encoding of their members; an int and a float that are
equal encode alike (``1 == 1.0``), a bool does not (``True`` is not ``1``
here). The key is the SHA-256 of the JSON of that encoding.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import math
import pathlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Unhashable(ValueError):
    """An input that has no canonical encoding; the call is not cached."""

    def __init__(self, argument: str, kind: str) -> None:
        self.argument = argument
        super().__init__(f"argument {argument!r} (of type {kind}) has no stable hash")


def _number(value: int | float) -> list[Any]:
    if isinstance(value, float):
        if math.isnan(value):
            return ["nan"]
        if math.isinf(value):
            return ["inf", value > 0]
        if value.is_integer():
            return ["num", str(int(value))]
        return ["num", repr(value)]
    return ["num", str(value)]


def encode(value: Any, where: str = "value") -> Any:
    """The canonical encoding of a value; :class:`Unhashable` if it has none."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, enum.Enum):
        return ["enum", type(value).__qualname__, encode(value.value, where)]
    if isinstance(value, (list, tuple)):
        tag = "list" if isinstance(value, list) else "tuple"
        return [tag, [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, Mapping):
        items = [[encode(k, where), encode(v, f"{where}[{k!r}]")] for k, v in value.items()]
        return ["dict", sorted(items, key=_order)]
    if isinstance(value, (set, frozenset)):
        return ["set", sorted((encode(v, where) for v in value), key=_order)]
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", bytes(value).hex()]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return [type(value).__name__, value.isoformat()]
    if isinstance(value, dt.timedelta):
        return ["timedelta", value.days, value.seconds, value.microseconds]
    if isinstance(value, decimal.Decimal):
        return ["decimal", str(value.normalize())]
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return [type(value).__name__, str(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dataclass", type(value).__qualname__, encode(fields, where)]
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        return ["model", type(value).__qualname__, encode(dump(mode="python"), where)]
    raise Unhashable(where, type(value).__qualname__)


def _order(encoded: Any) -> str:
    return json.dumps(encoded, separators=(",", ":"))


def digest(encoded: Any) -> str:
    """SHA-256 of a canonical encoding, as hex."""
    return hashlib.sha256(_order(encoded).encode()).hexdigest()


@dataclass(frozen=True)
class CachePolicy:
    """What a task's cache key is made of.

    Combine with ``+`` (``INPUTS + TASK_SOURCE``); drop an argument from the
    inputs with ``-`` (``INPUTS - "verbose"``). ``NO_CACHE`` (the default)
    never caches across runs; replay inside a run is separate and always on.
    """

    parts: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    def __add__(self, other: CachePolicy) -> CachePolicy:
        return CachePolicy(self.parts | other.parts, self.excluded | other.excluded)

    def __sub__(self, argument: str) -> CachePolicy:
        if not isinstance(argument, str):
            return NotImplemented
        return CachePolicy(self.parts, self.excluded | {argument})

    @property
    def caches(self) -> bool:
        """False for NO_CACHE."""
        return bool(self.parts)

    def __repr__(self) -> str:
        if not self.parts:
            return "NO_CACHE"
        text = " + ".join(sorted(p.upper() for p in self.parts))
        return text + "".join(f" - {a!r}" for a in sorted(self.excluded))


INPUTS = CachePolicy(frozenset({"inputs"}))
TASK_SOURCE = CachePolicy(frozenset({"task_source"}))
FLOW_PARAMETERS = CachePolicy(frozenset({"flow_parameters"}))
NO_CACHE = CachePolicy()


def cache_key(
    policy: CachePolicy,
    task_key: str,
    inputs: Mapping[str, Any],
    task_source: str | None = None,
    flow_parameters: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of a call under ``policy``; :class:`Unhashable` names a bad input."""
    parts: list[Any] = [task_key]
    if "inputs" in policy.parts:
        kept = {k: v for k, v in inputs.items() if k not in policy.excluded}
        parts.append(["inputs", [[k, encode(v, k)] for k, v in sorted(kept.items())]])
    if "task_source" in policy.parts:
        parts.append(["source", task_source or ""])
    if "flow_parameters" in policy.parts:
        params = dict(flow_parameters or {})
        parts.append(["flow", [[k, encode(v, k)] for k, v in sorted(params.items())]])
    return digest(parts)
