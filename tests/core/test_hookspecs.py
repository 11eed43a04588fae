"""Meta-tests of the plugin author's manual, ``plait/hookspecs.py``: every hook is typed, documented,
marked firstresult or fan-out in words, and called by at least one test of this suite.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import types
import typing
from pathlib import Path

import pluggy
import pytest

from plait import hookspecs
from plait.plugins import BUILTIN_MODULES, SPEC_NAMES, hook_names, new_manager
from plait.plugins.markers import PROJECT_NAME

FIRSTRESULT_SENTENCE = "Stops at the first non-None result."


def specs() -> dict[str, typing.Callable[..., object]]:
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if callable(value) and getattr(value, f"{PROJECT_NAME}_spec", None) is not None
    }


def is_firstresult(spec: typing.Callable[..., object]) -> bool:
    return bool(getattr(spec, f"{PROJECT_NAME}_spec")["firstresult"])


SPECS = specs()


def test_every_plait_function_of_hookspecs_is_a_spec_and_the_plugin_manager_knows_them_all():
    functions = {name for name, value in vars(hookspecs).items() if name.startswith("plait_") and callable(value)}
    pm = new_manager()

    assert functions == set(SPECS) == SPEC_NAMES
    assert {name for name in vars(pm.hook) if name.startswith("plait_")} >= set(SPECS)
    assert len(SPECS) >= 30


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_is_documented_for_plugin_authors(name):
    spec = SPECS[name]
    doc = inspect.getdoc(spec) or ""
    parameters = list(inspect.signature(spec).parameters)

    assert doc.splitlines() and doc.splitlines()[0].endswith("."), f"{name}: the docstring starts with one sentence"
    for parameter in parameters:
        assert re.search(rf"^:param {parameter}: \S", doc, re.MULTILINE), f"{name}: no ':param {parameter}:' line"
    documented = re.findall(r"^:param (\w+):", doc, re.MULTILINE)
    assert documented == parameters, f"{name}: ':param' lines {documented} do not follow the signature {parameters}"
    if is_firstresult(spec):
        assert FIRSTRESULT_SENTENCE in doc, f"{name} is firstresult: its docstring must say {FIRSTRESULT_SENTENCE!r}"
        assert ":return:" in doc, f"{name} is firstresult: its docstring must say what to return"
    else:
        assert FIRSTRESULT_SENTENCE not in doc, f"{name} is a fan-out hook: every implementation is called"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_spec_is_typed(name):
    hints = typing.get_type_hints(SPECS[name], globalns=_type_namespace())

    assert set(hints) == {*inspect.signature(SPECS[name]).parameters, "return"}
    if is_firstresult(SPECS[name]):
        # A firstresult implementation declines by returning None.
        assert type(None) in typing.get_args(hints["return"]), f"{name} must allow None as its result"


def _type_namespace() -> dict[str, object]:
    """hookspecs' globals plus what it imports under TYPE_CHECKING (the annotations are strings)."""
    import torch

    from plait import accelerator, checkpoint, collectives, config, precision, process, training

    try:
        import click
    except ImportError:  # plait-cli brings click; core alone does not need it
        click = types.SimpleNamespace(Group=type("Group", (), {}))
    return {
        **vars(hookspecs),
        "torch": torch,
        "click": click,
        "Accelerator": accelerator.Accelerator,
        "CheckpointWriter": checkpoint.CheckpointWriter,
        "Config": config.Config,
        "Collectives": collectives.Collectives,
        "ProcessEnvironment": process.ProcessEnvironment,
        "Precision": precision.Precision,
        "GradientSyncControl": training.GradientSyncControl,
        "PreparedObjects": training.PreparedObjects,
    }


def test_built_in_modules_implement_only_specs_and_register_cleanly():
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        assert set(hook_names(module)) <= SPEC_NAMES, module_name
        pm.register(module)
    pm.check_pending()


# --------------------------------------------------------------------------- #
# every hook is exercised (runs after every other test of the session)
# --------------------------------------------------------------------------- #


def _partial_run_reason(request: pytest.FixtureRequest, deselected: list[str]) -> str | None:
    session = request.session
    if hasattr(request.config, "workerinput"):
        return "tests are distributed over pytest-xdist workers: no single process saw every hook call"
    if deselected:
        return f"{len(deselected)} test(s) were deselected (-k, -m, --deselect, --lf...)"
    if any("::" in str(arg) for arg in request.config.args):
        return f"only some tests were selected by node id ({' '.join(map(str, request.config.args))})"
    collected = {Path(str(item.path)) for item in session.items}
    expected = set(Path(__file__).parent.glob("test_*.py"))
    missing = sorted(path.name for path in expected - collected)
    if missing:
        return f"not every file of tests/core ran (missing {', '.join(missing)})"
    if session.testsfailed:
        return f"{session.testsfailed} test(s) failed before this one, so the record of hook calls is incomplete"
    return None


@pytest.mark.runs_last
def test_every_hookspec_is_called_by_some_test(request, hook_calls, deselected_tests):
    reason = _partial_run_reason(request, deselected_tests)
    if reason is not None:
        pytest.skip(f"needs the whole tests/core suite: {reason}")

    expected = set(SPECS)
    if importlib.util.find_spec("click") is None:
        # Only test_plugins' click group test calls it, and it needs click (which plait-cli brings).
        expected.discard("plait_cli_commands")
    never_called = sorted(expected - hook_calls)

    assert not never_called, (
        f"no test calls the hook(s) {', '.join(never_called)}: add a test in which a plugin implements "
        f"each and its effect is checked"
    )
