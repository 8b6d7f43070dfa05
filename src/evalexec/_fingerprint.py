"""Fingerprints of inputs: a SHA-256 that is equal only for equal values.

`fingerprint(value)` hashes a canonical, unambiguous encoding of `value`, the same in
every process and under every hash seed. The rule it keeps: *equal fingerprints mean
equal inputs* for every type it accepts (two different inputs never share one, barring
a SHA-256 collision). Equal inputs usually share a fingerprint too (dicts and sets
whatever their order), but not always (``1`` and ``1.0`` and ``True`` differ): a
mismatch only means an input is run again, never that a wrong result is restored.

Accepted, each encoded by everything that makes it what it is:

- ``None``, bools, ints, floats (bit-exact), complex, str, bytes, bytearray, lists,
  tuples (named tuples by type and items), dicts (order ignored, as in ``==``;
  ``OrderedDict`` in order), sets, frozensets, ranges, ``datetime`` dates, times,
  datetimes (with fold and time zone) and timedeltas, ``Decimal``, ``Fraction``,
  ``UUID``, pathlib paths, ``types.SimpleNamespace``; subclasses of the built-in types
  by type, built-in value and instance ``__dict__``;
- enums (type, name, value), dataclasses (every field, plus attributes set outside
  them), attrs classes (every attribute), pydantic v2 models (type, every field
  including those hidden from repr or dumps, extra fields, private attributes);
- numpy arrays (dtype, shape, bytes; object arrays by their items) and scalars;
  pandas Series, DataFrames, Index objects (MultiIndex too) and extension arrays, by
  dtype, order, every label (duplicates included) and names.

Anything else raises `Unfingerprintable`: a type we cannot see into (its repr may hide
state, or hold a memory address) and values that contain themselves (reference cycles).

Cost: linear in the size of the value. Each container is hashed once per fingerprint,
however often it is referred to (sub-objects are remembered by ``id`` for the duration
of one call), and nesting depth is not limited by the recursion limit (the walk keeps
its own stack). numpy and pandas are recognised by their module names and never
imported here, nor are pydantic or attrs.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import hashlib
import pathlib
import struct
import sys
import types
import uuid
from collections import OrderedDict
from typing import Any

__all__ = ["Unfingerprintable", "fingerprint", "key_fingerprint"]

# Bumped whenever an encoding below changes, so old fingerprints simply stop matching.
# The two prefixes keep the fingerprint of an input and that of a key apart.
_VERSION = b"evalexec-fingerprint-1\x00"
_KEY_VERSION = b"evalexec-input-key-1\x00"

# Strings and bytes longer than this are hashed on their own (and remembered by id), so
# one long text referred to many times is hashed once.
_INLINE_LIMIT = 256

_ABSENT = object()  # a declared field that was never set (``field(init=False)``, say)

_pack_length = struct.Struct(">Q").pack
_pack_float = struct.Struct(">d").pack
_pack_complex = struct.Struct(">dd").pack

# Frame modes: how the encodings of a container's children are combined.
_ORDERED = 0  # a sequence: in order
_UNORDERED = 1  # a set: sorted, so iteration order does not matter
_PAIRS = 2  # a mapping: children alternate key, value; pairs sorted
_ORDERED_PAIRS = 3  # an ordered mapping: children alternate key, value; in order


class Unfingerprintable(Exception):
    """`value` holds something that cannot be fingerprinted soundly.

    ``type_path`` names the offending type (``module.QualName``); ``cycle`` is true
    when the problem is a value that contains itself rather than an unknown type.
    """

    def __init__(self, type_path: str, *, cycle: bool = False) -> None:
        what = "a reference cycle through" if cycle else "a value of type"
        super().__init__(f"{what} {type_path}")
        self.type_path = type_path
        self.cycle = cycle


def fingerprint(value: object) -> str:
    """The hex SHA-256 fingerprint of `value` (see the module docstring)."""
    return hashlib.sha256(_VERSION + _Encoder().encode(value)).hexdigest()


def key_fingerprint(key: object) -> str:
    """The fingerprint of an input given by a user's key for it: the same encoding as
    `fingerprint`, but never equal to the fingerprint of any input itself."""
    return hashlib.sha256(_KEY_VERSION + _Encoder().encode(key)).hexdigest()


def type_path(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _blob(data: bytes) -> bytes:
    return _pack_length(len(data)) + data


def _text(tag: bytes, data: bytes) -> bytes:
    """A string-like leaf: inline when short, by its own digest when long."""
    if len(data) <= _INLINE_LIMIT:
        return tag + _blob(data)
    return tag.upper() + hashlib.sha256(data).digest()


def _int(value: int) -> bytes:
    return b"i" + _blob(value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def _header(tag: bytes, *fields: str | bytes) -> bytes:
    return tag + b"".join(_blob(f.encode() if isinstance(f, str) else f) for f in fields)


class _Frame:
    """A container being encoded: its header, its children and their encodings so far."""

    __slots__ = ("children", "header", "mode", "oid", "parts", "position", "value")

    def __init__(self, header: bytes, children: list[Any], mode: int = _ORDERED) -> None:
        self.header = header
        self.children = children
        self.mode = mode
        self.parts: list[bytes] = []
        self.position = 0
        self.value: object = None
        self.oid = 0

    def finish(self) -> bytes:
        parts = self.parts
        if self.mode == _UNORDERED:
            parts = sorted(parts)
        elif self.mode in (_PAIRS, _ORDERED_PAIRS):
            pairs = [parts[i] + parts[i + 1] for i in range(0, len(parts), 2)]
            parts = sorted(pairs) if self.mode == _PAIRS else pairs
        digest = hashlib.sha256(self.header + _pack_length(len(parts)) + b"".join(parts))
        return b"H" + digest.digest()


_Node = bytes | _Frame


class _Encoder:
    """One fingerprint's walk. `memo` maps the id of every object already encoded to its
    encoding; `keep` holds those objects (some are temporaries, such as a DataFrame's
    column arrays) so that no id in `memo` can be reused by a new object meanwhile."""

    def __init__(self) -> None:
        self.memo: dict[int, bytes] = {}
        self.keep: list[object] = []
        self.active: set[int] = set()  # ids of the containers on the stack (cycles)

    def encode(self, root: object) -> bytes:
        node = self.node(root)
        if isinstance(node, bytes):
            return node
        self.push(node, root)
        stack = [node]
        while True:
            frame = stack[-1]
            if frame.position < len(frame.children):
                child = frame.children[frame.position]
                frame.position += 1
                known = self.memo.get(id(child))
                if known is not None:
                    frame.parts.append(known)
                    continue
                node = self.node(child)
                if isinstance(node, bytes):
                    frame.parts.append(node)
                    continue
                self.push(node, child)
                stack.append(node)
                continue
            stack.pop()
            self.active.discard(frame.oid)
            encoded = frame.finish()
            self.memo[frame.oid] = encoded
            self.keep.append(frame.value)
            if not stack:
                return encoded
            stack[-1].parts.append(encoded)

    def push(self, frame: _Frame, value: object) -> None:
        oid = id(value)
        if oid in self.active:
            raise Unfingerprintable(type_path(value), cycle=True)
        self.active.add(oid)
        frame.value = value
        frame.oid = oid

    def remember(self, value: object, encoded: bytes) -> bytes:
        self.memo[id(value)] = encoded
        self.keep.append(value)
        return encoded

    # -- one value: a leaf encoding, or a frame whose children are still to encode ------
    def node(self, value: Any) -> _Node:
        cls = type(value)
        if cls is str:
            return self.string(value)
        if value is None:
            return b"N"
        if cls is bool:
            return b"T" if value else b"F"
        if cls is int:
            return _int(value)
        if cls is float:
            return b"f" + _pack_float(value)
        if cls is dict:
            return _Frame(b"D", _flat_items(value), _PAIRS)
        if cls is list:
            return _Frame(b"L", list(value))
        if cls is tuple:
            return _Frame(b"U", list(value))
        if cls is set or cls is frozenset:
            tag = b"E" if cls is set else b"Z"
            return _Frame(tag, list(value), _UNORDERED)
        if cls is bytes or cls is bytearray:
            data = bytes(value)
            encoded = _text(b"b" if cls is bytes else b"y", data)
            return self.remember(value, encoded) if len(data) > _INLINE_LIMIT else encoded
        if cls is complex:
            return b"c" + _pack_complex(value.real, value.imag)
        module = cls.__module__.partition(".")[0]
        if module == "numpy":
            return self.numpy(value)
        if module == "pandas":
            return self.pandas(value)
        return self.other(value, cls)

    def string(self, value: str) -> bytes:
        data = value.encode("utf-8", "surrogatepass")
        if len(data) <= _INLINE_LIMIT:
            return b"s" + _blob(data)
        return self.remember(value, _text(b"s", data))

    def other(self, value: Any, cls: type) -> _Node:
        if value is _ABSENT:
            return b"0"
        if isinstance(value, enum.Enum):
            return _Frame(_header(b"M", type_path(value), value.name or ""), [value.value])
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = [field.name for field in dataclasses.fields(value)]
            return self.fields(b"C", value, names)
        attrs_fields = getattr(cls, "__attrs_attrs__", None)
        if attrs_fields is not None and not isinstance(value, type):
            return self.fields(b"R", value, [field.name for field in attrs_fields])
        if _is_pydantic_model(cls):
            state = [
                dict(vars(value)),
                getattr(value, "__pydantic_extra__", None),
                getattr(value, "__pydantic_private__", None),
            ]
            return _Frame(_header(b"P", type_path(value)), state)
        if cls in _STDLIB_LEAVES:
            leaf: bytes = _STDLIB_LEAVES[cls](value)
            return leaf
        if cls in _DATETIMES:
            return _Frame(_header(b"W", cls.__qualname__), _datetime_parts(value))
        if cls is OrderedDict:
            return _Frame(b"O", _flat_items(value), _ORDERED_PAIRS)
        if cls is types.SimpleNamespace:
            return _Frame(b"V", _flat_items(vars(value)), _PAIRS)
        if isinstance(value, pathlib.PurePath) and cls.__module__.startswith("pathlib"):
            return _header(b"p", cls.__qualname__, str(value))
        return self.subclass(value, cls)

    def fields(self, tag: bytes, value: Any, names: list[str]) -> _Frame:
        """An object by its declared fields, in order, then any other instance attributes."""
        items: list[Any] = []
        for name in names:
            items += (name, getattr(value, name, _ABSENT))
        extra = getattr(value, "__dict__", None)
        if extra:
            declared = set(names)
            for name in sorted(k for k in extra if k not in declared):
                items += (name, extra[name])
        return _Frame(_header(tag, type_path(value)), items, _ORDERED_PAIRS)

    def subclass(self, value: Any, cls: type) -> _Frame:
        """A subclass of a built-in type: its type, its built-in value, its attributes."""
        for base, tag, plain in _BUILTIN_BASES:
            if isinstance(value, base):
                state = getattr(value, "__dict__", None)
                extra = dict(state) if state else None
                return _Frame(_header(b"X", tag, type_path(value)), [plain(value), extra])
        raise Unfingerprintable(type_path(value))

    # -- numpy ---------------------------------------------------------------------------
    def numpy(self, value: Any) -> _Node:
        np = sys.modules["numpy"]
        if type(value) is np.ndarray:
            dtype = value.dtype
            shape = ",".join(map(str, value.shape))
            header = _header(b"A", dtype.str, str(dtype), shape)
            if dtype.hasobject:
                return _Frame(header, value.ravel(order="C").tolist())
            data = np.ascontiguousarray(value).tobytes()
            return self.remember(value, b"A" + hashlib.sha256(header + data).digest())
        if isinstance(value, np.generic) and not value.dtype.hasobject:
            return _header(b"g", value.dtype.str, str(value.dtype), value.tobytes())
        raise Unfingerprintable(type_path(value))

    # -- pandas --------------------------------------------------------------------------
    def pandas(self, value: Any) -> _Node:
        pd = sys.modules["pandas"]
        cls = type(value)
        if cls is pd.Series:
            return _Frame(b"Q", [value.name, value.index, value.array, dict(value.attrs)])
        if cls is pd.DataFrame:
            columns = [value.iloc[:, j].array for j in range(value.shape[1])]
            return _Frame(b"K", [value.columns, value.index, dict(value.attrs), *columns])
        if isinstance(value, pd.MultiIndex):
            levels = [value.get_level_values(i) for i in range(value.nlevels)]
            return _Frame(_header(b"J", type_path(value)), [list(value.names), *levels])
        if isinstance(value, pd.Index) and cls.__module__.startswith("pandas"):
            return _Frame(_header(b"I", type_path(value)), [value.name, value.array])
        if isinstance(value, pd.api.extensions.ExtensionArray):
            return _extension_array(value, pd)
        if cls is pd.Timestamp:
            return _Frame(b"t", [value.asm8, _tz(value.tz, value)])
        if cls is pd.Timedelta:
            return _Frame(b"d", [value.asm8])
        if value is pd.NA or value is pd.NaT:
            return _header(b"1", type_path(value))
        raise Unfingerprintable(type_path(value))


def _extension_array(value: Any, pd: Any) -> _Frame:
    dtype = value.dtype
    header = _header(b"G", type_path(value), type_path(dtype), str(dtype))
    if type(value).__name__ == "NumpyExtensionArray":
        return _Frame(header, [value.to_numpy()])
    if isinstance(value, pd.Categorical):
        return _Frame(header, [value.categories, value.codes, bool(value.ordered)])
    return _Frame(header, [value.to_numpy(dtype=object)])


def _is_pydantic_model(cls: type) -> bool:
    return any(
        base.__name__ == "BaseModel" and base.__module__ == "pydantic.main" for base in cls.__mro__
    )


def _flat_items(mapping: Any) -> list[Any]:
    items: list[Any] = []
    for key, item in mapping.items():
        items += (key, item)
    return items


def _tz(tz: object, owner: object) -> object:
    """A time zone as a built-in value, or `Unfingerprintable` naming the owner's type."""
    if tz is None:
        return None
    if type(tz) is datetime.timezone:
        return ("timezone", tz.utcoffset(None), tz.tzname(None))
    module = type(tz).__module__
    key = getattr(tz, "key", None) if module == "zoneinfo" else getattr(tz, "zone", None)
    if module in ("zoneinfo", "pytz", "pytz.tzinfo") and isinstance(key, str):
        return (module.partition(".")[0], key)
    raise Unfingerprintable(f"{type_path(owner)} with time zone {type_path(tz)}")


