"""Fixtures for tests against real parts: Phoenix, the OpenAI SDK, local servers.

Tests marked ``integration`` need the ``phoenix-test`` extra (the Phoenix server and client,
openai) and take seconds; they run only when asked for, with ``-m integration`` or
``EVALEXEC_INTEGRATION=1`` (.ci/run does so in a venv of their own). With the Phoenix
server installed, pass ``-p no:phoenix``: phoenix.client's pytest plugin imports the server
package at start-up, whose dependencies warn. A component that is missing skips a test on
a developer machine and fails it when ``CI=true``. Servers listen on 127.0.0.1 only and
are stopped by PID.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import evalexec.phoenix
from tests.integration.servers import LLMServer, PhoenixServer, free_port, stop

HERE = Path(__file__).resolve().parent
PHOENIX_START_TIMEOUT = 120.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: runs real servers; selected with -m integration (see .ci/run)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave integration tests out of a run that did not ask for them."""
    if (
        "integration" in (config.option.markexpr or "")
        or os.environ.get("EVALEXEC_INTEGRATION") == "1"
    ):
        return
    chosen = [item for item in items if item.get_closest_marker("integration") is None]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen


_FIGURES = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("evalexec.phoenix figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report a measured figure: printed in the run's summary, whatever the capture mode."""

    def report(line: str) -> None:
        request.config.stash.setdefault(_FIGURES, []).append(line)
        print(line)

    return report


def missing(what: str) -> None:
    """Skip for a missing component; fail when CI=true, where everything must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true: integration components must be installed)")
    pytest.skip(what)


def _import_quietly(module: str) -> ModuleType:
    """Import a third-party module with its own deprecation warnings silenced: the Phoenix
    server package's dependencies (ldap3 on pyasn1, ...) warn when imported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(module)


def _need(module: str, install: str) -> ModuleType:
    try:
        return _import_quietly(module)
    except ImportError as exc:
        missing(f"{module} is not importable ({exc}); pip install {install}")
        raise  # unreachable: missing() raises


@pytest.fixture
def need() -> Callable[[str, str], ModuleType]:
    """``need(module, pip_name)``: the module, or a skip (a failure when CI=true)."""
    return _need


@pytest.fixture
def phoenix_evals() -> ModuleType:
    """``phoenix.evals`` with its evaluators module imported."""
    _need("phoenix.evals.evaluators", "arize-phoenix-evals")
    return _need("phoenix.evals", "arize-phoenix-evals")


@pytest.fixture
def phoenix_modules(phoenix_evals: ModuleType) -> tuple[str, ...]:
    """The Phoenix modules known to hold executors, of the distributions installed here."""
    present = ["phoenix.evals.executors", "phoenix.evals.evaluators"]
    try:
        _import_quietly("phoenix.client.resources.experiments")
    except ImportError:
        return tuple(present)
    return (*present, "phoenix.client.utils.executors", "phoenix.client.resources.experiments")


@pytest.fixture
def phoenix_client() -> ModuleType:
    """``phoenix.client`` with its experiments module imported."""
    _need("phoenix.client.resources.experiments", "arize-phoenix-client")
    return _need("phoenix.client", "arize-phoenix-client")


@pytest.fixture
def restore_phoenix() -> Iterator[None]:
    """Whatever a test installs is uninstalled after it."""
    evalexec.phoenix.uninstall()
    yield
    evalexec.phoenix.uninstall()


# --------------------------------------------------------------------------------------
# A local OpenAI-compatible server


@pytest.fixture
def llm_server() -> Iterator[Callable[..., LLMServer]]:
    """Start ``openai_server.py`` with ``(latency=..., rpm=...)``; every one started is
    stopped by PID at the end of the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(*, latency: float = 0.0, rpm: int = 0) -> LLMServer:
        command = [sys.executable, str(HERE / "openai_server.py"), "--latency", str(latency)]
        command += ["--rpm", str(rpm)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout is not None
        first = process.stdout.readline()  # the server prints its port as soon as it listens
        if not first.startswith("PORT "):
            pytest.fail(f"the local OpenAI server did not start: {first!r}")
        port = int(first.split()[1])
        return LLMServer(f"http://127.0.0.1:{port}/v1", latency, rpm, process.pid)

    yield start
    for process in processes:
        stop(process)


# --------------------------------------------------------------------------------------
# A real Phoenix server (arize-phoenix), SQLite in a temporary working directory


def _phoenix_command() -> list[str]:
    script = Path(sys.executable).with_name("phoenix")
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("phoenix")
    if found is None:
        missing("the Phoenix server is not installed; pip install arize-phoenix")
    return [str(found), "serve"]


@pytest.fixture(scope="session")
def phoenix_server(request: pytest.FixtureRequest) -> Iterator[PhoenixServer]:
    """`phoenix serve` on free ports of 127.0.0.1, ready when /healthz answers."""
    _need("phoenix.server.main", "arize-phoenix")
    command = _phoenix_command()
    workdir = tempfile.mkdtemp(prefix="evalexec-phoenix-")
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": workdir,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    env.pop("PHOENIX_SQL_DATABASE_URL", None)
    env.pop("PHOENIX_COLLECTOR_ENDPOINT", None)
    log = Path(workdir, "server.log").open("w")  # noqa: SIM115 -- open for the server's life
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"phoenix serve exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(base_url + "/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - started > PHOENIX_START_TIMEOUT:
                pytest.fail(f"phoenix serve was not ready in {PHOENIX_START_TIMEOUT:.0f} s")
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        line = f"phoenix serve (SQLite) ready in {elapsed:.1f} s at {base_url}"
        request.config.stash.setdefault(_FIGURES, []).append(line)
        yield PhoenixServer(base_url, process.pid, elapsed)
    finally:
        stop(process)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
