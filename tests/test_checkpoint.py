"""The checkpoint store: what it keeps, what it refuses, and what survives a kill -9."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evalexec import _checkpoint
from evalexec._checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    RecordedError,
    Restored,
)
from evalexec.executors import AsyncExecutor, ExecutionDetails, ExecutionStatus, SyncExecutor
from tests.fakes import FakeError

S = ExecutionStatus
SRC = str(Path(_checkpoint.__file__).parents[1])


def finished(
    status: ExecutionStatus, seconds: float = 0.0, exceptions: list[BaseException] | None = None
) -> ExecutionDetails:
    details = ExecutionDetails()
    for exc in exceptions or []:
        details.log_exception(exc)
    details.status = status
    details.execution_seconds = seconds
    return details


def judge(item: object) -> str:
    return f"judged {item}"


def other_judge(item: object) -> str:
    return f"judged again {item}"


def put(store: CheckpointStore, index: int, item: object, output: object, **kw: Any) -> None:
    details = kw.pop("details", None) or finished(S.COMPLETED)
    store.record(index, store.fingerprint(item), output, details)


def get(store: CheckpointStore, index: int, item: object) -> Restored | None:
    return store.restore(index, store.fingerprint(item))


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on the file with a plain sqlite3 connection, and close it."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(sql).fetchall()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run.checkpoint"


@pytest.fixture
def store(path: Path) -> Iterator[CheckpointStore]:
    with Checkpoint(path).open(judge) as opened:
        yield opened


# -- round trips ---------------------------------------------------------------------------


def test_outputs_and_details_survive_closing_and_reopening(path: Path) -> None:
    errors: list[BaseException] = [ValueError("bad json"), FakeError("flaky"), TimeoutError("slow")]
    with Checkpoint(path).open(judge) as store:
        put(
            store, 0, "a", {"label": "relevant", "score": 0.75}, details=finished(S.COMPLETED, 1.25)
        )
        put(store, 1, "b", ("x", 2), details=finished(S.COMPLETED_WITH_RETRIES, 4.5, errors))
        put(store, 2, "c", None, details=finished(S.COMPLETED, 0.5))

    with Checkpoint(path).open(judge) as store:
        first, second, third = get(store, 0, "a"), get(store, 1, "b"), get(store, 2, "c")

    assert first == Restored({"label": "relevant", "score": 0.75}, S.COMPLETED, 1.25, [])
    assert second is not None
    assert (second.output, second.status, second.seconds) == (
        ("x", 2),
        S.COMPLETED_WITH_RETRIES,
        4.5,
    )
    assert [(type(e), e.type_name, str(e)) for e in second.exceptions] == [
        (RecordedError, "ValueError", "bad json"),
        (RecordedError, "tests.fakes.FakeError", "flaky"),
        (RecordedError, "TimeoutError", "slow"),
    ]
    assert third == Restored(None, S.COMPLETED, 0.5, [])  # a stored None is a hit


def test_restored_details_are_a_new_execution_details_with_the_stored_values() -> None:
    error = RecordedError("ValueError", "bad")
    details = Restored("out", S.COMPLETED_WITH_RETRIES, 2.5, [error]).details()
    assert type(details) is ExecutionDetails
    assert (details.status, details.execution_seconds, details.exceptions) == (
        S.COMPLETED_WITH_RETRIES,
        2.5,
        [error],
    )


def test_a_record_is_visible_to_restore_in_the_same_session(store: CheckpointStore) -> None:
    assert get(store, 0, "a") is None
    put(store, 0, "a", "out:a")
    assert get(store, 0, "a") == Restored("out:a", S.COMPLETED, 0.0, [])


def test_an_index_that_was_never_stored_is_not_restored(store: CheckpointStore) -> None:
    put(store, 0, "a", "out:a")
    assert get(store, 1, "a") is None


def test_recording_an_index_again_replaces_it(store: CheckpointStore) -> None:
    put(store, 0, "old", "out:old")
    put(store, 0, "new", "out:new", details=finished(S.COMPLETED, 2.0))
    assert get(store, 0, "old") is None
    assert get(store, 0, "new") == Restored("out:new", S.COMPLETED, 2.0, [])


def test_a_recorded_error_keeps_its_type_name_when_recorded_again(store: CheckpointStore) -> None:
    earlier = RecordedError("openai._exceptions.RateLimitError", "429 slow down")
    put(store, 0, "a", "out", details=finished(S.COMPLETED_WITH_RETRIES, 1.0, [earlier]))
    restored = get(store, 0, "a")
    assert restored is not None
    [error] = restored.exceptions
    assert (error.type_name, str(error)) == ("openai._exceptions.RateLimitError", "429 slow down")


def test_recorded_errors_can_be_pickled_with_their_details() -> None:
    error = RecordedError("ValueError", "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.type_name, str(copy)) == (RecordedError, "ValueError", "bad")
    assert repr(copy) == "RecordedError('ValueError', 'bad')"


def test_records_from_many_threads_are_all_kept(path: Path) -> None:
    with Checkpoint(path).open(judge) as store:

        def write(start: int) -> None:
            for index in range(start, 400, 8):
                put(store, index, f"input {index}", {"index": index})

        threads = [threading.Thread(target=write, args=(start,)) for start in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with Checkpoint(path).open(judge) as store:
        outputs = [get(store, index, f"input {index}") for index in range(400)]
    assert [None if r is None else r.output for r in outputs] == [{"index": i} for i in range(400)]


# -- the input as it was drawn (item 1) ---------------------------------------------------


def test_an_input_changed_by_the_function_is_stored_under_its_drawn_fingerprint(
    path: Path,
) -> None:
    row = {"prompt": "rate this"}
    with Checkpoint(path).open(judge) as store:
        drawn = store.fingerprint(row)
        row["prompt"] = "rate this, formatted by the function"
        store.record(0, drawn, "yes", finished(S.COMPLETED))
    with Checkpoint(path).open(judge) as store:
        assert get(store, 0, {"prompt": "rate this"}) == Restored("yes", S.COMPLETED, 0.0, [])


@pytest.mark.parametrize("executor", ["sync", "async"])
def test_a_rerun_of_a_function_that_changes_its_inputs_calls_it_for_none_of_them(
    path: Path, executor: str
) -> None:
    calls: list[str] = []

    def rate(row: dict[str, str]) -> str:
        calls.append(row["prompt"])
        row["prompt"] = "formatted: " + row["prompt"]
        return "yes"

    async def rate_async(row: dict[str, str]) -> str:
        return rate(row)

    def run() -> list[Any]:
        rows = [{"prompt": f"row {i}"} for i in range(5)]
        if executor == "sync":
            return SyncExecutor(rate, checkpoint=path).run(rows)[0]
        return AsyncExecutor(rate_async, checkpoint=path).run(rows)[0]

    assert run() == ["yes"] * 5
    assert run() == ["yes"] * 5
    assert sorted(calls) == [f"row {i}" for i in range(5)]


# -- what is not stored --------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.FAILED, S.DID_NOT_RUN])
def test_inputs_that_did_not_complete_are_not_stored(path: Path, status: ExecutionStatus) -> None:
    with Checkpoint(path).open(judge) as store:
        put(store, 0, "a", "fallback", details=finished(status, 3.0, [FakeError("no")]))
        assert get(store, 0, "a") is None
    assert query(path, "SELECT count(*) FROM results") == [(0,)]


def test_a_changed_input_is_not_restored(store: CheckpointStore) -> None:
    put(store, 0, {"question": "q1", "context": "c"}, "yes")
    assert get(store, 0, {"question": "q1", "context": "C"}) is None
    assert get(store, 0, {"question": "q1"}) is None
    assert get(store, 0, {"context": "c", "question": "q1"}) is not None


def _explode() -> None:
    raise RuntimeError("this class is gone")


class GoneOnLoad:
    """Pickles fine, but cannot be unpickled (as when its class was removed since)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


