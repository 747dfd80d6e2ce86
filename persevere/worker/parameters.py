"""Flow parameters: binding, checking against type hints, storing and loading.

Values from the command line are parsed as JSON when they parse, else kept as
strings, then validated and coerced against the flow's type hints with
pydantic (imported on that path only: it costs ~0.13 s to import).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..exceptions import ParameterError, SerializationError
from ..journal import Journal, Op, from_json, to_json

_PICKLED = "__persevere_pickled_parameters__"


def parse_assignments(pairs: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn ``NAME=VALUE`` strings into values (JSON if VALUE parses) and their texts."""
    params: dict[str, Any] = {}
    texts: dict[str, str] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"parameter {pair!r} must look like NAME=VALUE")
        texts[name] = raw
        try:
            params[name] = json.loads(raw)
        except ValueError:
            params[name] = raw
    return params, texts


def bind(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a call by name, defaults applied."""
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ParameterError(f"{getattr(fn, '__name__', fn)}: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def check(
    fn: Callable[..., Any],
    flow_name: str,
    params: dict[str, Any],
    texts: Mapping[str, str] | None = None,
    *,
    partial: bool = False,
) -> dict[str, Any]:
    """Validate and coerce parameters against ``fn``'s signature and type hints.

    ``texts`` holds the command-line text of each value: a value parsed as
    JSON that does not fit its type is tried as that text (so ``-p label=123``
    gives the string "123" to a ``str`` parameter). With ``partial``, required
    parameters may be missing (a deployment's defaults, completed per run).
    """
    signature = inspect.signature(fn)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    known = [
        n
        for n, p in signature.parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    for name in params:
        if name not in known and not accepts_any:
            raise ParameterError(
                f"flow {flow_name!r} has no parameter {name!r}; "
                f"it takes: {', '.join(known) or 'none'}"
            )
    for name in [] if partial else known:
        if name not in params and signature.parameters[name].default is inspect.Parameter.empty:
            raise ParameterError(f"flow {flow_name!r} needs parameter {name!r} (-p {name}=VALUE)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    checked = dict(params)
    for name, value in params.items():
        if name in known and name in hints and hints[name] is not Any:
            text = (texts or {}).get(name)
            try:
                checked[name] = _coerce(flow_name, name, hints[name], value)
            except ParameterError:
                if text is None or text == value:
                    raise
                try:
                    checked[name] = _coerce(flow_name, name, hints[name], text)
                except ParameterError:
                    pass
                else:
                    continue
                raise
    return checked


def _coerce(flow_name: str, name: str, hint: Any, value: Any) -> Any:
    import pydantic  # deferred: see the module docstring

    try:
        return pydantic.TypeAdapter(hint).validate_python(value)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p!r}]" for p in first.get("loc", ()))
        raise ParameterError(
            f"parameter {name!r}{where} of flow {flow_name!r}: {first['msg']} (got {value!r})"
        ) from None
    except pydantic.PydanticSchemaGenerationError:
        return value  # a type pydantic cannot check: passed through as given


def encode(
    journal: Journal, params: dict[str, Any], fence: str | None = None
) -> tuple[str, list[Op]]:
    """Parameters as stored: typed JSON, or a signed pickle when JSON cannot hold them.

    A flow is resumed from its stored parameters, so they must be storable;
    objects JSON cannot hold (a DataFrame given to a subflow) are pickled and
    signed like pickled results.
    """
    try:
        return to_json(params), []
    except (TypeError, ValueError):
        pass
    try:
        stored = journal.store(params, "pickle", "the parameters", fence, inline=False)
    except SerializationError as exc:
        raise ParameterError(f"{exc}; a flow's parameters are stored to resume it") from None
    assert stored.op is not None
    return json.dumps({_PICKLED: stored.result_id}), [stored.op]


def decode(journal: Journal, stored: str) -> dict[str, Any]:
    """The parameters a run was started with."""
    value = from_json(stored)
    if isinstance(value, dict) and set(value) == {_PICKLED}:
        loaded = journal.load_result(value[_PICKLED])
        return dict(loaded)
    return dict(value)
