"""The checkpoint store: what it keeps, what it refuses, and what survives a kill -9."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evalexec._checkpoint import Checkpoint, CheckpointError, RecordedError
from evalexec.executors import ExecutionDetails, ExecutionStatus
from tests.fakes import FakeError

S = ExecutionStatus


def finished(
    status: ExecutionStatus, seconds: float = 0.0, exceptions: list[BaseException] | None = None
) -> ExecutionDetails:
    details = ExecutionDetails()
    for exc in exceptions or []:
        details.log_exception(exc)
    details.status = status
    details.execution_seconds = seconds
    return details


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on the file with a plain sqlite3 connection, and close it."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(sql).fetchall()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run.checkpoint"


@pytest.fixture
def checkpoint(path: Path) -> Iterator[Checkpoint]:
    with Checkpoint(path) as opened:
        yield opened


# -- round trips ---------------------------------------------------------------------------


def test_outputs_and_details_survive_closing_and_reopening(path: Path) -> None:
    errors: list[BaseException] = [ValueError("bad json"), FakeError("flaky"), TimeoutError("slow")]
    with Checkpoint(path) as checkpoint:
        checkpoint.record(0, "a", {"label": "relevant", "score": 0.75}, finished(S.COMPLETED, 1.25))
        checkpoint.record(1, "b", ["x", 2], finished(S.COMPLETED_WITH_RETRIES, 4.5, errors))
        checkpoint.record(2, "c", None, finished(S.COMPLETED, 0.5))

    with Checkpoint(path) as checkpoint:
        first = checkpoint.restore(0, "a")
        second = checkpoint.restore(1, "b")
        third = checkpoint.restore(2, "c")

    assert first is not None
    assert first[0] == {"label": "relevant", "score": 0.75}
    assert first[1].status is S.COMPLETED
    assert first[1].execution_seconds == 1.25
    assert first[1].exceptions == []

    assert second is not None
    output, details = second
    assert output == ["x", 2]
    assert details.status is S.COMPLETED_WITH_RETRIES
    assert details.execution_seconds == 4.5
    assert all(type(e) is RecordedError for e in details.exceptions)
    restored = [(e.type_name, str(e)) for e in details.exceptions if isinstance(e, RecordedError)]
    assert restored == [
        ("ValueError", "bad json"),
        ("tests.fakes.FakeError", "flaky"),
        ("TimeoutError", "slow"),
    ]

    assert third is not None
    assert third[0] is None  # a stored None output is a hit, not a miss


def test_a_record_is_visible_to_restore_in_the_same_session(checkpoint: Checkpoint) -> None:
    assert checkpoint.restore(0, "a") is None  # loads the (empty) index
    checkpoint.record(0, "a", "out:a", finished(S.COMPLETED))
    restored = checkpoint.restore(0, "a")
    assert restored is not None
    assert restored[0] == "out:a"


def test_an_index_that_was_never_stored_is_not_restored(checkpoint: Checkpoint) -> None:
    checkpoint.record(0, "a", "out:a", finished(S.COMPLETED))
    assert checkpoint.restore(1, "a") is None


def test_recording_an_index_again_replaces_it(checkpoint: Checkpoint) -> None:
    checkpoint.record(0, "old", "out:old", finished(S.COMPLETED))
    checkpoint.record(0, "new", "out:new", finished(S.COMPLETED, 2.0))
    assert checkpoint.restore(0, "old") is None
    restored = checkpoint.restore(0, "new")
    assert restored is not None
    assert restored[0] == "out:new"
    assert restored[1].execution_seconds == 2.0


def test_a_recorded_error_keeps_its_type_name_when_recorded_again(checkpoint: Checkpoint) -> None:
    earlier = RecordedError("openai._exceptions.RateLimitError", "429 slow down")
    checkpoint.record(0, "a", "out", finished(S.COMPLETED_WITH_RETRIES, 1.0, [earlier]))
    restored = checkpoint.restore(0, "a")
    assert restored is not None
    [error] = restored[1].exceptions
    assert isinstance(error, RecordedError)
    assert (error.type_name, str(error)) == ("openai._exceptions.RateLimitError", "429 slow down")


def test_recorded_errors_can_be_pickled_with_their_details() -> None:
    error = RecordedError("ValueError", "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.type_name, str(copy)) == (RecordedError, "ValueError", "bad")
    assert repr(copy) == "RecordedError('ValueError', 'bad')"


# -- what is not stored --------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.FAILED, S.DID_NOT_RUN])
def test_inputs_that_did_not_complete_are_not_stored(path: Path, status: ExecutionStatus) -> None:
    with Checkpoint(path) as checkpoint:
        checkpoint.record(0, "a", "fallback", finished(status, 3.0, [FakeError("no")]))
        assert checkpoint.restore(0, "a") is None
    with Checkpoint(path) as checkpoint:
        assert checkpoint.restore(0, "a") is None
    assert query(path, "SELECT count(*) FROM results") == [(0,)]


def test_a_changed_input_is_not_restored(checkpoint: Checkpoint) -> None:
    checkpoint.record(0, {"question": "q1", "context": "c"}, "yes", finished(S.COMPLETED))
    assert checkpoint.restore(0, {"question": "q1", "context": "C"}) is None
    assert checkpoint.restore(0, {"question": "q1"}) is None
    assert checkpoint.restore(0, {"context": "c", "question": "q1"}) is not None


def _explode() -> None:
    raise RuntimeError("this class is gone")


class GoneOnLoad:
    """Pickles fine, but cannot be unpickled (as when its class was removed since)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


