"""A checkpoint file: the finished inputs of a run, kept so that a rerun can skip them.

One SQLite file (standard library ``sqlite3``), one table, one row per finished
input: its index, a fingerprint of the input, its output (pickled), its status, the
exceptions of its failed attempts (type name and message only) and its seconds.
Each row is committed before `Checkpoint.record` returns, in WAL mode, so a process
killed at any moment (``kill -9``) loses at most the inputs that were still in flight,
and the file stays consistent.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import pickle
import sqlite3
import threading
from types import TracebackType
from typing import Any

from evalexec._details import STORED_STATUSES, ExecutionDetails, ExecutionStatus

_STORED_STATUSES = frozenset(status.value for status in STORED_STATUSES)


__all__ = ["Checkpoint", "CheckpointError", "RecordedError"]

logger = logging.getLogger("evalexec")

_APPLICATION_ID = 0x65766578  # "evex": marks a SQLite file as an evalexec checkpoint
_SCHEMA_VERSION = 1
_PICKLE_PROTOCOL = 5

_SCHEMA = """
CREATE TABLE results (
    idx         INTEGER PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    seconds     REAL    NOT NULL,
    exceptions  TEXT    NOT NULL,
    output      BLOB    NOT NULL
)
"""


class CheckpointError(Exception):
    """A checkpoint file cannot be opened, read or written, or an output cannot be stored."""


class RecordedError(Exception):
    """An exception restored from a checkpoint: its type's name and its message.

    Only the name and the message of an exception are stored, never the object, so
    a restored input's ``details.exceptions`` hold these stand-ins. ``str(error)`` is
    the original message; ``type_name`` is the original class, module-qualified
    unless it is a builtin (``"ValueError"``, ``"openai._exceptions.RateLimitError"``).
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, str(self)))

    def __repr__(self) -> str:
        return f"RecordedError({self.type_name!r}, {str(self)!r})"


def _type_name(exc: BaseException) -> str:
    if isinstance(exc, RecordedError):
        return exc.type_name
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the row
        return f"<unprintable {type(exc).__name__}>"


