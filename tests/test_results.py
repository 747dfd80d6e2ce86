"""Result codecs: typed JSON round-trips, signed pickle, refusal of tampered payloads."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import hashlib
import hmac
import json
import math
import os
import pathlib
import pickle
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from persevere.exceptions import SerializationError, TamperedResult
from persevere.journal import Codec, Journal, Op, from_json, to_json

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TAG = "__persevere__"

# -- a strict, type-aware, NaN-aware comparison ------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, with the same type at every level (a tuple stays a tuple, 1 is not True).

    NaN equals NaN; -0.0 differs from 0.0; dicts keep their order; Decimals keep
    their exponent; aware datetimes and times keep their wall clock and offset.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, (set, frozenset)):
        # Elements are hashable and NaN-free: each must have an equal twin of its type.
        return len(a) == len(b) and all(any(x == y and same(x, y) for y in b) for x in a)
    if isinstance(a, (dt.datetime, dt.time)):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.utcoffset() == b.utcoffset()
            and a.tzinfo == b.tzinfo
        )
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


def test_same_is_strict() -> None:
    """The comparison used below can fail: it tells apart what a lossy codec would merge."""
    utc, plus1 = dt.timezone.utc, dt.timezone(dt.timedelta(hours=1))
    assert same((1, [2.0, "x"]), (1, [2.0, "x"]))
    assert same(float("nan"), float("nan"))
    assert not same((1, 2), [1, 2])
    assert not same(1, True)
    assert not same(1, 1.0)
    assert not same(0.0, -0.0)
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not same({1: "a"}, {"1": "a"})
    assert not same({(1,)}, {(1.0,)})
    assert not same(frozenset({1}), {1})
    assert not same(decimal.Decimal("1.0"), decimal.Decimal("1.00"))
    assert not same(
        dt.datetime(2020, 1, 1, 12, tzinfo=plus1), dt.datetime(2020, 1, 1, 11, tzinfo=utc)
    )
    assert not same(dt.time(1, tzinfo=utc), dt.time(1))
    paris = dt.datetime(2021, 6, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    assert not same(paris, paris.astimezone(dt.timezone(dt.timedelta(hours=2))))
    new_york = dt.datetime(2021, 11, 7, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    assert not same(new_york, new_york.replace(fold=1))  # the same wall time, an hour apart
    assert not same(pathlib.PurePosixPath("a"), pathlib.Path("a"))
    assert not same(b"a", "a")
    assert not same(dt.date(2020, 1, 1), dt.datetime(2020, 1, 1))


# -- strategies ----------------------------------------------------------------

# Any fixed UTC offset except a nonzero one under a second: the C datetime of
# CPython 3.11 reads "+00:00:00.000001" back as UTC (python/cpython#152079).
fixed_offsets = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ).filter(lambda offset: not dt.timedelta(0) < abs(offset) < dt.timedelta(seconds=1)),
)
naive_datetimes = st.datetimes()
aware_datetimes = st.datetimes(timezones=fixed_offsets)
# Datetimes and times in a named zone (zoneinfo) keep their zone, fold included,
# even wall times a DST change skips and the ends of the datetime range.
zoned_datetimes = st.datetimes(timezones=st.timezones())
times = st.one_of(st.times(), st.times(timezones=fixed_offsets), st.times(timezones=st.timezones()))
paths = st.one_of(
    st.text(max_size=20).map(pathlib.Path),
    st.text(max_size=20).map(pathlib.PurePosixPath),
    st.text(max_size=20).map(pathlib.PureWindowsPath),
)


def scalars(allow_nan: bool) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers() | st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=allow_nan),
        st.text(max_size=20),
        st.binary(max_size=20),
        naive_datetimes,
        aware_datetimes,
        zoned_datetimes,
        st.dates(),
        times,
        st.timedeltas(),
        st.uuids(),
        st.decimals(allow_nan=False, allow_infinity=False),
        paths,
    )


# Hashable values (set elements, dict keys): no NaN, whose hash and equality misbehave.
hashables = st.recursive(
    scalars(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
# String keys that collide with the codec's tag on purpose.
str_keys = st.sampled_from([TAG, "v", "dict", "tuple"]) | st.text(max_size=8)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(str_keys, inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.fixed_dictionaries(
            {TAG: st.sampled_from(["tuple", "set", "dict", "bytes", "x"]) | inner, "v": inner}
        ),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    )


values = st.recursive(scalars(allow_nan=True) | hashables, _containers, max_leaves=25)

LOOKALIKES = [
    {TAG: "tuple", "v": [1, 2]},
    {TAG: "nonsense", "v": 1},
    {TAG: None},
    {"outer": {TAG: "bytes", "v": "aGk="}},
    {(1, 2): {TAG: "dict", "v": [[1, 2]]}},
    [{TAG: "set", "v": []}, ({TAG: "path", "v": "/etc"},)],
]


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


# -- round trips ---------------------------------------------------------------


@SETTINGS
@given(values)
@example({TAG: "tuple", "v": [1, 2]})
@example({1: "a", "1": "b", (1, "x"): frozenset({b"z"}), None: [()]})
@example((float("nan"), float("inf"), -0.0, dt.datetime(2020, 2, 29, tzinfo=dt.timezone.utc)))
def test_to_json_from_json_round_trip(value: Any) -> None:
    text = to_json(value)
    assert isinstance(text, str)
    assert same(from_json(text), value)
    assert same(from_json(text.encode()), value)


@given(st.one_of(st.integers(), st.booleans(), st.none()))
@example(10**4000)
@example(-1)
def test_small_scalars_are_written_as_the_json_encoder_writes_them(value: Any) -> None:
    assert to_json(value) == json.dumps(value, separators=(",", ":"))
    assert same(from_json(to_json(value)), value)


@pytest.mark.parametrize("value", LOOKALIKES)
def test_a_dict_that_looks_like_a_tagged_value_stays_a_dict(value: Any) -> None:
    assert same(from_json(to_json(value)), value)


@SETTINGS
@given(value=values, serializer=st.sampled_from(["json", "pickle"]))
def test_codec_round_trip(key_dir: Path, value: Any, serializer: str) -> None:
    codec = Codec(key_dir / "round-trip.key")
    data = codec.dumps(value, serializer, "the value")
    assert isinstance(data, bytes)
    assert same(codec.loads(data, serializer), value)
    # Another codec on the same key file (another process) loads it too.
    assert same(Codec(key_dir / "round-trip.key").loads(data, serializer), value)


@SETTINGS
@given(value=values)
def test_pickle_payload_is_signed_with_the_key_file(key_dir: Path, value: Any) -> None:
    key_path = key_dir / "signed.key"
    data = Codec(key_path).dumps(value, "pickle", "the value")
    signature, payload = data[:32], data[32:]
    assert hmac.compare_digest(
        signature, hmac.new(key_path.read_bytes(), payload, hashlib.sha256).digest()
    )
    assert same(pickle.loads(payload), value)


@SETTINGS
@given(
    zoned=st.lists(st.datetimes(timezones=st.timezones()), max_size=3),
    serializer=st.sampled_from(["json", "pickle"]),
)
def test_zoned_datetimes_keep_their_fold(
    key_dir: Path, zoned: list[dt.datetime], serializer: str
) -> None:
    """The fold picks one of two equal wall times in a zone: it must come back too."""
    codec = Codec(key_dir / "zoned.key")
    back = codec.loads(codec.dumps(zoned, serializer, "the value"), serializer)
    assert same(back, zoned)
    assert [d.fold for d in back] == [d.fold for d in zoned]


# -- tampering -------------------------------------------------------------------

SIDE_EFFECTS: list[str] = []


def _record(marker: str) -> str:
    """Run when the pickle below is loaded: proof that it was loaded."""
    SIDE_EFFECTS.append(marker)
    Path(marker).write_text("unpickled")
    return marker


class Booby:
    """An object whose unpickling appends to SIDE_EFFECTS and writes a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _record, (self.marker,)