def test_an_output_that_cannot_be_loaded_any_more_is_run_again_with_one_warning(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    put(store, 0, "a", GoneOnLoad())
    put(store, 1, "b", GoneOnLoad())
    with caplog.at_level(logging.WARNING, logger="evalexec"):
        assert get(store, 0, "a") is None
        assert get(store, 1, "b") is None
    [record] = caplog.records
    assert "stored output of input 0 cannot be loaded" in record.getMessage()
    assert "this class is gone" in record.getMessage()


def _numbers() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("output", "type_name"),
    [
        (lambda: 1, "builtins.function"),
        (_numbers(), "builtins.generator"),
        (threading.Lock(), "_thread.lock"),
    ],
    ids=["lambda", "generator", "lock"],
)
def test_an_output_that_cannot_be_pickled_is_refused_at_once_naming_the_input(
    store: CheckpointStore, output: object, type_name: str
) -> None:
    with pytest.raises(CheckpointError) as raised:
        put(store, 7, "a", output)
    message = str(raised.value)
    assert "cannot store the output of input 7" in message
    assert f"its type {type_name} cannot be pickled" in message
    assert "return picklable values" in message
    assert get(store, 7, "a") is None
    put(store, 8, "b", "fine")  # still usable afterwards
    assert get(store, 8, "b") is not None


