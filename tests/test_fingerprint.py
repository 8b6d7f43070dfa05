"""Fingerprints of inputs: different inputs never share one; the walk is linear and flat."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import os
import subprocess
import sys
import uuid
import zoneinfo
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import pytest

from evalexec._fingerprint import Unfingerprintable, fingerprint, key_fingerprint

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")


def differ(one: object, other: object) -> None:
    """`one` and `other` get different fingerprints, and each keeps its own on a copy."""
    assert fingerprint(one) != fingerprint(other)
    assert fingerprint(one) == fingerprint(copy.deepcopy(one))
    assert fingerprint(other) == fingerprint(copy.deepcopy(other))


# -- built-in values ------------------------------------------------------------------------


def test_dicts_and_sets_get_the_same_fingerprint_whatever_their_order() -> None:
    one = {"question": "q", "context": {"a": 1, "b": [1, 2]}, "tags": {"x", "y", "z"}}
    other = {"tags": {"z", "y", "x"}, "context": {"b": [1, 2], "a": 1}, "question": "q"}
    assert fingerprint(one) == fingerprint(other)


def test_values_that_json_or_equality_would_merge_get_different_fingerprints() -> None:
    values: list[object] = [
        *(1, 1.0, True, "1", b"1", bytearray(b"1"), 1 + 0j, decimal.Decimal(1)),
        *((1,), [1], {1}, frozenset({1}), {1: "a"}, {"1": "a"}, {True: "a"}, None),
        *(0.0, -0.0, "", b"", (), [], {}, ((),), [[]], ("a", "b"), ("ab",), ["a", "b"]),
    ]
    assert len({fingerprint(v) for v in values}) == len(values)


def test_subclasses_of_built_in_types_are_told_apart_from_the_plain_values() -> None:
    class Label(str):
        pass

    Point = namedtuple("Point", "x y")  # a plain namedtuple is the case
    differ("relevant", Label("relevant"))
    differ((1, 2), Point(1, 2))
    differ({"a": 1, "b": 2}, OrderedDict(a=1, b=2))
    differ(OrderedDict(a=1, b=2), OrderedDict(b=2, a=1))  # order is part of its equality


def test_standard_library_values_are_fingerprinted_by_what_they_are() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    moment = datetime.datetime(2024, 10, 27, 2, 30)
    differ(moment.replace(tzinfo=paris), moment.replace(tzinfo=paris, fold=1))
    differ(moment, moment.replace(tzinfo=datetime.UTC))
    differ(datetime.date(2024, 1, 2), datetime.date(2024, 2, 1))
    differ(datetime.timedelta(days=1), datetime.timedelta(seconds=86399))
    differ(decimal.Decimal("1.0"), decimal.Decimal("1.00"))
    differ(uuid.UUID(int=1), uuid.UUID(int=2))
    differ(PurePosixPath("a/b"), PureWindowsPath("a/b"))


def test_long_strings_referred_to_twice_fingerprint_like_two_equal_copies() -> None:
    text = "the context " * 100
    assert fingerprint([text, text]) == fingerprint([text, "".join(["the context "] * 100)])
    assert fingerprint([text, text]) != fingerprint([text, text + "!"])


class Colour(enum.Enum):
    RED = 1


class Shade(enum.Enum):
    RED = 1


def test_enums_are_fingerprinted_by_class_and_member() -> None:
    differ(Colour.RED, Shade.RED)
    differ(Colour.RED, 1)


_FINGERPRINT_SCRIPT = """
from evalexec._fingerprint import fingerprint
print(fingerprint({"tags": {"alpha", "beta", "gamma"}, "n": 12, "q": "what?", "x": (1.5, None)}))
"""


def test_fingerprints_are_the_same_in_every_process_whatever_the_hash_seed() -> None:
    prints = set()
    for seed in ("1", "2", "3"):
        result = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        prints.add(result.stdout.strip())
    [printed] = prints
    assert printed == fingerprint(
        {"x": (1.5, None), "q": "what?", "n": 12, "tags": {"beta", "gamma", "alpha"}}
    )


# -- size and depth ---------------------------------------------------------------------------


def test_nesting_far_beyond_the_recursion_limit_is_fingerprinted_to_the_bottom() -> None:
    def nested(leaf: int) -> list[Any]:
        value: list[Any] = [leaf]
        for _ in range(20 * sys.getrecursionlimit()):
            value = [value]
        return value

    assert fingerprint(nested(0)) != fingerprint(nested(1))
    assert fingerprint(nested(0)) == fingerprint(nested(0))


@dataclasses.dataclass
class Counted:
    """A leaf that counts how often its field is read."""

    reads: list[int]
    value: int

    def __getattribute__(self, name: str) -> Any:
        if name == "value":
            object.__getattribute__(self, "reads").append(1)
        return object.__getattribute__(self, name)


def test_a_sub_object_referred_to_many_times_is_read_once() -> None:
    reads: list[int] = []
    shared: object = Counted(reads, 7)
    for _ in range(24):  # 2**24 paths from the top to the leaf
        shared = {"left": shared, "right": [shared, shared]}
    fingerprint(shared)
    assert reads == [1]


def test_deep_structures_that_share_their_parts_compare_by_value() -> None:
    def lattice(leaf: str, depth: int) -> object:
        value: object = leaf
        for level in range(depth):
            value = {"level": level, "a": value, "b": (value, value)}
        return value

    assert fingerprint(lattice("x", 300)) == fingerprint(lattice("x", 300))
    assert fingerprint(lattice("x", 300)) != fingerprint(lattice("y", 300))


def test_a_value_that_contains_itself_is_refused_naming_its_type() -> None:
    cyclic: list[object] = [1]
    cyclic.append({"back": cyclic})
    with pytest.raises(Unfingerprintable) as raised:
        fingerprint(cyclic)
    assert str(raised.value) == "a reference cycle through builtins.list"
    assert raised.value.cycle


# -- classes ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    question: str
    secret: str = dataclasses.field(repr=False, default="")
    tags: set[str] = dataclasses.field(default_factory=set)


def test_dataclasses_are_fingerprinted_by_every_field_shown_or_not() -> None:
    assert repr(Row("q", "s1")) == repr(Row("q", "s2"))
    differ(Row("q", "s1"), Row("q", "s2"))
    assert fingerprint(Row("q", tags={"a", "b"})) == fingerprint(Row("q", tags={"b", "a"}))
    extra = Row("q")
    extra.note = "set outside the fields"  # type: ignore[attr-defined]  # the case tested
    differ(Row("q"), extra)


def test_attrs_classes_are_fingerprinted_by_every_attribute_shown_or_not() -> None:
    attr = pytest.importorskip("attr")

    @attr.define
    class Judged:
        question: str
        context: str = attr.field(repr=False, eq=False)

    assert repr(Judged("q", "c1")) == repr(Judged("q", "c2"))
    differ(Judged("q", "c1"), Judged("q", "c2"))


def test_pydantic_models_are_fingerprinted_by_every_field_hidden_or_not() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Sample(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        question: str
        context: str = pydantic.Field(repr=False, default="")
        reference: str = pydantic.Field(exclude=True, default="")
        _cache: str = pydantic.PrivateAttr(default="")

    assert repr(Sample(question="q", context="a")) == repr(Sample(question="q", context="b"))
    differ(Sample(question="q", context="a"), Sample(question="q", context="b"))
    differ(Sample(question="q", reference="a"), Sample(question="q", reference="b"))
    differ(Sample(question="q"), Sample(question="q", note="extra"))
    cached = Sample(question="q")
    cached._cache = "warm"
    differ(Sample(question="q"), cached)


class Opaque:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return "Opaque()"


class HomeMadeZone(datetime.tzinfo):
    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(hours=1)


def _numbers() -> Any:
    yield 1


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Opaque("s"), "tests.test_fingerprint.Opaque"),
        (object(), "builtins.object"),
        (len, "builtins.builtin_function_or_method"),
        (_numbers(), "builtins.generator"),
        ({"rows": [1, Opaque("s")]}, "tests.test_fingerprint.Opaque"),
        (
            datetime.datetime(2024, 1, 1, tzinfo=HomeMadeZone()),
            "datetime.datetime with time zone tests.test_fingerprint.HomeMadeZone",
        ),
    ],
    ids=["plain-class", "object", "builtin", "generator", "nested", "time-zone"],
)
def test_values_of_other_types_are_refused_naming_the_type(value: object, type_name: str) -> None:
    with pytest.raises(Unfingerprintable) as raised:
        fingerprint(value)
    assert str(raised.value) == f"a value of type {type_name}"
    assert raised.value.type_path == type_name


# -- numpy and pandas -------------------------------------------------------------------------


def test_numpy_arrays_are_fingerprinted_by_dtype_shape_and_every_byte() -> None:
    array = np.zeros(5000)
    changed = array.copy()
    changed[2500] = 1.0
    assert repr(array) == repr(changed)
    differ(array, changed)
    differ(np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int64))
    differ(np.arange(4).reshape(2, 2), np.arange(4).reshape(1, 4))
    differ(np.array(["a", None], dtype=object), np.array(["a", "None"], dtype=object))
    strided = np.arange(10)[::2]
    assert fingerprint(strided) == fingerprint(np.ascontiguousarray(strided))
    differ(np.float64(1.5), 1.5)


def _long_index(changed: bool) -> Any:
    values = list(range(1000))
    if changed:
        values[500] = -1
    return pd.Index(values)


PANDAS_PAIRS: dict[str, Callable[[], tuple[object, object]]] = {
    "series-duplicate-labels": lambda: (
        pd.Series([1, 2], index=["a", "a"]),
        pd.Series([2], index=["a"]),
    ),
    "series-name": lambda: (pd.Series([1], name="x"), pd.Series([1], name="y")),
    "series-dtype": lambda: (pd.Series([1, 2]), pd.Series([1, 2], dtype="Int64")),
    "series-long-text": lambda: (
        pd.Series({"question": "q", "context": "the context " * 20 + "A"}),
        pd.Series({"question": "q", "context": "the context " * 20 + "B"}),
    ),
    "frame-column-order": lambda: (
        pd.DataFrame({"a": [1, 2], "b": [3, 4]}),
        pd.DataFrame({"b": [3, 4], "a": [1, 2]}),
    ),
    "frame-row-order": lambda: (
        pd.DataFrame({"a": [1, 2]}, index=["x", "y"]),
        pd.DataFrame({"a": [2, 1]}, index=["y", "x"]),
    ),
    "frame-duplicate-columns": lambda: (
        pd.DataFrame([[1, 2]], columns=["a", "a"]),
        pd.DataFrame([[2, 2]], columns=["a", "a"]),
    ),
    "frame-index-name": lambda: (
        pd.DataFrame({"a": [1]}, index=pd.Index([0], name="i")),
        pd.DataFrame({"a": [1]}, index=pd.Index([0], name="j")),
    ),
    "index": lambda: (_long_index(False), _long_index(True)),
    "extension-array": lambda: (
        pd.array(list(range(1000)), dtype="Int64"),
        pd.array([*range(500), None, *range(501, 1000)], dtype="Int64"),
    ),
    "categories": lambda: (
        pd.Categorical(["a"], categories=["a", "b"]),
        pd.Categorical(["a"], categories=["a"]),
    ),
    "multi-index-names": lambda: (
        pd.MultiIndex.from_tuples([(1, "a")], names=["x", "y"]),
        pd.MultiIndex.from_tuples([(1, "a")], names=["y", "x"]),
    ),
    "time-zone": lambda: (
        pd.Series(pd.date_range("2024-01-01", periods=3, tz="UTC")),
        pd.Series(pd.date_range("2024-01-01", periods=3, tz="Europe/Paris")),
    ),
    "missing-values": lambda: (
        pd.Series(["a", None], dtype=object),
        pd.Series(["a", "None"], dtype=object),
    ),
}


@pytest.mark.parametrize("case", PANDAS_PAIRS, ids=list(PANDAS_PAIRS))
def test_pandas_objects_are_fingerprinted_exactly(case: str) -> None:
    one, other = PANDAS_PAIRS[case]()
    differ(one, other)


def test_a_dataframe_and_its_rows_fingerprint_the_same_in_every_call() -> None:
    frame = pd.DataFrame({"question": ["q1", "q2"], "score": [0.5, 1.5], "n": [1, 2]})
    assert fingerprint(frame) == fingerprint(frame.copy()) == fingerprint(frame)
    rows = [row for _, row in frame.iterrows()]
    assert fingerprint(rows[0]) != fingerprint(rows[1])
    assert fingerprint(rows[0]) == fingerprint(next(frame.iterrows())[1])


def test_a_key_never_fingerprints_like_an_input() -> None:
    assert key_fingerprint("row 1") != fingerprint("row 1")
    assert key_fingerprint("row 1") == key_fingerprint("row 1")
    assert key_fingerprint(("row", 1)) != key_fingerprint(("row", 2))


@dataclasses.dataclass
class Lazy:
    question: str
    answer: str = dataclasses.field(init=False)


def test_a_field_that_was_never_set_differs_from_every_value() -> None:
    unset = Lazy("q")
    empty = Lazy("q")
    empty.answer = ""
    differ(unset, empty)