def test_an_output_that_cannot_be_loaded_any_more_is_run_again_with_one_warning(
    checkpoint: Checkpoint, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint.record(0, "a", GoneOnLoad(), finished(S.COMPLETED))
    checkpoint.record(1, "b", GoneOnLoad(), finished(S.COMPLETED))
    with caplog.at_level(logging.WARNING, logger="evalexec"):
        assert checkpoint.restore(0, "a") is None
        assert checkpoint.restore(1, "b") is None
    [record] = caplog.records
    assert "stored output of input 0 cannot be loaded" in record.getMessage()
    assert "this class is gone" in record.getMessage()


# -- outputs that cannot be stored ---------------------------------------------------------


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
    checkpoint: Checkpoint, output: object, type_name: str
) -> None:
    with pytest.raises(CheckpointError) as raised:
        checkpoint.record(7, "a", output, finished(S.COMPLETED))
    message = str(raised.value)
    assert "cannot store the output of input 7" in message
    assert f"its type {type_name} cannot be pickled" in message
    assert "return picklable values" in message
    assert checkpoint.restore(7, "a") is None
    checkpoint.record(8, "b", "fine", finished(S.COMPLETED))  # still usable afterwards
    assert checkpoint.restore(8, "b") is not None


# -- opening files -------------------------------------------------------------------------


def test_a_new_checkpoint_is_a_wal_sqlite_file_marked_as_evalexec(path: Path) -> None:
    Checkpoint(path).close()
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "PRAGMA user_version") == [(1,)]
    assert query(path, "PRAGMA application_id") == [(0x65766578,)]
    assert query(path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("results",)]


def test_an_empty_file_becomes_a_checkpoint(path: Path) -> None:
    path.touch()
    with Checkpoint(path) as checkpoint:
        checkpoint.record(0, "a", "out", finished(S.COMPLETED))
        assert checkpoint.restore(0, "a") is not None


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(path: Path) -> None:
    path.write_text("question,answer\nwhat?,42\n" * 100)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"is not an evalexec checkpoint \(not a SQLite"):
        Checkpoint(path)
    assert path.read_bytes() == before


