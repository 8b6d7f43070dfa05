"""A checkpoint file: the finished inputs of a run, kept so that a rerun can skip them.

`Checkpoint` is the user's description of one (a path, an optional ``key`` naming the
run, trust and fingerprint options); `Checkpoint.open` checks the file and returns a
`CheckpointStore`, which the engine uses for one run: `CheckpointStore.fingerprint`
when it draws an input, `CheckpointStore.restore` to skip an input finished before,
`CheckpointStore.record` when an input finishes.

The file is SQLite (standard library ``sqlite3``) in WAL mode, schema version 2:

- ``meta``: what the file was created for, the function's qualified name and the
  ``key`` (JSON); a rerun for another function or key is refused;
- ``results``: one row per completed input: its index (primary key), the fingerprint
  of the input as drawn, its status, seconds, the exceptions of its failed attempts
  (type name and message, JSON), and its output, as JSON when JSON gives it back
  exactly and pickled otherwise (``encoding`` says which).

Each row is committed before `CheckpointStore.record` returns, so a process killed at
any moment (``kill -9``) loses at most the inputs still in flight and the file stays
consistent. Pickled outputs are only loaded from a file that nobody else can have
written (see `Checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import pickle
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

from evalexec._details import STORED_STATUSES, ExecutionDetails, ExecutionStatus
from evalexec._fingerprint import Unfingerprintable, fingerprint, key_fingerprint, type_path

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore", "RecordedError", "Restored"]

logger = logging.getLogger("evalexec")

_APPLICATION_ID = 0x65766578  # "evex": marks a SQLite file as an evalexec checkpoint
_SCHEMA_VERSION = 2
_PICKLE_PROTOCOL = 5
_BUSY_SECONDS = 5.0  # how long to wait for another run's write lock before giving up
_STORED = frozenset(status.value for status in STORED_STATUSES)

# SQLite primary result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``).
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE results (
        idx         INTEGER PRIMARY KEY,
        fingerprint TEXT    NOT NULL,
        status      TEXT    NOT NULL,
        seconds     REAL    NOT NULL,
        exceptions  TEXT    NOT NULL,
        encoding    TEXT    NOT NULL CHECK (encoding IN ('json', 'pickle')),
        output      BLOB    NOT NULL
    )""",
)

# One statement, so one read transaction: the three values are from the same moment.
_HEADER = (
    "SELECT application_id, user_version, (SELECT count(*) FROM sqlite_master) "
    "FROM pragma_application_id(), pragma_user_version()"
)


class CheckpointError(Exception):
    """A checkpoint file cannot be opened, read or written, or an input or output cannot
    be fingerprinted or stored. The message says which file and what to do."""


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