def _booby_payload(tmp_path: Path) -> tuple[bytes, Path]:
    marker = tmp_path / "side-effect"
    return pickle.dumps(Booby(str(marker)), protocol=pickle.HIGHEST_PROTOCOL), marker


def test_the_booby_pickle_has_its_side_effect_when_signed_right(tmp_path: Path) -> None:
    """Control: a correctly signed payload is loaded, and the side effect happens."""
    codec = Codec(tmp_path / "db.key")
    data = codec.dumps(Booby(str(tmp_path / "side-effect")), "pickle", "booby")
    SIDE_EFFECTS.clear()
    assert codec.loads(data, "pickle") == str(tmp_path / "side-effect")
    assert [str(tmp_path / "side-effect")] == SIDE_EFFECTS
    assert (tmp_path / "side-effect").exists()


def test_a_pickle_signed_with_another_key_is_refused_and_never_loaded(tmp_path: Path) -> None:
    payload, marker = _booby_payload(tmp_path)
    forged = hmac.new(os.urandom(32), payload, hashlib.sha256).digest() + payload
    codec = Codec(tmp_path / "db.key")
    codec.dumps(0, "pickle", "something")  # the database has its own key
    SIDE_EFFECTS.clear()
    with pytest.raises(TamperedResult, match="signature"):
        codec.loads(forged, "pickle")
    assert SIDE_EFFECTS == []
    assert not marker.exists()