def test_a_database_of_another_application_is_refused_and_left_alone(path: Path) -> None:
    query(path, "CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"is not an evalexec checkpoint .* another app"):
        Checkpoint(path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_checkpoint_of_a_newer_schema_is_refused(path: Path) -> None:
    Checkpoint(path).close()
    query(path, "PRAGMA user_version = 2")
    with pytest.raises(CheckpointError, match=r"written by a newer evalexec \(schema version 2"):
        Checkpoint(path)


def test_a_path_that_cannot_be_opened_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot open checkpoint"):
        Checkpoint(tmp_path / "no such directory" / "run.checkpoint")


def test_close_is_idempotent_and_a_closed_checkpoint_says_so(path: Path) -> None:
    checkpoint = Checkpoint(path)
    checkpoint.close()
    checkpoint.close()
    assert repr(checkpoint) == f"Checkpoint({str(path)!r}, closed)"
    with pytest.raises(CheckpointError, match="is closed"):
        checkpoint.restore(0, "a")
    with pytest.raises(CheckpointError, match="is closed"):
        checkpoint.record(0, "a", "out", finished(S.COMPLETED))


# -- fingerprints --------------------------------------------------------------------------


def test_fingerprints_ignore_dict_insertion_order() -> None:
    one = {"question": "q", "context": {"a": 1, "b": [1, 2]}}
    other = {"context": {"b": [1, 2], "a": 1}, "question": "q"}
    assert Checkpoint.fingerprint(one) == Checkpoint.fingerprint(other)


def test_fingerprints_tell_apart_values_that_json_or_equality_would_merge() -> None:
    values: list[object] = [1, 1.0, True, "1", b"1", (1,), [1], {1}, {1: "a"}, {"1": "a"}, None]
    assert len({Checkpoint.fingerprint(v) for v in values}) == len(values)


def test_fingerprints_of_mixed_key_types_and_cycles_do_not_fail() -> None:
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    assert Checkpoint.fingerprint({1: "a", "b": 2, None: 3}) == Checkpoint.fingerprint(
        {None: 3, "b": 2, 1: "a"}
    )
    assert len(Checkpoint.fingerprint(cyclic)) == 64


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Row:
    question: str
    tags: set[str]


def test_fingerprints_of_enums_and_dataclasses_follow_their_values() -> None:
    assert Checkpoint.fingerprint(Row("q", {"a", "b"})) == Checkpoint.fingerprint(
        Row("q", {"b", "a"})
    )
    assert Checkpoint.fingerprint(Row("q", {"a"})) != Checkpoint.fingerprint(Row("Q", {"a"}))
    assert Checkpoint.fingerprint(Colour.RED) != Checkpoint.fingerprint(1)


def test_fingerprints_see_past_the_abbreviated_reprs_of_numpy_and_pandas() -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    array = np.zeros(5000)
    changed = array.copy()
    changed[2500] = 1.0
    assert repr(array) == repr(changed)
    assert Checkpoint.fingerprint(array) != Checkpoint.fingerprint(changed)

    text = "the context " * 20
    row = pd.Series({"question": "q", "context": text + "A"})
    other = pd.Series({"question": "q", "context": text + "B"})
    assert repr(row) == repr(other)
    assert Checkpoint.fingerprint(row) != Checkpoint.fingerprint(other)
    assert Checkpoint.fingerprint(row) == Checkpoint.fingerprint(row.copy())


_FINGERPRINT_SCRIPT = """
import sys
from evalexec._checkpoint import Checkpoint
item = {"tags": {"alpha", "beta", "gamma", "delta"}, "n": 12, "q": "what?", "x": (1.5, None)}
print(Checkpoint.fingerprint(item))
"""


def test_fingerprints_are_the_same_in_every_process_whatever_the_hash_seed() -> None:
    prints = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        prints.add(result.stdout.strip())
    assert len(prints) == 1
    [fingerprint] = prints
    assert len(fingerprint) == 64


# -- kill -9 -------------------------------------------------------------------------------


_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from evalexec._checkpoint import Checkpoint
    from evalexec.executors import ExecutionDetails

    checkpoint = Checkpoint(sys.argv[1])
    for index in range(1_000_000):
        details = ExecutionDetails()
        if index % 3 == 0:
            details.log_exception(ValueError(f"retry {index}"))
        details.complete()
        details.execution_seconds = index / 4
        checkpoint.record(index, f"input {index}", {"index": index, "pad": "x" * 4000}, details)
        print(index, flush=True)
    """
)


def test_a_writer_killed_with_sigkill_keeps_every_recorded_input(path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        text=True,
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
    with Checkpoint(path) as checkpoint:
        for index in printed:
            restored = checkpoint.restore(index, f"input {index}")
            assert restored is not None, index
            output, details = restored
            assert output == {"index": index, "pad": "x" * 4000}
            assert details.execution_seconds == index / 4
            expected = S.COMPLETED_WITH_RETRIES if index % 3 == 0 else S.COMPLETED
            assert details.status is expected
        # the next run resumes: it writes on where the killed one stopped
        resumed = printed[-1] + 1
        checkpoint.record(resumed, f"input {resumed}", "resumed", finished(S.COMPLETED))
    with Checkpoint(path) as checkpoint:
        assert checkpoint.restore(resumed, f"input {resumed}") is not None
