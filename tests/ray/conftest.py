"""Fixtures for the Ray Data tests: a real local Ray, a real redis-server.

Tests marked ``ray`` need the ``ray`` extra (``pip install -e '.[test,ray]'``) and take
seconds each; they run only when asked for, with ``-m ray`` or ``EVALEXEC_RAY=1``
(.ci/run does so in a venv of their own). Without Ray they skip on a developer machine
and fail when ``CI=true``. Ray runs with 4 logical CPUs: at 2, Ray Data's checkpoint
filter (an actor asking for 1 CPU) and the read tasks wait on each other forever.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer, require_redis, start_server

RAY_CPUS = 4
"""Logical CPUs: the work is I/O-bound, and 2 deadlock Ray Data's checkpoint resume."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ray: runs a local Ray; selected with -m ray or EVALEXEC_RAY=1 (see .ci/run)"
    )


def _asked_for(config: pytest.Config) -> bool:
    """``-m ray`` (or an expression naming it, but not ``not ray``), or EVALEXEC_RAY=1."""
    chosen = re.search(r"(?<!not )\bray\b", config.option.markexpr or "") is not None
    return chosen or os.environ.get("EVALEXEC_RAY") == "1"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave this folder out of a run that did not ask for it: its modules import Ray,
    which the project's main test venv does not have."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return None if _asked_for(config) else True
    return None


def missing(what: str) -> None:
    """Skip for a missing component; fail when CI=true, where everything must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: the ray extra must be installed)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray for the module's tests, on a short temp path of its own (Ray's unix
    sockets need a short path), shut down and removed afterwards."""
    import ray

    folder = tempfile.mkdtemp(prefix="evx-ray-")
    ray.init(
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
        _temp_dir=folder,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_server(require_redis())
    yield server
    server.close()


@pytest.fixture
def key() -> str:
    return f"ray-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client()
    yield client
    client.close()