def test_a_pickle_from_another_database_is_refused(tmp_path: Path) -> None:
    payload, marker = _booby_payload(tmp_path)
    theirs, ours = Codec(tmp_path / "theirs.key"), Codec(tmp_path / "ours.key")
    data = theirs.dumps(Booby(str(marker)), "pickle", "booby")
    assert data[32:] == payload
    SIDE_EFFECTS.clear()
    with pytest.raises(TamperedResult):
        ours.loads(data, "pickle")
    assert SIDE_EFFECTS == [] and not marker.exists()


@SETTINGS
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_flipping_any_byte_of_a_signed_pickle_is_refused(
    key_dir: Path, position: int, flip: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        payload, marker = _booby_payload(Path(folder))
        codec = Codec(key_dir / "flip.key")
        signed = codec.dumps(Booby(str(marker)), "pickle", "booby")
        assert signed[32:] == payload
        data = bytearray(signed)
        data[position % len(data)] ^= flip  # in the signature or in the payload
        SIDE_EFFECTS.clear()
        with pytest.raises(TamperedResult):
            codec.loads(bytes(data), "pickle")
        assert SIDE_EFFECTS == [] and not marker.exists()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-1],  # truncated payload
        lambda d: d + b".",  # extended payload
        lambda d: d[32:],  # signature stripped
        lambda d: d[:31],  # shorter than a signature
        lambda d: b"",
        lambda d: bytes(32) + d[32:],  # zeroed signature
    ],
    ids=["truncated", "extended", "unsigned", "short", "empty", "zero-signature"],
)
def test_a_mangled_signed_pickle_is_refused(tmp_path: Path, mangle: Any) -> None:
    payload, marker = _booby_payload(tmp_path)
    codec = Codec(tmp_path / "db.key")
    signed = codec.dumps(Booby(str(marker)), "pickle", "booby")
    assert signed[32:] == payload
    SIDE_EFFECTS.clear()
    with pytest.raises(TamperedResult):
        codec.loads(mangle(signed), "pickle")
    assert SIDE_EFFECTS == [] and not marker.exists()


def test_a_tampered_result_in_the_database_is_refused(journal: Journal, tmp_path: Path) -> None:
    """Through the journal: a stored pickle changed in the database is not loaded."""
    marker = tmp_path / "side-effect"
    stored = journal.store(Booby(str(marker)), "pickle", "booby", inline=False)
    assert stored.op is not None and stored.result_id is not None
    journal.flush([stored.op])
    data = bytearray(journal.result_bytes(stored.result_id)[0])
    data[-2] ^= 0x01
    journal.flush([Op("UPDATE results SET data = ? WHERE id = ?", (bytes(data), stored.result_id))])
    SIDE_EFFECTS.clear()
    with pytest.raises(TamperedResult):
        journal.load_result(stored.result_id)
    assert SIDE_EFFECTS == [] and not marker.exists()


# -- the key file ------------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0, so that only the mode the code asks for protects the file."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_the_key_file_is_created_private(tmp_path: Path, permissive_umask: None) -> None:
    key_path = tmp_path / "db.key"
    Codec(key_path).dumps({"a": 1}, "pickle", "pickle needs the key")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["db.key"]  # nothing left beside it
    key = key_path.read_bytes()
    assert len(key) == 32
    # Reused, not replaced, by the next codec (the next process).
    Codec(key_path).dumps(2, "pickle", "again")
    assert key_path.read_bytes() == key


def test_the_journal_key_file_is_private(
    db: Path, journal: Journal, permissive_umask: None
) -> None:
    journal.store([1, 2], "pickle", "value", inline=True)
    key_path = db.with_name(db.name + ".key")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


# -- values JSON cannot hold -------------------------------------------------------


@SETTINGS
@given(
    what=st.text(min_size=1, max_size=30),
    wrap=st.sampled_from(
        [
            lambda x: x,
            lambda x: [1, x],
            lambda x: {"k": (x,)},
            lambda x: {1: {"deep": [x]}},
        ]
    ),
)
def test_a_value_json_cannot_hold_names_what_and_the_way_out(
    key_dir: Path, what: str, wrap: Any
) -> None:
    value = wrap(object())
    with pytest.raises(SerializationError) as info:
        Codec(key_dir / "unused.key").dumps(value, "json", what)
    message = str(info.value)
    assert what in message
    assert 'result_serializer="pickle"' in message
    assert isinstance(info.value, TypeError)  # what callers catching TypeError expect


def test_the_journal_store_refuses_what_json_cannot_hold(journal: Journal) -> None:
    with pytest.raises(
        SerializationError, match=r"result of task 'grab'.*result_serializer=\"pickle\""
    ):
        journal.store(object(), "json", "result of task 'grab'")
    # While pickle takes it.
    journal.store(object(), "pickle", "result of task 'grab'")