# -- inputs that cannot be fingerprinted (item 2) ------------------------------------------


class Opaque:
    def __init__(self, name: str) -> None:
        self.name = name


def test_an_input_that_cannot_be_fingerprinted_is_refused_saying_what_to_do(
    path: Path, store: CheckpointStore
) -> None:
    with pytest.raises(CheckpointError) as raised:
        store.fingerprint({"row": Opaque("a")})
    assert str(raised.value) == (
        f"cannot fingerprint an input for checkpoint {str(path)!r}: it holds a value of type "
        "tests.test_checkpoint.Opaque, which evalexec cannot fingerprint soundly; pass "
        f"Checkpoint({str(path)!r}, input_key=...) with a function that returns a str "
        "identifying each input, or convert the inputs to dicts of built-in values"
    )


def test_an_input_key_fingerprints_inputs_of_any_type(path: Path) -> None:
    checkpoint = Checkpoint(path, input_key=lambda item: item.name)
    with checkpoint.open(judge) as store:
        put(store, 0, Opaque("a"), "out:a")
        assert store.fingerprint(Opaque("a")) != Checkpoint(path).open(judge).fingerprint("a")
    with checkpoint.open(judge) as store:
        assert get(store, 0, Opaque("a")) == Restored("out:a", S.COMPLETED, 0.0, [])
        assert get(store, 0, Opaque("b")) is None


# -- the function and key a file belongs to (item 3) ---------------------------------------


class Adapter:
    def generate(self, item: object) -> str:
        return f"generated {item}"

    def __call__(self, item: object) -> str:
        return f"called {item}"


def test_a_checkpoint_resumes_only_for_the_function_it_was_made_for(path: Path) -> None:
    with Checkpoint(path).open(judge) as store:
        put(store, 0, "a", "out")
    with pytest.raises(CheckpointError) as raised:
        Checkpoint(path).open(other_judge)
    assert str(raised.value) == (
        f"checkpoint {str(path)!r} holds the results of tests.test_checkpoint.judge with key "
        "None, not of tests.test_checkpoint.other_judge with key None, so they cannot be "
        "restored in this run; to start afresh, delete the file or pass another path (or "
        "another key); to resume it, run the function and key it was written with"
    )
    with Checkpoint(path).open(judge) as store:
        assert get(store, 0, "a") is not None


def test_a_checkpoint_resumes_only_with_the_key_it_was_made_with(path: Path) -> None:
    Checkpoint(path, key="prompt v1").open(judge).close()
    for key in ("prompt v2", None, ""):
        with pytest.raises(CheckpointError, match=r"with key 'prompt v1', not of .* with key"):
            Checkpoint(path, key=key).open(judge)
    Checkpoint(path, key="prompt v1").open(judge).close()


def _open_then(path: Path, first: Any, second: Any) -> str | None:
    Checkpoint(path).open(first).close()
    try:
        Checkpoint(path).open(second).close()
    except CheckpointError as exc:
        return str(exc)
    return None


def test_functions_are_named_by_what_they_are(tmp_path: Path) -> None:
    adapter = Adapter()
    same = [
        (judge, judge),
        (adapter.generate, Adapter().generate),  # an instance's state does not count
        (adapter, Adapter()),
        (functools.partial(judge, "x"), functools.partial(judge, "x")),
    ]
    for i, (first, second) in enumerate(same):
        assert _open_then(tmp_path / f"same{i}", first, second) is None
    refused = _open_then(tmp_path / "method", adapter.generate, adapter)
    assert refused is not None
    assert "tests.test_checkpoint.Adapter.generate with key None, not of " in refused
    assert "not of tests.test_checkpoint.Adapter.__call__ with key None" in refused
    refused = _open_then(tmp_path / "partial", functools.partial(judge, "x"), judge)
    assert refused is not None
    assert "results of functools.partial(tests.test_checkpoint.judge, bound arguments " in refused
    assert _open_then(
        tmp_path / "args", functools.partial(judge, "x"), functools.partial(judge, "y")
    )
    refused = _open_then(tmp_path / "lambda", lambda item: item, judge)
    assert refused is not None
    assert "results of tests.test_checkpoint.test_functions_are_named_by_what_they_are." in refused
    assert "<locals>.<lambda> with key None" in refused


