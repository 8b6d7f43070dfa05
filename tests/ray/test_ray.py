"""evalexec.ray: EvalBatches on a real local Ray (Ray Data actor pools), with a real
redis-server for the shared limiter.

The tests at the top call EvalBatches directly (as an actor would) and need only
pyarrow; the ones below run Ray jobs. Everything the actors run is in tests/ray/jobs.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ray.jobs import Provider

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    from evalexec.ray import COLUMNS, BatchIncomplete, EvalBatches, QuotaExhausted
except ImportError as exc:  # pragma: no cover - depends on the venv
    if os.environ.get("CI") == "true":
        raise ImportError(f"CI=true: the ray extra must be installed ({exc})") from exc
    pytest.skip(
        f"Ray Data is not installed ({exc}): pip install -e '.[test,ray]'", allow_module_level=True
    )

from evalexec.limits import RedisLimiter
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.ray,
    # Ray's own DataContext sets its deprecated fields itself when it is created.
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*"),
]

ACTOR_CPUS = 0.25  # the work is I/O-bound: a quarter of a CPU per actor
HELD: dict[str, Any] = {"actors": 2, "one_block_at_a_time": True}
"""For a job one of whose blocks is held until the others are written."""


def table(ids: list[int]) -> Any:
    return pa.table({"id": pa.array(ids, type=pa.int64())})


def rows_by_id(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "each id comes back once"
    return by_id


def expected_row(provider: Provider, row: int, max_retries: int) -> dict[str, Any]:
    if row in provider.fail:
        return {
            "output": None,
            "status": "FAILED",
            "error": f"FakeFailure: row {row} is refused",
            "attempts": max_retries + 1,
        }
    if row in provider.flaky:
        return {
            "output": f"answer {row}",
            "status": "COMPLETED WITH RETRIES",
            "error": None,
            "attempts": 2,
        }
    return {"output": f"answer {row}", "status": "COMPLETED", "error": None, "attempts": 1}


def on_actors(
    ds: Any, fn: Any, *, actors: int = 1, one_block_at_a_time: bool = False, **kwargs: Any
) -> Any:
    """`ds` through EvalBatches on a pool of `actors`; with `one_block_at_a_time`, Ray
    queues no second block on an actor that is busy with one."""
    tasks = {"max_tasks_in_flight_per_actor": 1} if one_block_at_a_time else {}
    return ds.map_batches(
        EvalBatches,
        fn_constructor_kwargs={"fn": fn, "input_column": "id", **kwargs},
        compute=ray.data.ActorPoolStrategy(size=actors, **tasks),
        batch_format="pyarrow",
        num_cpus=ACTOR_CPUS,
    )


@pytest.fixture
def folder(tmp_path: Path) -> str:
    return str(tmp_path)


@pytest.fixture
def data_context() -> Iterator[Any]:
    """Ray Data's DataContext, with what a test changes put back afterwards."""
    ctx = ray.data.DataContext.get_current()
    saved = {
        name: getattr(ctx, name)
        for name in ("checkpoint_config", "raise_original_map_exception")
        if hasattr(ctx, name)  # Ray Data without job checkpoints has no checkpoint_config
    }
    yield ctx
    for name, value in saved.items():
        setattr(ctx, name, value)


# -- one actor's view: EvalBatches called directly ----------------------------------------


async def test_ray_data_gets_one_table_per_batch_from_the_async_generator(folder: str) -> None:
    outs = [out async for out in EvalBatches(Provider(folder), input_column="id")(table([0, 1]))]
    assert [out.column("output").to_pylist() for out in outs] == [["answer 0", "answer 1"]]


async def test_each_row_comes_back_with_its_output_status_error_attempts_and_seconds(
    folder: str,
) -> None:
    provider = Provider(folder, fail=frozenset({2}), flaky=frozenset({1}))
    evaluator = EvalBatches(provider, input_column="id", max_retries=3)
    out = await evaluator.evaluate(table([0, 1, 2, 3]))
    assert out.column_names == ["id", *COLUMNS]
    assert out.schema.field("output").type == pa.string()
    assert out.schema.field("error").type == pa.string()
    assert out.schema.field("attempts").type == pa.int64()
    assert out.schema.field("seconds").type == pa.float64()
    for row in out.to_pylist():
        seconds = row.pop("seconds")
        assert seconds >= 0.0
        assert row == {"id": row["id"], **expected_row(provider, row["id"], 3)}
    assert Counter(provider.calls()) == {0: 1, 1: 2, 2: 4, 3: 1}