def test_an_unknown_serializer_is_refused(tmp_path: Path) -> None:
    codec = Codec(tmp_path / "db.key")
    with pytest.raises(SerializationError, match="yaml"):
        codec.dumps(1, "yaml", "value")
    with pytest.raises(SerializationError, match="yaml"):
        codec.loads(b"1", "yaml")


# -- regressions: fixed findings ---------------------------------------------------


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_a_key_file_of_the_wrong_size_is_refused_not_used(tmp_path: Path, size: int) -> None:
    key_path = tmp_path / "db.key"
    key_path.write_bytes(b"k" * size)  # e.g. a crash between creating the key file and writing it
    payload, marker = _booby_payload(tmp_path)
    forged = hmac.new(b"k" * size, payload, hashlib.sha256).digest() + payload
    SIDE_EFFECTS.clear()
    with pytest.raises(SerializationError, match=str(key_path)):
        Codec(key_path).loads(forged, "pickle")
    with pytest.raises(SerializationError):
        Codec(key_path).dumps(1, "pickle", "value")
    assert SIDE_EFFECTS == [] and not marker.exists()
    assert key_path.read_bytes() == b"k" * size  # left for the user to look at


def test_a_self_referencing_value_raises_serialization_error(tmp_path: Path) -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(SerializationError, match="the loop"):
        Codec(tmp_path / "db.key").dumps({"x": looped}, "json", "the loop")


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2021, 11, 7, 1, 30, fold=0, tzinfo=ZoneInfo("America/New_York")),
        dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
        dt.datetime(1900, 1, 1, tzinfo=ZoneInfo("Europe/Amsterdam")),  # a seconds offset (LMT)
        pathlib.PureWindowsPath(r"C:\data\in.csv"),
        pathlib.PurePosixPath("/data/in.csv"),
    ],
    ids=["ambiguous-first", "ambiguous-second", "lmt", "windows-path", "posix-path"],
)
def test_a_value_that_once_lost_its_type_round_trips(value: Any) -> None:
    assert same(from_json(to_json(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        # A wall time that a DST change skips: it used to come back an hour on.
        dt.datetime(2021, 3, 14, 2, 30, tzinfo=ZoneInfo("America/New_York")),
        # The first and last days of the range: stored, then OverflowError on loading.
        dt.datetime(1, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")),
        dt.datetime(9999, 12, 31, 23, 59, tzinfo=ZoneInfo("America/New_York")),
        # A time in a zone: it used to come back naive.
        dt.time(9, 30, tzinfo=ZoneInfo("Europe/Paris")),
    ],
    ids=["dst-gap", "first-day", "last-day", "zoned-time"],
)
def test_a_zoned_value_that_once_failed_round_trips(value: Any) -> None:
    assert same(from_json(to_json(value)), value)


def test_threads_creating_the_key_at_once_agree_on_it(tmp_path: Path) -> None:
    """They used to share one temporary file: errors, or payloads signed with a lost key."""
    for trial in range(100):
        key_path = tmp_path / f"{trial}.key"
        codecs = [Codec(key_path) for _ in range(4)]
        barrier = threading.Barrier(len(codecs))
        signed: list[bytes | BaseException] = [b""] * len(codecs)

        def first_use(
            i: int, barrier: threading.Barrier = barrier, signed: Any = signed, codecs: Any = codecs
        ) -> None:
            barrier.wait(timeout=10)
            try:
                signed[i] = codecs[i].dumps("same", "pickle", "value")
            except BaseException as exc:
                signed[i] = exc

        threads = [threading.Thread(target=first_use, args=(i,)) for i in range(len(codecs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert [s for s in signed if isinstance(s, BaseException)] == [], f"trial {trial}"
        # One key for all, the one on disk: every payload loads in a new process.
        for data in signed:
            assert Codec(key_path).loads(data, "pickle") == "same", f"trial {trial}"


# -- a reproduction of an open finding (see the report) ----------------------------

Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "value",
    [
        Point(1, 2),
        collections.OrderedDict(a=1),
        collections.defaultdict(int, a=1),
        collections.Counter("aab"),
    ],
    ids=["namedtuple", "OrderedDict", "defaultdict", "Counter"],
)
def test_a_container_subclass_is_kept_or_refused(tmp_path: Path, value: Any) -> None:
    """A replayed task must return what it returned: the same type, or a refusal up front."""
    codec = Codec(tmp_path / "db.key")
    try:
        data = codec.dumps(value, "json", "the value")
    except SerializationError:
        return  # refused when stored: the user is told to use pickle
    assert same(codec.loads(data, "json"), value)
