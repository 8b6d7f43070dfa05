"""evalexec.phoenix.install / uninstall / installed on the real Phoenix modules.

Fast, no server: part of the default run, except the one that needs phoenix.client
(an integration component).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import types
from typing import Any

import pytest

import evalexec
import evalexec.executors
import evalexec.phoenix
from evalexec.phoenix import EXECUTOR_NAMES

pytestmark = pytest.mark.usefixtures("restore_phoenix")

LIMITER_MODULES = ("phoenix.evals.rate_limiters", "phoenix.client.utils.rate_limiters")


def snapshot() -> dict[tuple[str, str], Any]:
    """Every attribute of every imported phoenix.* module, and of its RateLimiter classes."""
    seen: dict[tuple[str, str], Any] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("phoenix.") or not isinstance(module, types.ModuleType):
            continue
        for attribute, value in list(vars(module).items()):
            seen[(name, attribute)] = value
    for name in LIMITER_MODULES:
        limiter = getattr(sys.modules.get(name), "RateLimiter", None)
        if isinstance(limiter, type):
            for attribute, value in vars(limiter).items():
                seen[(f"{name}.RateLimiter", attribute)] = value
    return seen


def changed(before: dict[tuple[str, str], Any], after: dict[tuple[str, str], Any]) -> set[Any]:
    return {key for key, value in before.items() if key in after and after[key] is not value}


def expected_changes(modules: tuple[str, ...], limiters: bool) -> set[tuple[str, str]]:
    keys = {
        (module, name)
        for module in modules
        for name in EXECUTOR_NAMES
        if name in vars(sys.modules[module])
    }
    if limiters:
        keys |= {
            (f"{module}.RateLimiter", method)
            for module in LIMITER_MODULES
            if module in sys.modules
            for method in ("limit", "alimit")
        }
    return keys


def test_install_rebinds_every_executor_name_in_phoenix_modules_to_evalexec(
    phoenix_modules: tuple[str, ...],
) -> None:
    evalexec.phoenix.install()
    for module_name in phoenix_modules:
        module = sys.modules[module_name]
        for name in EXECUTOR_NAMES:
            if name not in vars(module):
                continue
            value = vars(module)[name]
            if name == "SyncExecutor":
                assert issubclass(value, evalexec.SyncExecutor), module_name
            else:
                assert value is getattr(evalexec, name), (module_name, name)


def test_install_changes_only_executor_names_and_rate_limiter_methods(
    phoenix_modules: tuple[str, ...],
) -> None:
    before = snapshot()
    evalexec.phoenix.install()
    assert changed(before, snapshot()) == expected_changes(phoenix_modules, limiters=True)


def test_uninstall_puts_back_the_very_objects_that_were_there(
    phoenix_modules: tuple[str, ...],
) -> None:
    before = snapshot()
    evalexec.phoenix.install()
    evalexec.phoenix.uninstall()
    assert changed(before, snapshot()) == set()
    assert not evalexec.phoenix.is_installed()


def test_installing_twice_is_installing_once(phoenix_modules: tuple[str, ...]) -> None:
    before = snapshot()
    evalexec.phoenix.install(sync_concurrency=3)
    once = snapshot()
    evalexec.phoenix.install(sync_concurrency=3)
    assert changed(once, snapshot()) == set()
    evalexec.phoenix.uninstall()
    assert changed(before, snapshot()) == set()


def test_uninstall_without_install_changes_nothing(phoenix_modules: tuple[str, ...]) -> None:
    before = snapshot()
    evalexec.phoenix.uninstall()
    assert changed(before, snapshot()) == set()


def test_keeping_the_rate_limiters_changes_only_executor_names(
    phoenix_modules: tuple[str, ...],
) -> None:
    before = snapshot()
    evalexec.phoenix.install(replace_rate_limiters=False)
    assert changed(before, snapshot()) == expected_changes(phoenix_modules, limiters=False)


def test_reinstalling_with_other_options_applies_them(phoenix_modules: tuple[str, ...]) -> None:
    from phoenix.evals.rate_limiters import RateLimiter

    original_limit = vars(RateLimiter)["limit"]
    evalexec.phoenix.install()
    assert vars(RateLimiter)["limit"] is not original_limit
    evalexec.phoenix.install(replace_rate_limiters=False)
    assert vars(RateLimiter)["limit"] is original_limit
    evalexec.phoenix.uninstall()
    assert vars(RateLimiter)["limit"] is original_limit


def test_a_replaced_rate_limiter_hands_back_the_function_itself(
    phoenix_evals: types.ModuleType,
) -> None:
    from phoenix.evals.rate_limiters import RateLimiter

    limiter = RateLimiter(rate_limit_error=ValueError)

    def call(prompt: str) -> str:
        return prompt

    async def acall(prompt: str) -> str:
        return prompt

    assert limiter.limit(call) is not call
    with evalexec.phoenix.installed():
        assert limiter.limit(call) is call
        assert limiter.alimit(acall) is acall
    assert limiter.limit(call) is not call


def test_a_provider_rate_limit_error_passes_a_replaced_limiter_unchanged(
    phoenix_evals: types.ModuleType,
) -> None:
    """Phoenix's limiter would sleep and raise its own hint-less RateLimitError instead."""
    from phoenix.evals.rate_limiters import RateLimiter

    class RateLimitError(Exception):  # as openai names it
        retry_after = 2.5

    raised = RateLimitError("429")

    def call() -> None:
        raise raised

    evalexec.phoenix.install()
    limited = RateLimiter(rate_limit_error=RateLimitError).limit(call)
    with pytest.raises(RateLimitError) as caught:
        limited()
    assert caught.value is raised