def _datetime_parts(value: Any) -> list[Any]:
    if isinstance(value, datetime.timedelta):
        return [value.days, value.seconds, value.microseconds]
    if type(value) is datetime.date:
        return [value.toordinal()]
    naive = value.replace(tzinfo=None, fold=0).isoformat()
    return [naive, value.fold, _tz(value.tzinfo, value)]


_DATETIMES = frozenset({datetime.date, datetime.datetime, datetime.time, datetime.timedelta})

_STDLIB_LEAVES: dict[type, Any] = {
    decimal.Decimal: lambda v: _header(b"m", str(v)),
    fractions.Fraction: lambda v: _header(b"r", str(v.numerator), str(v.denominator)),
    uuid.UUID: lambda v: _header(b"u", v.bytes),
    range: lambda v: _header(b"n", str(v.start), str(v.stop), str(v.step)),
}

# Subclasses of these are encoded by type, the plain built-in value and `__dict__`.
_BUILTIN_BASES: tuple[tuple[type, bytes, Any], ...] = (
    (str, b"s", str.__str__),
    (int, b"i", int.__int__),
    (float, b"f", float.__float__),
    (bytes, b"b", bytes.__bytes__),
    (tuple, b"U", tuple),
    (list, b"L", list),
    (dict, b"D", dict),
    (frozenset, b"Z", frozenset),
    (set, b"E", set),
)