def test_a_checkpoint_of_schema_version_1_is_refused_as_not_knowing_its_function(
    path: Path,
) -> None:
    query(
        path,
        "CREATE TABLE results (idx INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, "
        "status TEXT NOT NULL, seconds REAL NOT NULL, exceptions TEXT NOT NULL, "
        "output BLOB NOT NULL)",
    )
    query(path, "PRAGMA application_id = 1702258040")
    query(path, "PRAGMA user_version = 1")
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as raised:
        Checkpoint(path).open(judge)
    assert str(raised.value) == (
        f"checkpoint {str(path)!r} was written by an earlier evalexec (schema version 1), "
        "which did not record the function it was made for, so its results cannot be told "
        "apart from another function's; delete it or pass another path to start afresh"
    )
    assert path.read_bytes() == before


# -- opening files -------------------------------------------------------------------------


def test_a_new_checkpoint_is_a_wal_sqlite_file_marked_as_evalexec(path: Path) -> None:
    Checkpoint(path, key="v1").open(judge).close()
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "PRAGMA user_version") == [(2,)]
    assert query(path, "PRAGMA application_id") == [(0x65766578,)]
    tables = query(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [("meta",), ("results",)]
    assert query(path, "SELECT name, value FROM meta ORDER BY name") == [
        ("function", "tests.test_checkpoint.judge"),
        ("key", '"v1"'),
    ]


def test_an_empty_file_becomes_a_checkpoint(path: Path) -> None:
    path.touch()
    with Checkpoint(path).open(judge) as store:
        put(store, 0, "a", "out")
        assert get(store, 0, "a") is not None


def test_runs_creating_the_same_checkpoint_at_once_all_open_it(tmp_path: Path) -> None:
    """Eight threads race to create each of 20 new files; every one must open it."""
    for round_ in range(20):
        path = tmp_path / f"race{round_}.checkpoint"
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def create(
            index: int,
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                with Checkpoint(path).open(judge) as store:
                    put(store, index, index, index)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert query(path, "SELECT count(*) FROM results") == [(8,)]


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(path: Path) -> None:
    path.write_text("question,answer\nwhat?,42\n" * 100)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"is not an evalexec checkpoint \(not a SQLite"):
        Checkpoint(path).open(judge)
    assert path.read_bytes() == before


def test_a_database_of_another_application_is_refused_naming_its_id(path: Path) -> None:
    query(path, "CREATE TABLE notes (text TEXT)")
    query(path, "PRAGMA application_id = 42")
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as raised:
        Checkpoint(path).open(judge)
    assert str(raised.value) == (
        f"{str(path)!r} is not an evalexec checkpoint (it is a SQLite database of another "
        "application: application id 0x2a); pass the path of a new file or of a checkpoint "
        "written by evalexec"
    )
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_checkpoint_of_a_newer_schema_is_refused(path: Path) -> None:
    Checkpoint(path).open(judge).close()
    query(path, "PRAGMA user_version = 3")
    with pytest.raises(CheckpointError, match=r"written by a newer evalexec \(schema version 3"):
        Checkpoint(path).open(judge)


def test_a_path_whose_directory_is_missing_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "no such directory"
    with pytest.raises(CheckpointError) as raised:
        Checkpoint(missing / "run.checkpoint").open(judge)
    assert str(raised.value) == (
        f"cannot open checkpoint {str(missing / 'run.checkpoint')!r}: its directory "
        f"{str(missing)!r} does not exist"
    )


def _damage(path: Path, page: int) -> None:
    """Overwrite page `page` (1-based) of the file with garbage, as a bad disk would."""
    query(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    [(size,)] = query(path, "PRAGMA page_size")
    data = bytearray(path.read_bytes())
    start = (page - 1) * size + (100 if page == 1 else 0)
    data[start : page * size] = b"\xa5" * (page * size - start)
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_says_it_is_damaged(path: Path) -> None:
    with Checkpoint(path).open(judge) as store:
        for index in range(50):
            put(store, index, index, "x" * 3000)
    [(results_page,)] = query(path, "SELECT rootpage FROM sqlite_master WHERE name = 'results'")
    _damage(path, results_page)
    damaged = f"checkpoint {str(path)!r} is damaged (sqlite: database disk image is malformed)"
    with Checkpoint(path).open(judge) as store, pytest.raises(CheckpointError) as raised:
        get(store, 3, 3)
    assert str(raised.value) == f"{damaged}; delete it or pass another path to start afresh"
    _damage(path, 1)
    with pytest.raises(CheckpointError) as raised:
        Checkpoint(path).open(judge)
    assert str(raised.value) == f"{damaged}; delete it or pass another path to start afresh"


_OPEN_SCRIPT = """
import sys
from evalexec._checkpoint import Checkpoint, CheckpointError
def judge(item): return item
judge.__module__, judge.__qualname__ = "tests.test_checkpoint", "judge"
try:
    Checkpoint(sys.argv[1]).open(judge).close()
except CheckpointError as exc:
    print(exc)
"""


def _open_as_plain_user(path: Path) -> str:
    """Open `path` in a child process that file permissions apply to (root drops the
    capabilities that let it write anything), and return what it printed."""
    command = [sys.executable, "-c", _OPEN_SCRIPT, str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            if os.environ.get("CI") == "true":
                pytest.fail("setpriv (util-linux) is needed to test permissions as root")
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *command]
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return result.stdout.strip()


def test_a_read_only_checkpoint_says_it_cannot_be_written(path: Path) -> None:
    Checkpoint(path).open(judge).close()
    path.chmod(0o444)
    assert _open_as_plain_user(path) == (
        f"cannot write checkpoint {str(path)!r}: permission denied (mode -r--r--r--, owner "
        f"uid {os.geteuid()}); make it readable and writable for you, or pass another path"
    )


def test_a_checkpoint_in_a_read_only_directory_says_it_cannot_be_written(tmp_path: Path) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        printed = _open_as_plain_user(directory / "run.checkpoint")
    finally:
        directory.chmod(0o755)
    assert printed == (
        f"cannot write checkpoint {str(directory / 'run.checkpoint')!r}: permission denied on "
        f"its directory {str(directory)!r} (mode dr-xr-xr-x, owner uid {os.geteuid()}), where "
        "SQLite keeps the file's -wal and -shm files; make it writable for you, or pass "
        "another path"
    )


def test_a_file_sqlite_opens_read_only_is_reported_as_read_only(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Checkpoint(path).open(judge).close()
    monkeypatch.setattr(
        _checkpoint,
        "_connect",
        lambda p: sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None),
    )
    with pytest.raises(CheckpointError) as raised:
        Checkpoint(path).open(judge)
    assert str(raised.value) == (
        f"cannot write checkpoint {str(path)!r}: it is read-only for you (sqlite: attempt to "
        "write a readonly database); check the permissions of the file, its -wal and -shm "
        "files and its directory, or pass another path"
    )


def test_close_is_idempotent_and_a_closed_store_says_so(path: Path) -> None:
    store = Checkpoint(path).open(judge)
    store.close()
    store.close()
    assert repr(store) == f"CheckpointStore({str(path)!r}, closed)"
    with pytest.raises(CheckpointError, match="is closed"):
        get(store, 0, "a")
    with pytest.raises(CheckpointError, match="is closed"):
        put(store, 0, "a", "out")


def test_checkpoint_options_are_checked_when_made() -> None:
    with pytest.raises(
        TypeError, match=r"^checkpoint path must be a str or an os\.PathLike of str"
    ):
        Checkpoint(b"run.checkpoint")  # type: ignore[arg-type]  # the error tested
    with pytest.raises(
        TypeError, match=r"^checkpoint key must be a str or None, not builtins\.int$"
    ):
        Checkpoint("run.checkpoint", key=2)  # type: ignore[arg-type]  # the error tested
    with pytest.raises(TypeError, match=r"^checkpoint trust must be a bool, not builtins\.str$"):
        Checkpoint("run.checkpoint", trust="yes")  # type: ignore[arg-type]  # the error tested
    with pytest.raises(TypeError, match=r"^checkpoint input_key must be a callable or None"):
        Checkpoint("run.checkpoint", input_key="name")  # type: ignore[arg-type]  # the error tested
    with pytest.raises(TypeError, match=r"^checkpoint must be a path or an evalexec\.Checkpoint"):
        Checkpoint.coerce(3)  # type: ignore[arg-type]  # the error tested
    given = Checkpoint("run.checkpoint", key="v2")
    assert Checkpoint.coerce(given) is given
    assert Checkpoint.coerce(Path("run.checkpoint")) == Checkpoint(Path("run.checkpoint"))


# -- costs that do not grow with the file (item 9) -----------------------------------------


def _count_sqlite_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every connection the store makes counts its SQLite virtual-machine steps here."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def connect(path: str) -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.set_progress_handler(count, 1)
        return connection

    monkeypatch.setattr(_checkpoint, "_connect", connect)
    return steps


def _fill(path: Path, rows: int) -> None:
    with Checkpoint(path).open(judge) as store:
        put(store, 0, "first", "out")
    query(
        path,
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
        "INSERT INTO results SELECT i, 'fp', 'COMPLETED', 0.0, '[]', 'json', '0' FROM n",
    )


def test_opening_and_restoring_cost_the_same_whatever_the_size_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(tmp_path / "small", 3)
    _fill(tmp_path / "large", 20_000)
    steps = _count_sqlite_steps(monkeypatch)
    costs = []
    for name in ("small", "large"):
        steps[0] = 0
        with Checkpoint(tmp_path / name).open(judge) as store:
            opened = steps[0]
            assert get(store, 0, "first") is not None
            hit = steps[0] - opened
            assert get(store, 1, "another input") is None
            miss = steps[0] - opened - hit
        costs.append((opened, hit, miss))
    assert costs[0] == costs[1]


# -- JSON, pickle and trust (item 19) ------------------------------------------------------


class Label(str):
    pass


JSON_OUTPUTS: list[object] = [
    "relevant",
    3,
    -0.0,
    1e308,
    True,
    None,
    [],
    {"label": "relevant", "scores": [0.5, 1, None, False], "nested": {"x": ["y"]}},
    "lone surrogate \ud800",
]
PICKLED_OUTPUTS: list[object] = [
    ("x", 2),
    float("nan"),
    float("inf"),
    {1: "a"},
    Label("relevant"),
    OrderedDict(a=1),
    {"a": ("t",)},
    10**5000,
]


def _encodings(path: Path) -> list[str]:
    return [encoding for (encoding,) in query(path, "SELECT encoding FROM results ORDER BY idx")]


def test_outputs_json_gives_back_exactly_are_stored_as_json(path: Path) -> None:
    with Checkpoint(path).open(judge) as store:
        for index, output in enumerate(JSON_OUTPUTS):
            put(store, index, index, output)
    assert _encodings(path) == ["json"] * len(JSON_OUTPUTS)
    with Checkpoint(path).open(judge) as store:
        restored = [get(store, index, index) for index in range(len(JSON_OUTPUTS))]
    outputs = [None if r is None else r.output for r in restored]
    assert outputs == JSON_OUTPUTS
    assert [type(o) for o in outputs] == [type(o) for o in JSON_OUTPUTS]
    assert str(outputs[2]) == "-0.0"


def test_other_outputs_are_pickled_and_come_back_with_their_types(path: Path) -> None:
    shared = ["shared"]
    outputs = [*PICKLED_OUTPUTS, [shared, shared]]
    with Checkpoint(path).open(judge) as store:
        for index, output in enumerate(outputs):
            put(store, index, index, output)
    assert _encodings(path) == ["pickle"] * len(outputs)
    with Checkpoint(path).open(judge) as store:
        restored = [get(store, index, index) for index in range(len(outputs))]
    back = [None if r is None else r.output for r in restored]
    assert [type(o) for o in back] == [type(o) for o in outputs]
    assert back[0] == ("x", 2)
    assert back[-1][0] is back[-1][1]  # sharing survives, as JSON would not keep it


def _pickled_and_json(path: Path) -> None:
    with Checkpoint(path).open(judge) as store:
        put(store, 0, "a", ("pickled", 1))
        put(store, 1, "b", ["json", 1])


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o646, "others"), (0o664, "group"), (0o666, "group and others")],
)
def test_pickles_are_not_loaded_from_a_file_others_can_write(
    path: Path, mode: int, who: str
) -> None:
    _pickled_and_json(path)
    path.chmod(mode)
    with Checkpoint(path).open(judge) as store:
        assert get(store, 1, "b") == Restored(["json", 1], S.COMPLETED, 0.0, [])
        with pytest.raises(CheckpointError) as raised:
            get(store, 0, "a")
    assert str(raised.value) == (
        f"checkpoint {str(path)!r}: the output of input 0 is pickled, and unpickling can run "
        f"code, but the file is not trusted: {who} can write {str(path)!r} (mode "
        f"{stat.filemode(stat.S_IFREG | mode)}; chmod go-w fixes it). If only your own runs "
        f"wrote it, fix that or pass Checkpoint({str(path)!r}, trust=True); otherwise delete it"
    )
    with Checkpoint(path, trust=True).open(judge) as store:
        assert get(store, 0, "a") == Restored(("pickled", 1), S.COMPLETED, 0.0, [])