@pytest.mark.looptime
async def test_batches_run_at_once_on_one_actor_share_its_concurrency() -> None:
    inflight = 0
    peak = 0

    async def slow(row: int) -> int:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(1.0)
        inflight -= 1
        return row

    evaluator = EvalBatches(slow, input_column="id", concurrency=4)
    batches = [table(list(range(start, start + 10))) for start in (0, 10, 20)]
    outs = await asyncio.gather(*(evaluator.evaluate(batch) for batch in batches))
    assert peak == 4
    assert [out.column("output").to_pylist() for out in outs] == [
        list(range(start, start + 10)) for start in (0, 10, 20)
    ]


@pytest.mark.looptime
async def test_batches_at_once_on_one_actor_take_as_long_as_one_batch_of_all_their_rows() -> None:
    async def slow(row: int) -> int:
        await asyncio.sleep(1.0)
        return row

    evaluator = EvalBatches(slow, input_column="id", concurrency=4)
    loop = asyncio.get_running_loop()
    start = loop.time()
    batches = [table(list(range(first, first + 10))) for first in (0, 10, 20)]
    await asyncio.gather(*(evaluator.evaluate(batch) for batch in batches))
    assert loop.time() - start == 8.0  # 30 calls, 4 at a time: 8 rounds of 1 s


async def test_a_plain_function_runs_on_worker_threads(folder: str) -> None:
    provider = Provider(folder, fail=frozenset({1}))
    evaluator = EvalBatches(provider.sync, input_column="id", max_retries=0)
    out = await evaluator.evaluate(table([0, 1]))
    assert out.column("status").to_pylist() == ["COMPLETED", "FAILED"]
    assert out.column("error").to_pylist() == [None, "FakeFailure: row 1 is refused"]


@pytest.mark.parametrize("batch_format", ["pandas", "numpy"])
async def test_a_pandas_or_numpy_batch_comes_back_as_an_arrow_table(
    folder: str, batch_format: str
) -> None:
    source = pa.table({"id": [0, 1], "text": ["a", "b"]})
    batch = (
        source.to_pandas()
        if batch_format == "pandas"
        else {name: source.column(name).to_numpy() for name in source.column_names}
    )
    out = await EvalBatches(Provider(folder), input_column="id").evaluate(batch)
    assert isinstance(out, pa.Table)
    assert out.column_names == ["id", "text", *COLUMNS]
    assert out.column("id").to_pylist() == [0, 1]
    assert out.column("output").to_pylist() == ["answer 0", "answer 1"]
    assert out.schema.field("error").type == pa.string()


async def test_without_an_input_column_fn_receives_the_whole_row() -> None:
    async def both(row: dict[str, Any]) -> str:
        return f"{row['id']}:{row['text']}"

    out = await EvalBatches(both, input_column=None).evaluate(pa.table({"id": [7], "text": ["x"]}))
    assert out.column("output").to_pylist() == ["7:x"]


async def test_outputs_arrow_cannot_hold_are_refused_with_a_way_out() -> None:
    async def mixed(row: int) -> Any:
        return {"a": 1} if row else "text"

    with pytest.raises(TypeError, match=r"pass output_json=True") as info:
        await EvalBatches(mixed, input_column="id").evaluate(table([0, 1]))
    assert "output types: dict, str" in str(info.value)


async def test_an_output_type_holds_even_for_a_batch_whose_rows_all_failed(folder: str) -> None:
    provider = Provider(folder, fail=frozenset({0, 1}))
    inferred = await EvalBatches(provider, input_column="id", max_retries=0).evaluate(table([0, 1]))
    assert inferred.schema.field("output").type == pa.null()
    typed = EvalBatches(provider, input_column="id", max_retries=0, output_type=pa.string())
    out = await typed.evaluate(table([0, 1]))
    assert out.schema.field("output").type == pa.string()
    assert out.column("output").to_pylist() == [None, None]


async def test_output_json_stores_each_output_as_json_text() -> None:
    async def mixed(row: int) -> Any:
        return {"a": [row]} if row else "text"

    out = await EvalBatches(mixed, input_column="id", output_json=True).evaluate(table([0, 1]))
    assert out.schema.field("output").type == pa.string()
    assert [json.loads(text) for text in out.column("output").to_pylist()] == ["text", {"a": [1]}]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("exit_on_error", "a FAILED row is data: EvalBatches records it and goes on"),
        (
            "checkpoint",
            "on Ray, resume is Ray Data's own checkpoint (DataContext.checkpoint_config)",
        ),
        ("tqdm_bar_format", "an actor has no terminal to draw a bar on"),
    ],
)
def test_executor_arguments_that_make_no_sense_on_ray_are_refused_by_name(
    name: str, message: str
) -> None:
    with pytest.raises(TypeError) as info:
        EvalBatches(str, **{name: None})
    assert str(info.value) == f"EvalBatches does not take {name}=: {message}"