class Restored(NamedTuple):
    """What a checkpoint holds for one completed input."""

    output: Any
    status: ExecutionStatus
    seconds: float
    exceptions: list[RecordedError]

    def details(self) -> ExecutionDetails:
        """A new `ExecutionDetails` with this status, seconds and exceptions."""
        details = ExecutionDetails()
        details.status = self.status
        details.execution_seconds = self.seconds
        if self.exceptions:
            details.exceptions = list(self.exceptions)
        return details


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where and how to keep the finished inputs of a run (``checkpoint=`` of the executors).

    ``Checkpoint("run.sqlite")`` is what passing the path alone means. A rerun with the
    same file restores every input that completed and runs only the others. An input is
    identified by its position *and* a fingerprint of its value when it was drawn (so a
    function that changes its input still resumes): when the value at an index changed,
    the stored result is ignored and the input runs again. Inputs that FAILED or did not
    run are not stored.

    - `key`: your name for what the run computes, such as a prompt or model version.
      The file records the function's qualified name and `key` when it is created and
      refuses (`CheckpointError`) to be resumed by another function or with another
      key; bump the key when you change what the function does, or use a new file.
    - `input_key`: a function of an input returning a built-in value (a str, say) that
      identifies it, fingerprinted instead of the input. Needed for inputs of types
      that cannot be fingerprinted soundly (see `evalexec._fingerprint`); it is then
      your promise that equal keys mean equal inputs.
    - `trust`: outputs that JSON gives back exactly (str, int, finite float, bool, None,
      and lists and str-keyed dicts of them, exactly those types) are stored as JSON;
      others are pickled, and unpickling can run code. So pickled outputs are loaded
      only from a file that you own and that neither group nor others can write (nor
      replace: its directory is not writable by others, unless sticky like /tmp), and
      only where POSIX permissions can be checked. ``trust=True`` loads them anyway:
      pass it only for a file that you know was written by your own runs.

    One file should be written by one run at a time.
    """

    path: str | os.PathLike[str]
    key: str | None = None
    trust: bool = False
    input_key: Callable[[Any], object] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike) or not isinstance(
            os.fspath(self.path), str
        ):
            raise TypeError(
                "checkpoint path must be a str or an os.PathLike of str, "
                f"not {type_path(self.path)}"
            )
        if self.key is not None and not isinstance(self.key, str):
            raise TypeError(f"checkpoint key must be a str or None, not {type_path(self.key)}")
        if not isinstance(self.trust, bool):
            raise TypeError(f"checkpoint trust must be a bool, not {type_path(self.trust)}")
        if self.input_key is not None and not callable(self.input_key):
            raise TypeError(
                f"checkpoint input_key must be a callable or None, not {type_path(self.input_key)}"
            )

    @classmethod
    def coerce(cls, value: str | os.PathLike[str] | Checkpoint) -> Checkpoint:
        """`value` itself if it is a `Checkpoint`, else ``Checkpoint(value)``."""
        if isinstance(value, Checkpoint):
            return value
        if isinstance(value, str | os.PathLike):
            return cls(value)
        raise TypeError(
            f"checkpoint must be a path or an evalexec.Checkpoint, not {type_path(value)}"
        )

    def open(self, function: Callable[..., Any]) -> CheckpointStore:
        """Open (or create) the file for a run of `function` and return its store.

        Raises `CheckpointError` when the file cannot be used: it cannot be read or
        written (permissions), it is damaged, it is not a SQLite file or belongs to
        another application, it was written by another evalexec schema, or for
        another function or key. Creating a new file is atomic: runs that create the
        same file at once all get the same, valid checkpoint.

        Cost: a few small statements, the same whatever the size of the file (no row
        of results is read); it may wait up to 5 s for another run's write lock.
        """
        return self._open(_function_name(function))

    def _open(self, function_name: str) -> CheckpointStore:
        path = os.fspath(self.path)
        _check_access(path)
        try:
            connection = _connect(path)
        except sqlite3.Error as exc:
            raise _failure(path, exc, "open") from exc
        try:
            _prepare(connection, path, function_name, self.key)
        except BaseException:
            connection.close()
            raise
        return CheckpointStore(path, connection, trust=self.trust, input_key=self.input_key)


class CheckpointStore:
    """An open checkpoint file, for one run. Thread-safe; a context manager (closes).

    Made by `Checkpoint.open`. Costs: `fingerprint` is linear in the size of the input
    (microseconds for a dict of a few strings); `restore` is one lookup by primary key
    (a few microseconds, whatever the size of the file) plus decoding the output;
    `record` encodes the output and commits one row (WAL, ``synchronous=NORMAL``: no
    disk flush per row, tens of microseconds).
    """

    def __init__(
        self,
        path: str,
        connection: sqlite3.Connection,
        *,
        trust: bool,
        input_key: Callable[[Any], object] | None,
    ) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()
        self._trust = trust
        self._input_key = input_key
        self._distrust: str | None = None  # why pickles may not be loaded, once checked
        self._distrust_checked = False
        self._warned_unloadable = False

    def fingerprint(self, item: object) -> str:
        """The fingerprint of `item` as it is now: take it when the input is drawn.

        With ``input_key``, the fingerprint of ``input_key(item)`` (kept apart, so that
        it never equals the fingerprint of an input itself). Raises `CheckpointError` naming
        the type when the value cannot be fingerprinted soundly.
        """
        try:
            if self._input_key is None:
                return fingerprint(item)
            return key_fingerprint(self._input_key(item))
        except Unfingerprintable as exc:
            raise self._unfingerprintable(exc) from None

    def restore(self, index: int, fingerprint: str) -> Restored | None:
        """What is stored for input `index`, or None to run it.

        None unless `index` was stored with this `fingerprint` (taken when the input was
        drawn) and a completed status. An output that cannot be unpickled any more (its
        class was removed, say) counts as not stored, with one warning. Raises
        `CheckpointError` when the output is pickled and the file is not trusted.
        """
        with self._lock:
            connection = self._live()
            try:
                row = connection.execute(
                    "SELECT fingerprint, status, seconds, exceptions, encoding, output "
                    "FROM results WHERE idx = ?",
                    (index,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise _failure(self.path, exc, f"read input {index} from") from exc
        if row is None or row[0] != fingerprint or row[1] not in _STORED:
            return None
        _, status, seconds, exceptions, encoding, blob = row
        try:
            errors = [RecordedError(name, message) for name, message in json.loads(exceptions)]
        except (ValueError, TypeError) as exc:
            raise self._damaged(index, exc) from exc
        if encoding == "json":
            try:
                output = json.loads(blob)
            except ValueError as exc:
                raise self._damaged(index, exc) from exc
        else:
            self._check_trusted(index)
            try:
                output = pickle.loads(blob)
            except Exception as exc:
                self._warn_unloadable(index, exc)
                return None
        return Restored(output, ExecutionStatus(status), float(seconds), errors)

    def record(
        self, index: int, fingerprint: str, output: object, details: ExecutionDetails
    ) -> None:
        """Store one finished input under its draw-time `fingerprint`; committed on return.

        Only COMPLETED and COMPLETED_WITH_RETRIES inputs are stored (others are
        ignored), replacing what was stored for `index` before. Raises
        `CheckpointError` if `output` can be stored neither as JSON nor with pickle.
        """
        status = details.status.value
        if status not in _STORED:
            return
        encoding, blob = self._encode(index, output)
        exceptions = json.dumps([[_error_type(e), _message(e)] for e in details.exceptions])
        seconds = float(details.execution_seconds)
        with self._lock:
            connection = self._live()
            try:
                connection.execute(
                    "INSERT INTO results "
                    "(idx, fingerprint, status, seconds, exceptions, encoding, output) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idx) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, status = excluded.status, "
                    "seconds = excluded.seconds, exceptions = excluded.exceptions, "
                    "encoding = excluded.encoding, output = excluded.output",
                    (index, fingerprint, status, seconds, exceptions, encoding, blob),
                )
            except sqlite3.Error as exc:
                raise _failure(self.path, exc, f"write input {index} to") from exc

    def close(self) -> None:
        """Close the file; calling it again does nothing."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def __enter__(self) -> CheckpointStore:
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
        return f"CheckpointStore({self.path!r}, {state})"

    # -- helpers ------------------------------------------------------------------------
    def _live(self) -> sqlite3.Connection:
        if self._connection is None:
            raise CheckpointError(f"checkpoint {self.path!r} is closed")
        return self._connection

    def _encode(self, index: int, output: object) -> tuple[str, bytes]:
        if _is_plain_json(output):
            try:
                text = json.dumps(output, ensure_ascii=True, allow_nan=False)
            except (ValueError, RecursionError):
                pass  # too deep, or an int too long for str(): pickle it
            else:
                return "json", text.encode("ascii")
        try:
            return "pickle", pickle.dumps(output, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            raise CheckpointError(
                f"cannot store the output of input {index} in checkpoint {self.path!r}: "
                f"its type {type_path(output)} cannot be pickled ({type(exc).__name__}: "
                f"{exc}); return picklable values (str, numbers, lists, dicts, dataclasses "
                "defined at module level...) or run without a checkpoint"
            ) from exc

    def _check_trusted(self, index: int) -> None:
        if self._trust:
            return
        with self._lock:
            if not self._distrust_checked:
                self._distrust = _pickle_distrust(self.path)
                self._distrust_checked = True
            distrust = self._distrust
        if distrust is not None:
            raise CheckpointError(
                f"checkpoint {self.path!r}: the output of input {index} is pickled, and "
                f"unpickling can run code, but the file is not trusted: {distrust}. If only "
                "your own runs wrote it, fix that or pass "
                f"Checkpoint({self.path!r}, trust=True); otherwise delete it"
            )

    def _unfingerprintable(self, exc: Unfingerprintable) -> CheckpointError:
        what = (
            f"it contains itself (a reference cycle through a {exc.type_path})"
            if exc.cycle
            else f"it holds a value of type {exc.type_path}, which evalexec cannot "
            "fingerprint soundly"
        )
        return CheckpointError(
            f"cannot fingerprint an input for checkpoint {self.path!r}: {what}; pass "
            f"Checkpoint({self.path!r}, input_key=...) with a function that returns a str "
            "identifying each input, or convert the inputs to dicts of built-in values"
        )

    def _damaged(self, index: int, exc: Exception) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {self.path!r} is damaged (the row of input {index} cannot be "
            f"decoded: {exc}); delete it or pass another path to start afresh"
        )

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


# -- opening --------------------------------------------------------------------------------


def _connect(path: str) -> sqlite3.Connection:
    """The connection of a store (a seam: tests wrap it to count SQLite's work)."""
    return sqlite3.connect(
        path, timeout=_BUSY_SECONDS, isolation_level=None, check_same_thread=False
    )


def _check_access(path: str) -> None:
    """Permissions first, so that they are reported as such (SQLite would fall back to
    read-only, or say only that it cannot open the file)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CheckpointError(
            f"cannot open checkpoint {path!r}: its directory {directory!r} does not exist"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise CheckpointError(
            f"cannot write checkpoint {path!r}: permission denied ({_describe(path)}); "
            "make it readable and writable for you, or pass another path"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(
            f"cannot write checkpoint {path!r}: permission denied on its directory "
            f"{directory!r} ({_describe(directory)}), where SQLite keeps the file's -wal "
            "and -shm files; make it writable for you, or pass another path"
        )


def _describe(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError as exc:
        return str(exc)
    return f"mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}"


def _prepare(
    connection: sqlite3.Connection, path: str, function_name: str, key: str | None
) -> None:
    try:
        header = connection.execute(_HEADER).fetchone()
    except sqlite3.Error as exc:
        raise _failure(path, exc, "read") from exc
    if not _is_fresh(header):
        _check_header(path, header)
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            header = connection.execute(_HEADER).fetchone()
            created = _is_fresh(header)
            if created:
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("function", function_name), ("key", json.dumps(key))],
                )
                connection.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            else:  # a checkpoint already, or made by a run that created it since we looked
                _check_header(path, header)
                # SQLite opens a file it may not write read-only, without a word: a write
                # (rolled back) finds out now rather than at the first finished input.
                connection.execute("UPDATE meta SET value = value WHERE name = 'function'")
            identity = dict(connection.execute("SELECT name, value FROM meta").fetchall())
            connection.execute("COMMIT" if created else "ROLLBACK")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        _enable_wal(connection)
        connection.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        raise _failure(path, exc, "open") from exc
    _check_identity(path, identity, function_name, key)


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL mode (once per file; a no-op afterwards). The switch needs
    the file to itself, and SQLite reports a busy file at once rather than waiting for
    it, so another run opening the same new file at this moment is waited out here."""
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


def _is_fresh(header: tuple[int, int, int]) -> bool:
    return tuple(header) == (0, 0, 0)


def _check_header(path: str, header: tuple[int, int, int]) -> None:
    application_id, version, _ = header
    if application_id != _APPLICATION_ID:
        raise CheckpointError(
            f"{path!r} is not an evalexec checkpoint (it is a SQLite database of another "
            f"application: application id {application_id:#x}); pass the path of a new "
            "file or of a checkpoint written by evalexec"
        )
    if version > _SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} was written by a newer evalexec (schema version "
            f"{version}; this evalexec reads {_SCHEMA_VERSION}); upgrade evalexec or use a "
            "new checkpoint file"
        )
    if version == 1:
        raise CheckpointError(
            f"checkpoint {path!r} was written by an earlier evalexec (schema version 1), "
            "which did not record the function it was made for, so its results cannot be "
            "told apart from another function's; delete it or pass another path to start "
            "afresh"
        )
    if version != _SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} is damaged (schema version {version}); delete it or pass "
            "another path to start afresh"
        )