def test_pickles_are_not_loaded_from_a_directory_others_can_write_unless_sticky(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "run.checkpoint"
    _pickled_and_json(path)
    shared.chmod(0o777)
    with Checkpoint(path).open(judge) as store, pytest.raises(CheckpointError) as raised:
        get(store, 0, "a")
    assert f"others can write its directory {str(shared)!r} and so replace the file" in str(
        raised.value
    )
    shared.chmod(0o777 | stat.S_ISVTX)  # like /tmp: others cannot replace our file
    with Checkpoint(path).open(judge) as store:
        assert get(store, 0, "a") is not None


def test_pickles_are_not_loaded_from_a_file_of_another_user(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    _pickled_and_json(path)
    os.chown(path, 65534, 65534)
    with Checkpoint(path).open(judge) as store:
        assert get(store, 1, "b") is not None
        with pytest.raises(CheckpointError, match="is owned by user id 65534, not by you"):
            get(store, 0, "a")


# -- through the executors ----------------------------------------------------------------


def test_a_rerun_through_the_executors_restores_outputs_and_details(path: Path) -> None:
    calls: list[int] = []

    def square(item: int) -> tuple[int, int]:
        calls.append(item)
        if item == 3 and calls.count(3) == 1:
            raise FakeError("flaky")
        return (item, item * item)

    first = SyncExecutor(square, checkpoint=path, max_retries=1).run(range(5))
    second = SyncExecutor(square, checkpoint=path, max_retries=1).run(range(5))
    assert calls == [0, 1, 2, 3, 3, 4]
    assert first[0] == second[0] == [(i, i * i) for i in range(5)]
    assert [d.status for d in second[1]] == [S.COMPLETED] * 3 + [
        S.COMPLETED_WITH_RETRIES,
        S.COMPLETED,
    ]
    [error] = second[1][3].exceptions
    assert isinstance(error, RecordedError)
    assert (error.type_name, str(error)) == ("tests.fakes.FakeError", "flaky")


# -- kill -9 -------------------------------------------------------------------------------


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from evalexec._checkpoint import Checkpoint
    from evalexec.executors import ExecutionDetails

    def judge(item): return item
    judge.__module__, judge.__qualname__ = "tests.test_checkpoint", "judge"
    store = Checkpoint(sys.argv[1]).open(judge)
    for index in range(1_000_000):
        details = ExecutionDetails()
        if index % 3 == 0:
            details.log_exception(ValueError(f"retry {index}"))
        details.complete()
        details.execution_seconds = index / 4
        output = {"index": index, "pad": "x" * 4000}
        store.record(index, store.fingerprint(f"input {index}"), output, details)
        print(index, flush=True)
    """
)


def test_a_writer_killed_with_sigkill_keeps_every_recorded_input(path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert writer.stdout is not None
    printed: list[int] = []
    try:
        for line in writer.stdout:
            printed.append(int(line))
            if len(printed) == 300:
                break
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        rest, _ = writer.communicate(timeout=30)
    printed += [int(line) for line in rest.split()]
    assert writer.returncode == -signal.SIGKILL
    assert len(printed) >= 300
    assert printed == list(range(len(printed)))

    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    with Checkpoint(path).open(judge) as store:
        for index in printed:
            restored = get(store, index, f"input {index}")
            assert restored is not None, index
            assert restored.output == {"index": index, "pad": "x" * 4000}
            assert restored.seconds == index / 4
            expected = S.COMPLETED_WITH_RETRIES if index % 3 == 0 else S.COMPLETED
            assert restored.status is expected
        # the next run resumes: it writes on where the killed one stopped
        resumed = printed[-1] + 1
        put(store, resumed, f"input {resumed}", "resumed")
    with Checkpoint(path).open(judge) as store:
        assert get(store, resumed, f"input {resumed}") is not None
