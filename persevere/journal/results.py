"""Turning values into stored bytes and back: typed JSON by default, signed pickle on request.

JSON is the default because a JSON result can be read by anyone (``persevere
runs show``) and loading it cannot run code. Plain JSON would hand back a list
for a tuple and a string for a datetime, so a replayed task would return
something else than it did the first time; values JSON lacks are therefore
written as tagged objects ``{"__persevere__": tag, "v": ...}`` and rebuilt
exactly: tuples, sets, bytes, dates and times, UUIDs, Decimals, paths, enums,
dataclasses and pydantic models. A class is named by module and qualified
name and looked up only among modules already imported: loading never
imports a module a database names.

Pickle is opt-in (``result_serializer="pickle"``) and every pickled payload is
prefixed with an HMAC-SHA256 of it under a key kept beside the database
(mode 0600). Loading checks the HMAC first; a payload that fails is refused
and never unpickled, so a tampered database cannot run code.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import json
import os
import pathlib
import pickle
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exceptions import SerializationError, TamperedResult

SERIALIZERS = ("json", "pickle")
_TAG = "__persevere__"


def _tagged(tag: str, value: Any) -> dict[str, Any]:
    return {_TAG: tag, "v": value}


def _encode(value: Any) -> Any:
    """Encode the values plain JSON lacks; called by json for unknown types."""
    if isinstance(value, enum.Enum):
        return _tagged("enum", [_class_name(value), _walk(value.value)])
    if isinstance(value, (*_PLAIN, list, dict, tuple, set, frozenset, bytes)) and type(
        value
    ) not in (tuple, set, frozenset, bytes):
        raise TypeError(f"{type(value).__qualname__} is a subclass of a JSON type")
    if isinstance(value, tuple):
        return _tagged("tuple", [_walk(v) for v in value])
    if isinstance(value, frozenset):
        return _tagged("frozenset", [_walk(v) for v in value])
    if isinstance(value, set):
        return _tagged("set", [_walk(v) for v in value])
    if isinstance(value, bytes):
        return _tagged("bytes", base64.b64encode(value).decode("ascii"))
    if isinstance(value, (dt.datetime, dt.time)):
        tag = "datetime" if isinstance(value, dt.datetime) else "time"
        zone = getattr(value.tzinfo, "key", None)  # a zoneinfo.ZoneInfo keeps its name
        if isinstance(zone, str):
            # The wall time, the zone's name and the fold, not an offset: this
            # rebuilds the same value, even in a DST gap or at the end of the range.
            naive = value.replace(tzinfo=None).isoformat()
            return _tagged(tag, [naive, zone, value.fold])
        return _tagged(tag, value.isoformat())
    if isinstance(value, dt.date):
        return _tagged("date", value.isoformat())
    if isinstance(value, dt.timedelta):
        return _tagged("timedelta", [value.days, value.seconds, value.microseconds])
    if isinstance(value, uuid.UUID):
        return _tagged("uuid", str(value))
    if isinstance(value, decimal.Decimal):
        return _tagged("decimal", str(value))
    if isinstance(value, (pathlib.PurePosixPath, pathlib.PureWindowsPath)) and not isinstance(
        value, pathlib.Path
    ):
        return _tagged(type(value).__name__, str(value))
    if isinstance(value, pathlib.PurePath):
        return _tagged("path", str(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _walk(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return _tagged("dataclass", [_class_name(value), fields])
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        return _tagged("model", [_class_name(value), _walk(dump(mode="python"))])
    raise TypeError(type(value).__qualname__)


def _class_name(value: Any) -> str:
    cls = type(value)
    if "<locals>" in cls.__qualname__:
        raise TypeError(f"{cls.__qualname__} is defined inside a function")
    return f"{cls.__module__}:{cls.__qualname__}"


def _class(name: str) -> Any:
    """The class a stored value names, from a module already imported.

    Loading a JSON result never imports a module: a database could name any
    importable module, and importing runs its code. The flow's own modules
    are imported when its run is replayed, so their classes are found.
    """
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        raise SerializationError(
            f"a stored value is a {name}, but module {module_name!r} is not imported; "
            "import it before loading the value"
        )
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise SerializationError(f"a stored value is a {name}, which no longer exists")
    return obj


def _dataclass(value: list[Any]) -> Any:
    cls = _class(value[0])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    init = {k: v for k, v in value[1].items() if k in fields and fields[k].init}
    instance = cls(**init)
    for name, item in value[1].items():
        if name in fields and not fields[name].init:
            object.__setattr__(instance, name, item)
    return instance


_PLAIN = (str, int, float, bool, type(None))


def _walk(value: Any) -> Any:
    """Rewrite containers json would flatten (tuples, non-string dict keys).

    Types are matched exactly: a subclass (a namedtuple, an OrderedDict, a
    str-based enum) would come back as its base class, so it is encoded as
    itself (enums) or refused, never silently changed.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_walk(v) for v in value]
    if kind is dict:
        if all(type(k) is str for k in value):
            if _TAG in value:
                return _tagged("dict", [[k, _walk(v)] for k, v in value.items()])
            return {k: _walk(v) for k, v in value.items()}
        return _tagged("dict", [[_walk(k), _walk(v)] for k, v in value.items()])
    return _encode(value)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "bytes": lambda v: base64.b64decode(v),
    "datetime": lambda v: _zoned(dt.datetime, v),
    "date": dt.date.fromisoformat,
    "time": lambda v: _zoned(dt.time, v),
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "path": pathlib.Path,
    "PurePosixPath": pathlib.PurePosixPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
    "dict": lambda pairs: {_freeze(k): v for k, v in pairs},
    "enum": lambda v: _class(v[0])(v[1]),
    "dataclass": lambda v: _dataclass(v),
    "model": lambda v: _class(v[0]).model_validate(v[1]),
}