def test_the_context_manager_restores_the_state_before_it(
    phoenix_modules: tuple[str, ...],
) -> None:
    from phoenix.evals.rate_limiters import RateLimiter

    original_limit = vars(RateLimiter)["limit"]
    before = snapshot()
    with evalexec.phoenix.installed():
        assert evalexec.phoenix.is_installed()
    assert changed(before, snapshot()) == set()
    assert not evalexec.phoenix.is_installed()

    evalexec.phoenix.install(sync_concurrency=3, replace_rate_limiters=False)
    outer = snapshot()
    with evalexec.phoenix.installed(sync_concurrency=4):
        assert vars(RateLimiter)["limit"] is not original_limit
        assert changed(outer, snapshot()) != set()
    assert changed(outer, snapshot()) == set()
    assert evalexec.phoenix.is_installed()


def test_a_phoenix_module_imported_after_install_is_covered_by_installing_again(
    monkeypatch: pytest.MonkeyPatch, phoenix_evals: types.ModuleType
) -> None:
    import phoenix.evals.executors as phoenix_executors

    original = phoenix_executors.AsyncExecutor
    late = types.ModuleType("phoenix.evals._late_user")
    evalexec.phoenix.install()
    late.AsyncExecutor = original  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, late.__name__, late)
    evalexec.phoenix.install()
    assert late.AsyncExecutor is evalexec.AsyncExecutor  # type: ignore[attr-defined]
    evalexec.phoenix.uninstall()
    assert late.AsyncExecutor is original  # type: ignore[attr-defined]


def test_a_module_that_copied_a_replacement_gets_the_original_back_on_uninstall(
    monkeypatch: pytest.MonkeyPatch, phoenix_evals: types.ModuleType
) -> None:
    import phoenix.evals.executors as phoenix_executors

    original = phoenix_executors.ExecutionDetails
    evalexec.phoenix.install()
    late = types.ModuleType("phoenix.evals._copier")
    late.ExecutionDetails = phoenix_executors.ExecutionDetails  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, late.__name__, late)
    assert late.ExecutionDetails is evalexec.ExecutionDetails  # type: ignore[attr-defined]
    evalexec.phoenix.uninstall()
    assert late.ExecutionDetails is original  # type: ignore[attr-defined]


def test_modules_outside_phoenix_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, phoenix_evals: types.ModuleType
) -> None:
    import phoenix.evals.executors as phoenix_executors

    original = phoenix_executors.SyncExecutor
    outsider = types.ModuleType("my_evals")
    outsider.SyncExecutor = original  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, outsider.__name__, outsider)
    evalexec.phoenix.install()
    assert phoenix_executors.SyncExecutor is not original
    assert outsider.SyncExecutor is original  # type: ignore[attr-defined]


def test_phoenix_sync_executor_passes_sync_concurrency_when_evalexec_accepts_it(
    phoenix_evals: types.ModuleType,
) -> None:
    import phoenix.evals.evaluators as phoenix_evaluators

    evalexec.phoenix.install(sync_concurrency=5)
    executor = phoenix_evaluators.SyncExecutor(generation_fn=str, fallback_return_value=None)
    assert isinstance(executor, evalexec.SyncExecutor)
    if "concurrency" in inspect.signature(evalexec.SyncExecutor).parameters:
        assert executor.concurrency == 5
    assert executor.run([1, 2, 3])[0] == ["1", "2", "3"]