class Checkpoint:
    """The finished inputs of a run, in a SQLite file at ``path`` (created if missing).

    A rerun over the same inputs with the same checkpoint restores every input that
    completed and runs only the others. An input is identified by its position
    (``index``) *and* a fingerprint of its value (see `fingerprint`): when the value at
    an index changed, the stored result is ignored and the input runs again. Inputs
    that FAILED or did not run are not stored, so a rerun tries them again.

    Trust model: outputs are stored with `pickle`, and restoring them unpickles them,
    which can run arbitrary code. A checkpoint is the user's own file, written by
    their own runs: never open a checkpoint that you did not write yourself or that
    comes from someone you do not trust, exactly as you would not unpickle it.

    Durability: every `record` is committed before it returns (WAL journal,
    ``synchronous=NORMAL``), so killing the process at any moment keeps every input
    recorded so far and never corrupts the file. (A power cut or OS crash may lose the
    last few commits, but not the file's consistency.)

    One `Checkpoint` may be used from several threads; one file should be written by
    one run at a time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._index: dict[int, int] | None = None
        self._warned_unloadable = False
        try:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open checkpoint {self.path!r}: {exc}") from exc
        self._connection: sqlite3.Connection | None = connection
        try:
            self._open(connection)
        except BaseException:
            connection.close()
            self._connection = None
            raise

    def _open(self, connection: sqlite3.Connection) -> None:
        try:
            application_id, version, objects = self._identity(connection)
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(
                f"{self.path!r} is not an evalexec checkpoint (not a SQLite database: {exc}); "
                "pass the path of a new file or of a checkpoint written by evalexec"
            ) from exc
        fresh = application_id == 0 and version == 0 and objects == 0
        if not fresh:
            self._check_identity(application_id, version)
        try:
            connection.execute("PRAGMA busy_timeout = 5000")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            if fresh:
                self._create(connection)
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open checkpoint {self.path!r}: {exc}") from exc

    @staticmethod
    def _identity(connection: sqlite3.Connection) -> tuple[int, int, int]:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        objects = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return int(application_id), int(version), int(objects)

    def _check_identity(self, application_id: int, version: int) -> None:
        if application_id != _APPLICATION_ID:
            raise CheckpointError(
                f"{self.path!r} is not an evalexec checkpoint (it is a SQLite database of "
                "another application); pass the path of a new file or of a checkpoint "
                "written by evalexec"
            )
        if version > _SCHEMA_VERSION:
            raise CheckpointError(
                f"checkpoint {self.path!r} was written by a newer evalexec (schema version "
                f"{version}; this evalexec reads up to {_SCHEMA_VERSION}); upgrade evalexec "
                "or use a new checkpoint file"
            )
        if version < 1:
            raise CheckpointError(
                f"{self.path!r} is not a valid evalexec checkpoint (no schema version)"
            )

    def _create(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            application_id, version, objects = self._identity(connection)
            if application_id == 0 and version == 0 and objects == 0:
                connection.execute(_SCHEMA)
                connection.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            else:  # another process created it since we looked
                self._check_identity(application_id, version)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    # -- fingerprints -------------------------------------------------------------------
    @staticmethod
    def fingerprint(item: object) -> str:
        """A SHA-256 (hex) of a canonical form of `item`, the same in every process.

        Built-in values are encoded by structure and type: ``None``, bools, ints,
        floats, strings, bytes, lists, tuples, dicts (whatever the insertion order),
        sets, enums and dataclasses; so are numpy arrays and pandas objects (by their
        contents, not their abbreviated repr). Anything else is encoded by its type
        and `repr`. Limits: an object whose repr holds a memory address
        (``<Foo object at 0x...>``) gets a new fingerprint in every process, so it is
        always run again (safe, but nothing is restored); two different objects with
        the same repr get the same fingerprint, so give such inputs a repr that shows
        everything the generation function depends on, or pass built-in values.
        The fingerprint covers only the input itself: if the generation function
        changed, use a new checkpoint file.
        """
        try:
            canonical = _canonical(item, set())
        except RecursionError:
            canonical = "r" + _type_path(item) + json.dumps(_safe_repr(item))
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()

    # -- reading and writing ---------------------------------------------------------------
    def restore(self, index: int, item: object) -> tuple[object, ExecutionDetails] | None:
        """The stored ``(output, details)`` of input `index`, or None to run it again.

        None unless `index` was stored with the fingerprint of `item` and a completed
        status. An output that cannot be unpickled any more (its class was removed,
        say) is treated as not stored, with one warning.
        """
        with self._lock:
            connection = self._open_connection()
            index_map = self._index
            if index_map is None:
                index_map = self._index = self._load_index(connection)
            stored = index_map.get(index)
        if stored is None:
            return None  # most lookups of a first run end here, without fingerprinting
        fingerprint = self.fingerprint(item)
        if stored != _short(fingerprint):
            return None
        with self._lock:
            connection = self._open_connection()
            try:
                row = connection.execute(
                    "SELECT fingerprint, status, seconds, exceptions, output "
                    "FROM results WHERE idx = ?",
                    (index,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise CheckpointError(
                    f"cannot read input {index} from checkpoint {self.path!r}: {exc}"
                ) from exc
        if row is None or row[0] != fingerprint or row[1] not in _STORED_STATUSES:
            return None
        _, status, seconds, exceptions, blob = row
        try:
            output = pickle.loads(blob)
        except Exception as exc:
            self._warn_unloadable(index, exc)
            return None
        return output, _details(status, seconds, exceptions)

    def record(self, index: int, item: object, output: object, details: ExecutionDetails) -> None:
        """Store one finished input; committed when this returns.

        Only COMPLETED and COMPLETED_WITH_RETRIES inputs are stored (others are
        ignored), replacing what was stored for `index` before. Raises
        `CheckpointError` if `output` cannot be pickled.
        """
        status = details.status.value
        if status not in _STORED_STATUSES:
            return
        try:
            blob = pickle.dumps(output, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            raise CheckpointError(
                f"cannot store the output of input {index} in checkpoint {self.path!r}: "
                f"its type {_type_path(output)} cannot be pickled ({type(exc).__name__}: "
                f"{exc}); return picklable values (str, numbers, lists, dicts, dataclasses "
                "defined at module level...) or run without a checkpoint"
            ) from exc
        fingerprint = self.fingerprint(item)
        exceptions = json.dumps([[_type_name(e), _message(e)] for e in details.exceptions])
        seconds = float(details.execution_seconds)
        with self._lock:
            connection = self._open_connection()
            try:
                connection.execute(
                    "INSERT INTO results (idx, fingerprint, status, seconds, exceptions, output) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idx) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, status = excluded.status, "
                    "seconds = excluded.seconds, exceptions = excluded.exceptions, "
                    "output = excluded.output",
                    (index, fingerprint, status, seconds, exceptions, blob),
                )
            except sqlite3.Error as exc:
                raise CheckpointError(
                    f"cannot write input {index} to checkpoint {self.path!r}: {exc}"
                ) from exc
            if self._index is not None:
                self._index[index] = _short(fingerprint)

    def close(self) -> None:
        """Close the file; calling it again does nothing."""
        with self._lock:
            connection, self._connection = self._connection, None
            self._index = None
        if connection is not None:
            connection.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._connection is None else "open"
        return f"Checkpoint({self.path!r}, {state})"

    # -- helpers ------------------------------------------------------------------------
    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise CheckpointError(f"checkpoint {self.path!r} is closed")
        return self._connection

    def _load_index(self, connection: sqlite3.Connection) -> dict[int, int]:
        """Every stored index and the first 64 bits of its fingerprint (about 100 bytes
        an input in memory; the full fingerprint is compared when a row is fetched)."""
        try:
            rows = connection.execute("SELECT idx, fingerprint, status FROM results")
            return {idx: _short(fp) for idx, fp, status in rows if status in _STORED_STATUSES}
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path!r}: {exc}") from exc

    def _warn_unloadable(self, index: int, exc: Exception) -> None:
        if self._warned_unloadable:
            return
        self._warned_unloadable = True
        logger.warning(
            "evalexec: checkpoint %r: the stored output of input %d cannot be loaded "
            "(%s: %s); such inputs are run again",
            self.path,
            index,
            type(exc).__name__,
            exc,
        )


def _short(fingerprint: str) -> int:
    return int(fingerprint[:16], 16)


def _details(status: str, seconds: float, exceptions: str) -> ExecutionDetails:
    details = ExecutionDetails()
    details.status = ExecutionStatus(status)
    details.execution_seconds = float(seconds)
    errors = json.loads(exceptions)
    if errors:
        details.exceptions = [RecordedError(name, message) for name, message in errors]
    return details


# -- canonical forms for fingerprints -----------------------------------------------------


def _type_path(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__: the type still tells something
        return f"<unrepresentable {_type_path(value)}: {type(exc).__name__}>"


def _canonical(value: object, active: set[int]) -> str:
    """A string that is equal for equal built-in values, whatever their history.

    Every form starts with a tag naming its kind, so ``1``, ``1.0``, ``True`` and
    ``"1"`` differ; containers are bracketed; dict items and set members are sorted
    by their own canonical form, so insertion order does not matter.
    """
    if value is None:
        return "N"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, enum.Enum):
        return "e" + _type_path(value) + "." + value.name
    if isinstance(value, int):
        return "i" + hex(value)  # hex has no digit limit, unlike str(int)
    if isinstance(value, float):
        return "f" + repr(value)
    if isinstance(value, complex):
        return "c" + repr(value)
    if isinstance(value, str):
        return "s" + json.dumps(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "b" + bytes(value).hex()
    if isinstance(value, list | tuple | dict | set | frozenset) or _is_dataclass(value):
        marker = id(value)
        if marker in active:
            return "<cycle>"
        active.add(marker)
        try:
            return _canonical_container(value, active)
        finally:
            active.discard(marker)
    module = type(value).__module__.partition(".")[0]
    if module == "numpy" and hasattr(value, "tolist") and hasattr(value, "shape"):
        dtype = str(getattr(value, "dtype", ""))
        return f"a{dtype}{value.shape}" + _canonical(value.tolist(), active)
    if module == "pandas" and hasattr(value, "to_dict"):
        try:
            contents = value.to_dict()
        except Exception:
            pass
        else:
            return "p" + _type_path(value) + _canonical(contents, active)
    return "r" + _type_path(value) + json.dumps(_safe_repr(value))


def _is_dataclass(value: object) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _canonical_container(value: Any, active: set[int]) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v, active) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(_canonical(v, active) for v in value) + ")"
    if isinstance(value, dict):
        items = sorted(
            _canonical(k, active) + ":" + _canonical(v, active) for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, set | frozenset):
        return "<" + ",".join(sorted(_canonical(v, active) for v in value)) + ">"
    fields = (
        f.name + "=" + _canonical(getattr(value, f.name), active) for f in dataclasses.fields(value)
    )
    return "d" + _type_path(value) + "(" + ",".join(fields) + ")"
