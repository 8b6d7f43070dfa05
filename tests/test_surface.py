"""The public surface: the names, signatures, attributes and semantics Phoenix users rely on."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import pickle
import signal
import subprocess
import sys
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import evalexec
from evalexec import exceptions, executors
from evalexec.executors import (
    AsyncExecutor,
    ConcurrencyController,
    ExecutionDetails,
    ExecutionStatus,
    SyncExecutor,
    Unset,
    _unset,
    get_executor_on_sync_context,
)

ROOT = Path(__file__).resolve().parent.parent

P = inspect.Parameter
POS = P.POSITIONAL_OR_KEYWORD
KW = P.KEYWORD_ONLY
REQUIRED = P.empty
UNSET_DEFAULT = object()  # stands for "the default is the `_unset` sentinel itself"

Expected = list[tuple[str, Any, Any]]  # (name, kind, default)


async def agen(item: Any) -> Any:
    return item


# -- names --------------------------------------------------------------------------------

EXECUTORS_ALL = [
    "AsyncExecutor",
    "ConcurrencyController",
    "ExecutionDetails",
    "ExecutionStatus",
    "Executor",
    "SyncExecutor",
    "Unset",
    "get_executor_on_sync_context",
]


def test_executors_all_is_exactly_the_phoenix_names() -> None:
    assert set(executors.__all__) == set(EXECUTORS_ALL)
    assert executors.__all__ == sorted(executors.__all__)
    assert len(executors.__all__) == len(EXECUTORS_ALL)


@pytest.mark.parametrize("name", EXECUTORS_ALL)
def test_every_exported_name_imports(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from evalexec.executors import {name}", namespace)
    assert namespace[name] is getattr(executors, name)


def test_star_import_gives_exactly_the_exported_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from evalexec.executors import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXECUTORS_ALL


def test_the_unset_sentinel_is_importable_and_an_unset() -> None:
    assert isinstance(_unset, Unset)
    assert executors._unset is _unset


def test_the_exception_classes() -> None:
    assert exceptions.PhoenixException.__mro__[1] is Exception
    assert issubclass(exceptions.RateLimitError, exceptions.PhoenixException)
    assert {"PhoenixException", "RateLimitError"} <= set(exceptions.__all__)


@pytest.mark.parametrize(
    ("name", "module"),
    [(name, executors) for name in EXECUTORS_ALL]
    + [("_unset", executors), ("PhoenixException", exceptions), ("RateLimitError", exceptions)],
)
def test_the_package_exposes_the_same_objects(name: str, module: Any) -> None:
    assert getattr(evalexec, name) is getattr(module, name)
    assert name in evalexec.__all__


def test_every_name_in_the_package_all_exists() -> None:
    for name in evalexec.__all__:
        assert hasattr(evalexec, name), name
    assert isinstance(evalexec.__version__, str)


def test_execution_status_members_and_values() -> None:
    assert [(s.name, s.value) for s in ExecutionStatus] == [
        ("DID_NOT_RUN", "DID NOT RUN"),
        ("COMPLETED", "COMPLETED"),
        ("COMPLETED_WITH_RETRIES", "COMPLETED WITH RETRIES"),
        ("FAILED", "FAILED"),
    ]


def test_importing_evalexec_imports_no_optional_or_provider_package() -> None:
    code = (
        "import sys, evalexec, evalexec.executors, evalexec.exceptions; "
        "print(sorted(m for m in ('nest_asyncio', 'phoenix', 'openai', 'anthropic', 'httpx') "
        "if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_the_only_runtime_dependency_is_tqdm() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]] == ["tqdm"]
    assert project["requires-python"] == ">=3.11"
    assert any(d.startswith("nest_asyncio") for d in project["optional-dependencies"]["notebook"])


def test_the_py_typed_marker_ships() -> None:
    assert resources.files("evalexec").joinpath("py.typed").is_file()


# -- signatures ---------------------------------------------------------------------------


def check_signature(obj: Any, expected: Expected) -> None:
    """The first parameters are exactly `expected`; any others are keyword-only extras with
    defaults, so every call that works with Phoenix works the same here."""
    params = list(inspect.signature(obj).parameters.values())
    head = params[: len(expected)]
    assert [p.name for p in head] == [name for name, _, _ in expected]
    for param, (name, kind, default) in zip(head, expected, strict=True):
        assert param.kind is kind, name
        if default is UNSET_DEFAULT:
            assert param.default is _unset, name
        elif default is REQUIRED:
            assert param.default is REQUIRED, name
        else:
            assert param.default == default, name
            assert type(param.default) is type(default), name
    for extra in params[len(expected) :]:
        assert extra.kind is KW, extra.name
        assert extra.default is not REQUIRED, extra.name


def test_async_executor_signature() -> None:
    check_signature(
        AsyncExecutor,
        [
            ("generation_fn", POS, REQUIRED),
            ("concurrency", POS, 3),
            ("tqdm_bar_format", POS, None),
            ("max_retries", POS, 10),
            ("exit_on_error", POS, True),
            ("fallback_return_value", POS, UNSET_DEFAULT),
            ("termination_signal", POS, signal.SIGINT),
            ("timeout", POS, None),
            ("enable_dynamic_concurrency", KW, True),
            ("dynamic_initial_target", KW, None),
            ("dynamic_window_seconds", KW, 5.0),
            ("dynamic_increase_step", KW, 1),
            ("dynamic_decrease_ratio", KW, 0.5),
            ("dynamic_inactive_check_interval", KW, 1.0),
        ],
    )


def test_sync_executor_signature() -> None:
    check_signature(
        SyncExecutor,
        [
            ("generation_fn", POS, REQUIRED),
            ("tqdm_bar_format", POS, None),
            ("max_retries", POS, 10),
            ("exit_on_error", POS, True),
            ("fallback_return_value", POS, UNSET_DEFAULT),
            ("termination_signal", POS, signal.SIGINT),
        ],
    )


def test_get_executor_on_sync_context_signature() -> None:
    check_signature(
        get_executor_on_sync_context,
        [
            ("sync_fn", POS, REQUIRED),
            ("async_fn", POS, REQUIRED),
            ("run_sync", POS, False),
            ("concurrency", POS, 3),
            ("tqdm_bar_format", POS, None),
            ("max_retries", POS, 10),
            ("exit_on_error", POS, True),
            ("fallback_return_value", POS, UNSET_DEFAULT),
            ("timeout", POS, None),
        ],
    )


def test_concurrency_controller_signature() -> None:
    check_signature(
        ConcurrencyController,
        [
            ("max_concurrency", KW, REQUIRED),
            ("initial_target", KW, REQUIRED),
            ("window_seconds", KW, 5),
            ("increase_step", KW, 0.5),
            ("decrease_ratio", KW, 0.5),
            ("inactive_check_interval", KW, 1.0),
            ("smoothing_factor", KW, 0.2),
            ("collapse_window_seconds", KW, 15),
            ("collapse_error_threshold", KW, 2),
        ],
    )


@pytest.mark.parametrize(
    ("method", "is_coroutine"),
    [("execute", True), ("run", False), ("producer", True), ("consumer", True)],
)
def test_async_executor_methods(method: str, is_coroutine: bool) -> None:
    assert inspect.iscoroutinefunction(getattr(AsyncExecutor, method)) is is_coroutine


def test_executors_satisfy_the_executor_protocol() -> None:
    for cls in (AsyncExecutor, SyncExecutor):
        assert list(inspect.signature(cls.run).parameters) == ["self", "inputs"]


# -- attributes ---------------------------------------------------------------------------


def test_async_executor_keeps_phoenix_attribute_names() -> None:
    executor = AsyncExecutor(
        agen,
        concurrency=5,
        tqdm_bar_format="{bar}",
        max_retries=2,
        exit_on_error=False,
        fallback_return_value="fb",
        termination_signal=signal.SIGTERM,
        timeout=30,
    )
    assert executor.generate is agen
    assert executor.concurrency == 5
    assert executor.tqdm_bar_format == "{bar}"
    assert executor.max_retries == 2
    assert executor.exit_on_error is False
    assert executor.fallback_return_value == "fb"
    assert executor.termination_signal is signal.SIGTERM
    assert executor.timeout == 30
    assert isinstance(executor._concurrency_controller, ConcurrencyController)
    assert executor._concurrency_controller.target_concurrency == 5


def test_async_executor_defaults() -> None:
    executor = AsyncExecutor(agen)
    assert executor.concurrency == 3
    assert executor.tqdm_bar_format is None
    assert executor.max_retries == 10
    assert executor.exit_on_error is True
    assert executor.fallback_return_value is _unset
    assert executor.termination_signal is signal.SIGINT
    assert executor.timeout == 60


def test_dynamic_concurrency_can_be_turned_off_or_started_lower() -> None:
    assert AsyncExecutor(agen, enable_dynamic_concurrency=False)._concurrency_controller is None
    controller = AsyncExecutor(
        agen, concurrency=8, dynamic_initial_target=2
    )._concurrency_controller
    assert controller.target_concurrency == 2
    assert controller.max_concurrency == 8


def test_sync_executor_keeps_phoenix_attribute_names() -> None:
    def gen(item: Any) -> Any:
        return item

    executor = SyncExecutor(
        gen,
        tqdm_bar_format="{bar}",
        max_retries=2,
        exit_on_error=False,
        fallback_return_value="fb",
        termination_signal=None,
    )
    assert executor.generate is gen
    assert executor.tqdm_bar_format == "{bar}"
    assert executor.max_retries == 2
    assert executor.exit_on_error is False
    assert executor.fallback_return_value == "fb"
    assert executor.termination_signal is None


# -- ExecutionDetails ---------------------------------------------------------------------


def test_new_details_did_not_run() -> None:
    details = ExecutionDetails()
    assert details.status is ExecutionStatus.DID_NOT_RUN
    assert details.exceptions == []
    assert details.execution_seconds == 0.0
    assert isinstance(details.execution_seconds, float)


def test_complete_without_exceptions_is_completed() -> None:
    details = ExecutionDetails()
    details.complete()
    assert details.status is ExecutionStatus.COMPLETED


def test_complete_after_a_logged_exception_is_completed_with_retries() -> None:
    details = ExecutionDetails()
    error = ValueError("x")
    details.log_exception(error)
    details.complete()
    assert details.status is ExecutionStatus.COMPLETED_WITH_RETRIES
    assert details.exceptions == [error]


def test_fail_is_failed_and_keeps_the_exceptions() -> None:
    details = ExecutionDetails()
    first, second = ValueError("1"), TimeoutError("2")
    details.log_exception(first)
    details.log_exception(second)
    details.fail()
    assert details.status is ExecutionStatus.FAILED
    assert details.exceptions == [first, second]


def test_exceptions_is_a_list_that_can_be_appended_to_and_replaced() -> None:
    details = ExecutionDetails()
    error = ValueError("x")
    details.exceptions.append(error)
    assert details.exceptions == [error]
    details.exceptions = []
    details.complete()
    assert details.status is ExecutionStatus.COMPLETED


def test_details_use_slots() -> None:
    details = ExecutionDetails()
    assert "__slots__" in vars(ExecutionDetails)
    assert not hasattr(details, "__dict__")
    with pytest.raises(AttributeError):
        details.unexpected = 1  # type: ignore[attr-defined]


def test_log_runtime_takes_a_wall_clock_start_as_phoenix_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Phoenix's callers pass ``time.time()``; the seconds since then are added."""
    wall = [1_700_000_000.0]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    details = ExecutionDetails()
    start = wall[0]
    wall[0] += 2.5
    details.log_runtime(start)
    assert details.execution_seconds == 2.5
    start = wall[0]
    wall[0] += 1.0
    details.log_runtime(start)
    assert details.execution_seconds == 3.5