def test_evaluate_dataframe_runs_on_evalexec_after_install(
    monkeypatch: pytest.MonkeyPatch, phoenix_evals: types.ModuleType, need: Any
) -> None:
    phoenix_evaluators = phoenix_evals
    pandas = need("pandas", "pandas")
    runs: list[int] = []
    run = evalexec.executors.SyncExecutor.run

    def counted(self: evalexec.SyncExecutor, inputs: Any) -> Any:
        runs.append(len(inputs))
        return run(self, inputs)

    monkeypatch.setattr(evalexec.executors.SyncExecutor, "run", counted)

    @phoenix_evaluators.create_evaluator(name="length")
    def length(text: str) -> int:
        return len(text)

    frame = pandas.DataFrame({"text": ["a", "bb", "ccc"]})
    evalexec.phoenix.install()
    result = phoenix_evaluators.evaluate_dataframe(
        dataframe=frame, evaluators=[length], hide_tqdm_bar=True
    )
    assert runs == [3]
    assert [score["score"] for score in map(_json, result["length_score"])] == [1, 2, 3]


def test_async_evaluate_dataframe_runs_on_evalexec_after_install(
    monkeypatch: pytest.MonkeyPatch, phoenix_evals: types.ModuleType, need: Any
) -> None:
    phoenix_evaluators = phoenix_evals
    pandas = need("pandas", "pandas")
    runs: list[int] = []
    execute = evalexec.executors.AsyncExecutor.execute

    async def counted(self: evalexec.AsyncExecutor, inputs: Any) -> Any:
        runs.append(len(inputs))
        return await execute(self, inputs)

    monkeypatch.setattr(evalexec.executors.AsyncExecutor, "execute", counted)

    @phoenix_evaluators.create_evaluator(name="length")
    def length(text: str) -> int:
        return len(text)

    frame = pandas.DataFrame({"text": ["a", "bb", "ccc", "dddd"]})
    evalexec.phoenix.install()
    result = asyncio.run(
        phoenix_evaluators.async_evaluate_dataframe(
            dataframe=frame, evaluators=[length], hide_tqdm_bar=True
        )
    )
    assert runs == [4]
    assert [score["score"] for score in map(_json, result["length_score"])] == [1, 2, 3, 4]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.integration
def test_the_client_modules_and_rate_limiter_are_covered(
    phoenix_modules: tuple[str, ...], phoenix_client: types.ModuleType
) -> None:
    import phoenix.client.resources.experiments as experiments
    from phoenix.client.utils import executors as client_executors
    from phoenix.client.utils.rate_limiters import RateLimiter

    original = (experiments.AsyncExecutor, client_executors.ConcurrencyController)
    evalexec.phoenix.install()
    assert experiments.AsyncExecutor is evalexec.AsyncExecutor
    assert issubclass(experiments.SyncExecutor, evalexec.SyncExecutor)
    assert client_executors.ConcurrencyController is evalexec.ConcurrencyController

    def call() -> int:
        return 1

    assert RateLimiter(rate_limit_error=ValueError).limit(call) is call
    evalexec.phoenix.uninstall()
    assert (experiments.AsyncExecutor, client_executors.ConcurrencyController) == original


def test_install_without_phoenix_raises_an_import_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [name for name in sys.modules if name == "phoenix" or name.startswith("phoenix.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "phoenix", None)
    with pytest.raises(ImportError) as caught:
        evalexec.phoenix.install()
    assert str(caught.value) == (
        "evalexec.phoenix needs Arize Phoenix: pip install arize-phoenix-evals "
        "(and/or arize-phoenix-client)"
    )
    assert not evalexec.phoenix.is_installed()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"sync_concurrency": 0}, ValueError, "sync_concurrency must be >= 1, got 0"),
        ({"sync_concurrency": 2.0}, TypeError, "sync_concurrency must be an int, got float"),
        ({"sync_concurrency": True}, TypeError, "sync_concurrency must be an int, got bool"),
        (
            {"replace_rate_limiters": 1},
            TypeError,
            "replace_rate_limiters must be a bool, got int",
        ),
    ],
)
def test_bad_options_are_refused_before_anything_changes(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    before = snapshot()
    with pytest.raises(error) as caught:
        evalexec.phoenix.install(**options)
    assert str(caught.value) == message
    assert changed(before, snapshot()) == set()
    assert not evalexec.phoenix.is_installed()


def test_importing_evalexec_phoenix_imports_no_phoenix_module() -> None:
    """Phoenix is imported by install(), not by ``import evalexec.phoenix``."""
    code = (
        "import sys, evalexec.phoenix; "
        "print(sorted(m for m in sys.modules if m == 'phoenix' or m.startswith('phoenix.')))"
    )
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