def _check_identity(
    path: str, identity: dict[str, str], function_name: str, key: str | None
) -> None:
    try:
        stored_function = identity["function"]
        stored_key = json.loads(identity["key"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path!r} is damaged (its identity cannot be read: {exc!r}); delete "
            "it or pass another path to start afresh"
        ) from exc
    if stored_function == function_name and stored_key == key:
        return
    raise CheckpointError(
        f"checkpoint {path!r} holds the results of {stored_function} with key "
        f"{stored_key!r}, not of {function_name} with key {key!r}, so they cannot be "
        "restored in this run; to start afresh, delete the file or pass another path (or "
        "another key); to resume it, run the function and key it was written with"
    )


def _failure(path: str, exc: sqlite3.Error, action: str) -> CheckpointError:
    """A `CheckpointError` that says what SQLite's error means for the user."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code in (_SQLITE_READONLY, _SQLITE_PERM):
        message = (
            f"cannot write checkpoint {path!r}: it is read-only for you (sqlite: {exc}); "
            "check the permissions of the file, its -wal and -shm files and its directory, "
            "or pass another path"
        )
    elif code == _SQLITE_CORRUPT:
        message = (
            f"checkpoint {path!r} is damaged (sqlite: {exc}); delete it or pass another "
            "path to start afresh"
        )
    elif code == _SQLITE_NOTADB:
        message = (
            f"{path!r} is not an evalexec checkpoint (not a SQLite database: {exc}); pass "
            "the path of a new file or of a checkpoint written by evalexec"
        )
    elif code == _SQLITE_BUSY:
        message = (
            f"checkpoint {path!r} is locked by another process (sqlite: {exc}); let that "
            "run finish, or pass another path"
        )
    elif code == _SQLITE_FULL:
        message = f"cannot {action} checkpoint {path!r}: the disk is full (sqlite: {exc})"
    elif code == _SQLITE_CANTOPEN:
        message = (
            f"cannot open checkpoint {path!r} (sqlite: {exc}); check that you can read and "
            "write the file and its directory"
        )
    else:
        message = f"cannot {action} checkpoint {path!r}: {exc}"
    return CheckpointError(message)


def _pickle_distrust(path: str) -> str | None:
    """Why the pickles in the file at `path` may not be loaded, or None if they may.

    The file (and its -wal file, which holds recent rows) must be owned by the effective
    user and not writable by group or others; its directory (after symlinks) must not
    be writable by others unless sticky, so nobody else can have swapped the file in.
    A group-writable directory is accepted: with the usual one-user groups and umask
    002 a user's own project directories are group-writable, and a file swapped in by
    a group member would be owned by them and refused.
    """
    if os.name != "posix":
        return "file ownership and permissions cannot be checked on this platform"
    uid = os.geteuid()
    for candidate in (path, f"{path}-wal"):
        try:
            info = os.stat(candidate)
        except FileNotFoundError:
            continue
        if info.st_uid != uid:
            return f"{candidate!r} is owned by user id {info.st_uid}, not by you ({uid})"
        writers = [name for bit, name in _WRITERS if info.st_mode & bit]
        if writers:
            return (
                f"{' and '.join(writers)} can write {candidate!r} "
                f"(mode {stat.filemode(info.st_mode)}; chmod go-w fixes it)"
            )
    directory = os.path.dirname(os.path.realpath(path))
    info = os.stat(directory)
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        return (
            f"others can write its directory {directory!r} and so replace the file "
            f"(mode {stat.filemode(info.st_mode)}, not sticky)"
        )
    return None


_WRITERS = ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others"))


# -- identities and values ----------------------------------------------------------------


def _function_name(function: Callable[..., Any]) -> str:
    """A readable name for what `function` is, the same in every process.

    ``module.qualname`` for functions (lambdas are ``module.<lambda>``: give a key to
    tell two apart); ``module.Class.method`` of the instance's class for bound methods;
    ``module.Class.__call__`` for callable instances; ``functools.partial(name, bound
    arguments <digest>)`` for partials, whose bound arguments count (by their types
    where they cannot be fingerprinted). The state of an instance does not count: use
    ``key`` for a model name or prompt held by an object.
    """
    if isinstance(function, functools.partial):
        inner = _function_name(function.func)
        bound = (function.args, function.keywords)
        try:
            arguments = "bound arguments " + fingerprint(bound)[:16]
        except Unfingerprintable:
            types = [type_path(a) for a in (*function.args, *function.keywords.values())]
            arguments = f"bound arguments of types {', '.join(types)}"
        return f"functools.partial({inner}, {arguments})"
    if inspect.ismethod(function):
        owner = function.__self__
        cls = owner if isinstance(owner, type) else type(owner)
        return f"{cls.__module__}.{cls.__qualname__}.{function.__func__.__name__}"
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return f"{type_path(function)}.__call__"


def _is_plain_json(value: object) -> bool:
    """Whether `json.loads(json.dumps(value))` gives back exactly `value`: only str, int,
    finite float, bool, None, lists and str-keyed dicts (exact types, not subclasses),
    each container reached once (JSON would duplicate a shared one)."""
    stack: list[Any] = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        cls = type(item)
        if cls is str or cls is int or cls is bool or item is None:
            continue
        if cls is float:
            if not math.isfinite(item):
                return False
            continue
        if cls is not list and cls is not dict:
            return False
        if id(item) in seen:
            return False
        seen.add(id(item))
        if cls is list:
            stack.extend(item)
            continue
        for key, member in item.items():
            if type(key) is not str:
                return False
            stack.append(member)
    return True


def _error_type(exc: BaseException) -> str:
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