async def test_an_empty_batch_comes_back_empty_with_the_added_columns() -> None:
    out = await EvalBatches(str).evaluate(pa.table({}))
    assert out.num_rows == 0
    assert out.column_names == list(COLUMNS)


async def test_a_missing_input_column_is_named_with_the_columns_there_are() -> None:
    with pytest.raises(
        ValueError, match=r"^EvalBatches: the batch has no column 'input' \(it has id\)"
    ):
        await EvalBatches(str).evaluate(table([0]))


async def test_a_batch_that_already_has_an_added_column_is_refused() -> None:
    batch = pa.table({"input": ["a"], "status": ["new"]})
    with pytest.raises(ValueError, match=r"already has status; rename them first"):
        await EvalBatches(str).evaluate(batch)


async def test_a_quota_error_ends_the_batch_and_every_later_batch_of_the_actor(
    folder: str,
) -> None:
    evaluator = EvalBatches(Provider(folder, quota=frozenset({0})), input_column="id")
    with pytest.raises(QuotaExhausted, match=r"the quota is exhausted") as info:
        await evaluator.evaluate(table([0]))
    assert info.value.reason == "the provider says the quota is exhausted; retrying cannot help"
    with pytest.raises(QuotaExhausted) as later:
        await evaluator.evaluate(table([1, 2]))
    assert later.value.not_run == 2


def test_the_stop_errors_cross_processes_with_their_message() -> None:
    for error in (QuotaExhausted("no quota", 3), BatchIncomplete("a misuse", 2)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.not_run == error.not_run


# -- jobs on a local Ray --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_on_ray_ok_failed_and_retried_rows_are_all_data(
    ray_cluster: Any, folder: str, kind: str
) -> None:
    provider = Provider(folder, fail=frozenset({7}), flaky=frozenset({3, 11}))
    fn = provider if kind == "async" else provider.sync
    ds = on_actors(ray.data.range(20, override_num_blocks=2), fn, max_retries=2)
    by_id = rows_by_id(ds.take_all())
    assert sorted(by_id) == list(range(20))
    for row, got in by_id.items():
        assert got["seconds"] >= 0.0
        assert {k: got[k] for k in ("output", "status", "error", "attempts")} == expected_row(
            provider, row, 2
        )


def test_calls_in_flight_across_two_actors_never_exceed_the_shared_max_inflight(
    ray_cluster: Any, redis_server: RedisServer, raw: Any, key: str, folder: str
) -> None:
    limiter = RedisLimiter(redis_server.url, f"{key}:limit", max_inflight=3)
    provider = Provider(folder, latency=0.05, redis_url=redis_server.url, key=key)
    ds = on_actors(
        ray.data.range(48, override_num_blocks=4),
        provider,
        actors=2,
        concurrency=4,
        limiter=limiter,
    )
    rows = ds.take_all()
    assert {row["status"] for row in rows} == {"COMPLETED"}
    assert len(provider.pids()) == 2  # both actors called the provider
    assert provider.peak(raw) == 3  # 2 actors x concurrency 4 would allow 8


def test_batches_ray_runs_at_once_on_one_actor_share_its_concurrency(
    ray_cluster: Any, redis_server: RedisServer, raw: Any, key: str, folder: str
) -> None:
    # One block of 48 rows in batches of 4: one batch alone never has more than 4 calls
    # in flight, and the 4 batches Ray runs at once with an executor each would have 16.
    provider = Provider(folder, latency=0.3, redis_url=redis_server.url, key=key)
    ds = ray.data.range(48, override_num_blocks=1).map_batches(
        EvalBatches,
        fn_constructor_kwargs={"fn": provider, "input_column": "id", "concurrency": 6},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=4,
        batch_format="pyarrow",
        num_cpus=ACTOR_CPUS,
    )
    assert sorted(row["id"] for row in ds.take_all()) == list(range(48))
    assert provider.peak(raw) == 6