def _zoned(kind: Any, value: str | list[Any]) -> Any:
    if isinstance(value, str):
        return kind.fromisoformat(value)
    import zoneinfo  # deferred: only zoned values need it

    text, zone, fold = value
    return kind.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(zone), fold=fold)


def _freeze(key: Any) -> Any:
    # Dict keys came back through JSON as lists where they were tuples.
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key


def _decode_object(obj: dict[str, Any]) -> Any:
    tag = obj.get(_TAG)
    if tag is None or len(obj) != 2:
        return obj
    try:
        return _DECODERS[tag](obj["v"])
    except KeyError:
        raise SerializationError(f"stored value has an unknown type tag {tag!r}") from None


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=True)


def to_json(value: Any) -> str:
    """Encode a value as typed JSON text; ``TypeError`` names an unsupported type."""
    kind = type(value)
    # The commonest task results, written as the encoder writes them without
    # its set-up (which costs ten times as much for a small int).
    if kind is int:
        return int.__repr__(value)
    if value is None or kind is bool:
        return "null" if value is None else "true" if value else "false"
    return _ENCODER.encode(_walk(value))


def from_json(text: str | bytes) -> Any:
    """Decode typed JSON text back into the value it was made from."""
    return json.loads(text, object_hook=_decode_object)


KEY_BYTES = 32


def _read_key(key_path: Path) -> bytes:
    key = key_path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SerializationError(
            f"the signing key {key_path} is damaged ({len(key)} bytes, not {KEY_BYTES}); "
            "pickled results signed with it cannot be trusted. Remove the file to start a new "
            "key (results pickled before can then no longer be loaded)"
        )
    return key


def load_key(key_path: Path) -> bytes:
    """The HMAC key beside the database, created (mode 0600) on first use.

    The key is written to a private temporary file and then linked into place,
    so no process ever sees a partly written key; a key file of the wrong size
    is refused, never used.
    """
    try:
        return _read_key(key_path)
    except FileNotFoundError:
        pass
    temporary = key_path.with_name(f"{key_path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temporary, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first
            os.link(temporary, key_path)  # atomic: the key appears whole or not at all
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(key_path)


class Codec:
    """Serializes values for one database (the pickle key is that database's)."""

    def __init__(self, key_path: Path) -> None:
        self._key_path = key_path
        self._key: bytes | None = None

    def _hmac_key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self._key_path)
        return self._key

    def dumps(self, value: Any, serializer: str, what: str) -> bytes:
        """Serialize ``value``; ``what`` names it in errors (e.g. "result of task 'x'")."""
        if serializer == "json":
            try:
                return to_json(value).encode()
            except RecursionError:
                raise SerializationError(
                    f"{what} (of type {type(value).__qualname__}) cannot be stored as JSON: "
                    "it contains itself, or is nested too deeply"
                ) from None
            except (TypeError, ValueError) as exc:
                raise SerializationError(
                    f"{what} (of type {type(value).__qualname__}) cannot be stored as JSON "
                    f"({exc}); return JSON-friendly data or pass "
                    'result_serializer="pickle" to the task or flow'
                ) from None
        if serializer == "pickle":
            try:
                import cloudpickle  # deferred: only pickled results need it

                # cloudpickle also pickles lambdas, closures and classes made in
                # a function; pickle.loads reads what it writes.
                payload: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise SerializationError(
                    f"{what} (of type {type(value).__qualname__}) cannot be pickled ({exc})"
                ) from None
            signature = hmac.new(self._hmac_key(), payload, hashlib.sha256).digest()
            return signature + payload
        raise SerializationError(f"unknown serializer {serializer!r}; use one of {SERIALIZERS}")

    def loads(self, data: bytes, serializer: str) -> Any:
        """Load a stored value, refusing a pickle whose signature does not match."""
        if serializer == "json":
            return from_json(data)
        if serializer == "pickle":
            signature, payload = data[:32], data[32:]
            expected = hmac.new(self._hmac_key(), payload, hashlib.sha256).digest()
            if not hmac.compare_digest(signature, expected):
                raise TamperedResult(
                    "a pickled result failed its signature check and was not loaded: "
                    "the database was changed outside persevere, or its key file "
                    f"{self._key_path} was replaced"
                )
            return pickle.loads(payload)
        raise SerializationError(f"unknown serializer {serializer!r}; use one of {SERIALIZERS}")


def content_id(serializer: str, data: bytes) -> str:
    """The content address of a stored value."""
    return hashlib.sha256(serializer.encode() + b"\x00" + data).hexdigest()