@pytest.mark.parametrize("copier", [pickle.loads, copy.copy, copy.deepcopy])
def test_the_unset_sentinel_survives_pickling_and_copying(copier: Any) -> None:
    value = pickle.dumps(_unset) if copier is pickle.loads else _unset
    assert copier(value) is _unset
    assert pickle.loads(pickle.dumps([_unset, 1]))[0] is _unset


def test_public_records_show_their_public_module() -> None:
    for cls in (ExecutionDetails, ExecutionStatus, Unset):
        assert cls.__module__ == "evalexec.executors"
    assert pickle.loads(pickle.dumps(ExecutionStatus.FAILED)) is ExecutionStatus.FAILED


def test_no_module_that_executors_imports_imports_it_back() -> None:
    """The machinery is below the public module: no import cycle through `executors`."""
    package = ROOT / "src" / "evalexec"

    def imports_of(module: str) -> set[str]:
        tree = ast.parse((package / f"{module}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "evalexec":
                    found.update(alias.name for alias in node.names)
                elif node.module.startswith("evalexec."):
                    found.add(node.module.removeprefix("evalexec."))
            elif isinstance(node, ast.Import):
                found.update(
                    a.name.removeprefix("evalexec.")
                    for a in node.names
                    if a.name.startswith("evalexec.")
                )
        return {name for name in found if (package / f"{name}.py").exists()}

    seen: set[str] = set()
    todo = list(imports_of("executors"))
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        assert "executors" not in imports_of(module), module
        todo.extend(imports_of(module))
    assert {"_engine", "_gate", "_details", "_retry", "_controller"} <= seen


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "evalexec.limits",
            [
                "Cost",
                "CostExceedsBudget",
                "Limiter",
                "LimiterStopped",
                "LimiterUnavailable",
                "LocalLimiter",
                "Permit",
                "RedisLimiter",
            ],
        ),
        (
            "evalexec.phoenix",
            ["EXECUTOR_NAMES", "install", "installed", "is_installed", "uninstall"],
        ),
        ("evalexec.httpx", ["async_client", "client", "event_hooks"]),
    ],
)
def test_each_public_module_exports_exactly_its_names(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == names
    assert all(hasattr(imported, name) for name in names)


def test_importing_the_public_modules_imports_none_of_their_extras() -> None:
    """redis, Phoenix, httpx and the SDKs are imported only when a feature is used."""
    code = (
        "import sys, evalexec, evalexec.limits, evalexec.phoenix, evalexec.httpx\n"
        "heavy = ('redis', 'ray', 'openai', 'anthropic', 'httpx', 'httpx2', 'phoenix',"
        " 'opentelemetry', 'pandas', 'numpy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