def test_a_rerun_after_a_crash_in_the_last_block_calls_only_that_block(
    ray_cluster: Any, data_context: Any, tmp_path: Path
) -> None:
    checkpoint = pytest.importorskip(
        "ray.data.checkpoint", reason="this Ray Data has no job checkpoints (ray.data.checkpoint)"
    )
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "out"
    data_context.checkpoint_config = checkpoint.CheckpointConfig(
        id_column="id", checkpoint_path=str(checkpoints), delete_checkpoint_on_success=False
    )
    # 10 blocks of 20 rows; the last row of the last block finds the quota exhausted
    # once the other 9 blocks are written and checkpointed (by the other actor: each
    # actor holds one block at a time, so none waits behind the one that is held).
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Provider(
        str(tmp_path / "first"), quota=frozenset({199}), hold_quota_for=(str(checkpoints), 9)
    )
    with pytest.raises(Exception, match=r"evalexec\.ray\.QuotaExhausted"):
        on_actors(ray.data.range(200, override_num_blocks=10), first, **HELD).write_parquet(
            str(out)
        )
    assert set(first.calls()) == set(range(200))

    second = Provider(str(tmp_path / "second"))  # the quota was raised
    on_actors(ray.data.range(200, override_num_blocks=10), second).write_parquet(str(out))
    assert sorted(second.calls()) == list(range(180, 200))
    written = pq.read_table(out).to_pylist()
    assert sorted(rows_by_id(written)) == list(range(200))
    assert {row["status"] for row in written} == {"COMPLETED"}


def unwritten(ds: Any, written: Path, id_column: str = "id") -> Any:
    """The resume recipe for a Ray Data without job checkpoints (as the README gives it):
    drop the rows whose ids the output already holds."""
    import pyarrow.compute as pc

    if not any(written.glob("*.parquet")):
        return ds
    done = pq.read_table(written, columns=[id_column]).column(id_column).combine_chunks()

    def keep(batch: Any) -> Any:
        return batch.filter(pc.invert(pc.is_in(batch[id_column], value_set=done)))

    return ds.map_batches(keep, batch_format="pyarrow")


def test_without_job_checkpoints_filtering_out_written_ids_resumes_with_the_last_block(
    ray_cluster: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Provider(str(tmp_path / "first"), quota=frozenset({199}), hold_quota_for=(str(out), 9))
    job = on_actors(unwritten(ray.data.range(200, override_num_blocks=10), out), first, **HELD)
    with pytest.raises(Exception, match=r"evalexec\.ray\.QuotaExhausted"):
        job.write_parquet(str(out))
    second = Provider(str(tmp_path / "second"))
    on_actors(unwritten(ray.data.range(200, override_num_blocks=10), out), second).write_parquet(
        str(out)
    )
    assert sorted(second.calls()) == list(range(180, 200))
    written = pq.read_table(out).to_pylist()
    assert sorted(rows_by_id(written)) == list(range(200))
    assert {row["status"] for row in written} == {"COMPLETED"}


def test_an_actor_killed_mid_run_is_replaced_and_the_job_completes(
    ray_cluster: Any, redis_server: RedisServer, key: str, folder: str
) -> None:
    # The dead actor held every slot of the shared limiter: the job can only finish once
    # its leases expire.
    limiter = RedisLimiter(redis_server.url, key, max_inflight=4, lease_seconds=1.0)
    provider = Provider(folder, latency=0.02, exit=frozenset({5}))
    ds = on_actors(
        ray.data.range(40, override_num_blocks=4), provider, concurrency=4, limiter=limiter
    )
    by_id = rows_by_id(ds.take_all())
    assert sorted(by_id) == list(range(40))
    assert {row["status"] for row in by_id.values()} == {"COMPLETED"}
    assert by_id[5]["attempts"] == 1  # the replacement's call; the dead one left no trace
    assert Counter(provider.calls())[5] == 2
    assert len(provider.pids()) == 2  # the killed actor and its replacement


def test_a_quota_stop_on_one_actor_ends_the_job_and_stops_every_process(
    ray_cluster: Any,
    data_context: Any,
    redis_server: RedisServer,
    raw: Any,
    key: str,
    folder: str,
) -> None:
    data_context.raise_original_map_exception = True
    limiter = RedisLimiter(redis_server.url, key)
    provider = Provider(folder, latency=0.02, quota=frozenset({3}))
    ds = on_actors(
        ray.data.range(400, override_num_blocks=8),
        provider,
        actors=2,
        concurrency=2,
        limiter=limiter,
    )
    with pytest.raises(QuotaExhausted, match=r"the job stops on purpose"):
        ds.take_all()
    assert (
        raw.get(f"{{{key}}}:stop")
        == "the provider says the quota is exhausted; retrying cannot help"
    )
    assert len(provider.calls()) < 400  # the job ended well before the last row
