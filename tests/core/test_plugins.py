"""Plugins as users meet them: installed distributions found through their entry points, loaded only
when needed, one plugin manager per Accelerator, and a broken plugin never breaking the host.

The distributions come from ``plugin_packages/`` (see its README), pip-installed by ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

import plait
from plait import Accelerator, GeneralTracker, hookimpl
from plait.config import resolve_config
from plait.errors import ConfigError, PluginError
from plait.plugins import (
    BACKENDS_GROUP,
    installed_backends,
    installed_trackers,
    list_plugins,
    load_extensions,
    load_selected,
    new_manager,
    register,
)
from plait.precision import Precision
from plait.training import PreparedObjects

FIRST_PARTY_BACKENDS = ("ddp", "fsdp", "zero", "xla")
MISSING_DEPENDENCY = "ModuleNotFoundError: No module named 'plait_test_missing_dependency'"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def final_weights(model: torch.nn.Module) -> list[float]:
    return [p.item() for p in model.parameters()]


# --------------------------------------------------------------------------- #
# extensions (plait.plugins): loaded by every Accelerator
# --------------------------------------------------------------------------- #


def test_extension_is_loaded_by_every_accelerator_and_acts_before_the_backend(installed_plugins, regression):
    for backend in (None, "toy"):
        accelerator = Accelerator(backend=backend)
        model, _ = regression.fit(accelerator, epochs=1)

        assert accelerator.plugin_manager.has_plugin("plait.plugins:stamp")
        assert model.plait_stamp == (backend or "single")


def test_extension_that_declines_leaves_the_backend_wrapping_in_place(installed_plugins):
    torch.manual_seed(0)
    reference = torch.nn.Linear(64, 64)
    model = torch.nn.Linear(64, 64)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(8, 64)

    accelerator = Accelerator(mixed_precision="bf16")
    prepared = accelerator.prepare(model)
    out = prepared(x)

    assert prepared.plait_stamp == "single"
    # The built-in wrapping still ran after the stamp: forward runs in bf16, outputs come back in fp32.
    assert out.dtype == torch.float32
    assert not torch.equal(out, reference(x))
    torch.testing.assert_close(out, reference(x), atol=0.05, rtol=0.05)


def test_env_report_collects_the_lines_of_core_and_of_every_extension(installed_plugins):
    accelerator = Accelerator()

    reports = accelerator.plugin_manager.hook.plait_env_report(config=accelerator.config)
    lines = dict(line for report in reports for line in report)

    assert lines["plait-stamp"] == "stamping models of backend single"
    assert lines["plait"] == plait.__version__
    assert lines["torch"] == metadata.version("torch")


def test_extension_adds_a_command_to_the_plait_command_line(installed_plugins):
    click = pytest.importorskip("click")
    from click.testing import CliRunner

    @click.group()
    def cli() -> None:
        """The plait command line, as plait-cli builds it."""

    pm = new_manager()
    load_extensions(pm, resolve_config())
    pm.hook.plait_cli_commands(cli=cli)
    result = CliRunner().invoke(cli, ["stamp", "resnet50"])

    assert result.exit_code == 0, result.output
    assert result.output == "plait_stamp=resnet50\n"


def test_autoload_off_loads_no_extension_but_the_selected_backend(installed_plugins, monkeypatch, regression):
    monkeypatch.setenv("PLAIT_AUTOLOAD_PLUGINS", "0")

    accelerator = Accelerator(backend="toy")
    model, _ = regression.fit(accelerator, epochs=1)

    assert not hasattr(model, "plait_stamp")
    assert accelerator.plugin_manager.has_plugin("plait.backends:toy")


# --------------------------------------------------------------------------- #
# backends (plait.backends): loaded only when selected
# --------------------------------------------------------------------------- #


def test_backend_is_loaded_only_when_selected(installed_plugins):
    default = Accelerator()

    assert default.backend == "single"
    assert not default.plugin_manager.has_plugin("plait.backends:toy")
    assert "plait_toy" not in sys.modules

    toy = Accelerator(backend="toy")

    assert toy.backend == "toy"
    assert toy.plugin_manager.has_plugin("plait.backends:toy")
    assert type(toy.precision).__name__ == "ToyPrecision"
    assert type(default.precision) is Precision


@pytest.mark.parametrize("layer", ["argument", "environment", "config file", "default config file"])
def test_backend_is_selected_from_any_config_layer(installed_plugins, layer, monkeypatch, tmp_path, isolated_config):
    arguments: dict[str, Any] = {}
    if layer == "argument":
        arguments["backend"] = "toy"
    elif layer == "environment":
        monkeypatch.setenv("PLAIT_BACKEND", "toy")
    elif layer == "config file":
        monkeypatch.setenv("PLAIT_CONFIG_FILE", str(write(tmp_path / "run.yaml", "backend: toy\n")))
    else:
        write(isolated_config, "backend: toy\n")

    accelerator = Accelerator(**arguments)

    assert accelerator.backend == "toy"
    assert accelerator.plugin_manager.has_plugin("plait.backends:toy")


def test_backend_options_come_from_file_then_environment_then_argument(installed_plugins, monkeypatch, tmp_path):
    from plait_toy import ToyOptions

    config_file = write(
        tmp_path / "run.yaml",
        """
        backend: toy
        toy:
          loss_scale: 2.0
          label: fancy
        """,
    )
    monkeypatch.setenv("PLAIT_CONFIG_FILE", str(config_file))
    assert Accelerator().backend_options == ToyOptions(loss_scale=2.0, label="fancy")

    monkeypatch.setenv("PLAIT_TOY", '{"loss_scale": 4.0}')
    assert Accelerator().backend_options == ToyOptions(loss_scale=4.0, label="fancy")

    assert Accelerator(backend_options={"label": "plain"}).backend_options == ToyOptions(loss_scale=4.0, label="plain")

    own = ToyOptions(loss_scale=8.0)
    assert Accelerator(backend_options=own).backend_options is own


def test_backend_options_change_training_as_the_backend_documents(installed_plugins, regression):
    from plait_toy import ToyOptions

    # The toy backend multiplies every loss by loss_scale: with SGD, scale 2 at lr 0.05 is scale 1 at lr 0.1.
    plain, plain_losses = regression.fit(Accelerator(), lr=0.1)
    scaled_accelerator = Accelerator(backend="toy", backend_options=ToyOptions(loss_scale=2.0))
    scaled, _ = regression.fit(scaled_accelerator, lr=0.05)

    assert plain_losses[-1] < plain_losses[0] / 10
    assert final_weights(scaled) == pytest.approx(final_weights(plain), rel=1e-5)
    assert scaled_accelerator.precision.backward_calls == len(plain_losses)


@pytest.mark.parametrize("source", ["config file", "environment", "argument"])
def test_backend_rejects_an_unknown_option_wherever_it_comes_from(installed_plugins, source, monkeypatch, tmp_path):
    arguments: dict[str, Any] = {"backend": "toy"}
    if source == "config file":
        monkeypatch.setenv("PLAIT_CONFIG_FILE", str(write(tmp_path / "run.yaml", "toy:\n  loss_scal: 2.0\n")))
    elif source == "environment":
        monkeypatch.setenv("PLAIT_TOY", '{"loss_scal": 2.0}')
    else:
        arguments["backend_options"] = {"loss_scal": 2.0}

    with pytest.raises(ConfigError, match=r"toy: unknown option 'loss_scal': expected some of loss_scale, label"):
        Accelerator(**arguments)


def test_a_plugin_object_wins_over_the_backend(installed_plugins):
    class FullPrecision:
        @hookimpl
        def plait_precision(self, accelerator: Any) -> Precision:
            return Precision(accelerator.device)

    accelerator = Accelerator(backend="toy", plugins=[FullPrecision()])

    assert type(accelerator.precision) is Precision


def test_a_precision_that_is_not_a_plait_precision_is_refused_by_name():
    class DuckPrecision:
        def backward(self, loss: Any, **kwargs: Any) -> None:
            loss.backward(**kwargs)

    class Duck:
        @hookimpl
        def plait_precision(self, accelerator: Any) -> Any:
            return DuckPrecision()

    with pytest.raises(PluginError, match=r"plait_precision returned 'DuckPrecision': expected a plait.precision.Precision"):
        Accelerator(cpu=True, plugins=[Duck()])


def test_a_precision_subclass_that_overrides_the_step_steps_through_it():
    steps = []

    class CountingPrecision(Precision):
        def optimizer_step(self, optimizer: Any, closure: Any = None) -> bool:
            steps.append(optimizer)
            return super().optimizer_step(optimizer, closure)

    class Counting:
        @hookimpl
        def plait_precision(self, accelerator: Any) -> Precision:
            return CountingPrecision(accelerator.device)

    accelerator = Accelerator(cpu=True, plugins=[Counting()])
    model = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.weight.detach().clone()
    accelerator.backward(model(torch.ones(1, 2)).sum())
    optimizer.step()

    assert CountingPrecision.plain_step is False and Precision.plain_step is True
    assert steps == [optimizer.optimizer]
    assert not torch.equal(model.weight, before)


@pytest.mark.parametrize("name", FIRST_PARTY_BACKENDS)
def test_a_known_backend_that_is_not_installed_says_how_to_install_it(name):
    if name in installed_backends():
        pytest.skip(f"plait-{name} is installed in this environment")

    with pytest.raises(PluginError) as raised:
        Accelerator(backend=name)

    message = str(raised.value)
    assert f"backend {name!r} is not installed: pip install plait[{name}]" in message
    assert f"installed backends: {', '.join(installed_backends())}" in message


def test_an_unknown_backend_suggests_the_closest_and_lists_the_others(installed_plugins):
    with pytest.raises(PluginError) as raised:
        Accelerator(backend="singel")

    message = str(raised.value)
    assert "unknown backend 'singel' (did you mean 'single'?)" in message
    assert "toy" in installed_backends()
    assert f"installed backends are {', '.join(installed_backends())};" in message
    for name in FIRST_PARTY_BACKENDS:
        if name not in installed_backends():
            assert f"{name} (pip install plait[{name}])" in message

    with pytest.raises(PluginError, match=r"unknown backend 'toi' \(did you mean 'toy'\?\)"):
        Accelerator(backend="toi")


def test_a_tracker_that_is_not_installed_says_how_to_install_it():
    if "wandb" in installed_trackers():
        pytest.skip("plait-trackers is installed in this environment")

    with pytest.raises(PluginError, match=r"tracker 'wandb' is not installed: pip install plait\[wandb\]"):
        Accelerator(log_with="wandb")


# --------------------------------------------------------------------------- #
# blocking plugins
# --------------------------------------------------------------------------- #


def test_a_disabled_plugin_is_never_imported(installed_plugins, monkeypatch):
    monkeypatch.setenv("PLAIT_DISABLE_PLUGINS", "some-other, stamp")

    accelerator = Accelerator()
    model = accelerator.prepare(torch.nn.Linear(1, 1))
    stamp = {info.name: info for info in list_plugins()}["stamp"]

    assert not hasattr(model, "plait_stamp")
    assert not accelerator.plugin_manager.has_plugin("plait.plugins:stamp")
    assert (stamp.disabled, stamp.status, stamp.hooks) == (True, "disabled", [])
    assert "plait_stamp" not in sys.modules

    monkeypatch.delenv("PLAIT_DISABLE_PLUGINS")
    Accelerator()
    assert "plait_stamp" in sys.modules


def test_selecting_a_disabled_backend_says_it_is_blocked(installed_plugins, monkeypatch):
    monkeypatch.setenv("PLAIT_DISABLE_PLUGINS", "toy")

    with pytest.raises(PluginError, match=r"backend 'toy' is selected but blocked by PLAIT_DISABLE_PLUGINS"):
        Accelerator(backend="toy")
    assert "plait_toy" not in sys.modules


# --------------------------------------------------------------------------- #
# broken plugins
# --------------------------------------------------------------------------- #


def test_a_broken_extension_warns_and_the_accelerator_still_trains(broken_plugins, regression):
    with pytest.warns(UserWarning) as caught:
        accelerator = Accelerator()
    _, losses = regression.fit(accelerator)

    messages = [str(w.message) for w in caught]
    assert f"plait plugin 'broken' (plait-broken 0.9.0) was not loaded: {MISSING_DEPENDENCY}" in messages
    assert [info.name for info in accelerator.broken_plugins] == ["broken", "typo"]
    assert losses[-1] < losses[0] / 10


def test_list_plugins_shows_a_broken_plugin_with_its_error(broken_plugins):
    infos = {(info.group, info.name): info for info in list_plugins()}

    for group in ("plait.plugins", "plait.backends"):
        broken = infos[(group, "broken")]
        assert (broken.distribution, broken.version) == ("plait-broken", "0.9.0")
        assert broken.error == MISSING_DEPENDENCY
        assert broken.status == f"broken: {MISSING_DEPENDENCY}"
    typo = infos[("plait.plugins", "typo")]
    assert typo.error is not None and "unknown hook 'plait_wrap_modle'" in typo.error


@pytest.mark.filterwarnings("ignore:plait plugin")
def test_selecting_a_broken_backend_names_its_distribution_and_error(broken_plugins):
    with pytest.raises(PluginError) as raised:
        Accelerator(backend="broken")

    assert f"backend 'broken' (distribution plait-broken) failed to load: {MISSING_DEPENDENCY}" in str(raised.value)


def test_an_installed_plugin_with_a_misspelled_hook_is_refused(broken_plugins):
    with pytest.warns(UserWarning) as caught:
        accelerator = Accelerator()

    typo_warnings = [str(w.message) for w in caught if "'typo'" in str(w.message)]
    assert len(typo_warnings) == 1
    assert "unknown hook 'plait_wrap_modle' (did you mean 'plait_wrap_model'?)" in typo_warnings[0]
    assert not accelerator.plugin_manager.has_plugin("plait.plugins:typo")


def test_a_plugin_object_with_a_misspelled_hook_is_refused():
    class Engine:
        @hookimpl
        def plait_prepare_jointy(self, models: Any) -> None:
            return None

    with pytest.raises(PluginError, match=r"unknown hook 'plait_prepare_jointy' \(did you mean 'plait_prepare_jointly'\?\)"):
        Accelerator(plugins=[Engine()])


def test_a_plugin_object_with_a_misspelled_argument_is_refused():
    class Wrapper:
        @hookimpl
        def plait_wrap_model(self, accelerator: Any, modle: Any) -> Any:
            return modle

    with pytest.raises(PluginError, match=r"modle"):
        Accelerator(plugins=[Wrapper()])


def test_a_hook_implemented_under_another_name_through_specname():
    class Devices:
        @hookimpl(specname="plait_device")
        def meta_device(self) -> torch.device:
            return torch.device("meta")

    assert Accelerator(plugins=[Devices()]).device == torch.device("meta")


# --------------------------------------------------------------------------- #
# listing
# --------------------------------------------------------------------------- #


def test_listing_plugins_reports_each_one_without_importing_torch(plugin_sites):
    code = textwrap.dedent(
        """
        import json, sys
        import plait
        plugins = [info.to_dict() for info in plait.list_plugins()]
        print(json.dumps({"torch_imported": "torch" in sys.modules, "plugins": plugins}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(site) for site in plugin_sites.values())}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugins = {(p["group"], p["name"]): p for p in report["plugins"]}

    assert report["torch_imported"] is False
    for info in plugins.values():
        assert {"name", "group", "distribution", "version", "hooks", "error", "status"} <= set(info)
    assert plugins[("plait.plugins", "stamp")] | {"status": None} == {
        "name": "stamp",
        "group": "plait.plugins",
        "distribution": "plait-stamp",
        "version": "1.2.3",
        "hooks": ["plait_cli_commands", "plait_env_report", "plait_wrap_model"],
        "error": None,
        "disabled": False,
        "needs": None,
        "status": None,
    }
    assert plugins[("plait.backends", "toy")]["hooks"] == [
        "plait_backend_options",
        "plait_config_questions",
        "plait_launch",
        "plait_launch_options",
        "plait_precision",
    ]
    assert plugins[("plait.trackers", "toylog")]["distribution"] == "plait-toylog"
    assert plugins[("plait.plugins", "broken")]["error"] == MISSING_DEPENDENCY
    single = plugins[("plait.backends", "single")]
    assert (single["distribution"], single["version"], single["error"]) == ("plait", plait.__version__, None)
    assert "plait_wrap_model" in single["hooks"]


# --------------------------------------------------------------------------- #
# one plugin manager per Accelerator
# --------------------------------------------------------------------------- #


class Box(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class BoxingPlugin:
    """Wraps every model in a Box and unwraps it again: a minimal backend-like wrapper."""

    @hookimpl
    def plait_wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return Box(model)

    @hookimpl
    def plait_unwrap_model(self, accelerator: Any, model: torch.nn.Module, keep_fp32_wrapper: bool) -> Any:
        if isinstance(model, Box):
            return accelerator.unwrap_model(model.inner, keep_fp32_wrapper)
        return None


class MetaDevicePlugin:
    @hookimpl
    def plait_device(self) -> torch.device:
        return torch.device("meta")


def test_a_plugin_registered_on_one_accelerator_does_not_affect_another():
    boxing = BoxingPlugin()
    first = Accelerator(plugins=[boxing, MetaDevicePlugin()])
    model = torch.nn.Linear(2, 2)
    boxed = first.prepare_model(model, device_placement=False)

    second = Accelerator()
    plain = second.prepare(torch.nn.Linear(2, 2))

    assert isinstance(boxed, Box) and first.unwrap_model(boxed) is model
    assert first.device == torch.device("meta")
    assert second.device == torch.device("cpu")
    assert not isinstance(plain, Box)
    assert first.plugin_manager is not second.plugin_manager
    assert first.plugin_manager.is_registered(boxing)
    assert not second.plugin_manager.is_registered(boxing)


# --------------------------------------------------------------------------- #
# joint preparation (engines like DeepSpeed)
# --------------------------------------------------------------------------- #


class Engine(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        super().__init__()
        self.module = model
        self.optimizer = optimizer
        self.scheduler = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class JointEngine:
    """Takes model, optimizer and scheduler in one call, as ``deepspeed.initialize`` does."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    @hookimpl
    def plait_prepare_jointly(self, models: Any, optimizers: Any, schedulers: Any, dataloaders: Any) -> PreparedObjects:
        self.seen = {"models": models, "optimizers": optimizers, "schedulers": schedulers, "dataloaders": dataloaders}
        engine = Engine(models[0], optimizers[0], schedulers[0])
        return PreparedObjects([(models[0], engine)])


def test_a_joint_engine_receives_every_object_of_prepare_at_once(regression):
    engine_plugin = JointEngine()
    accelerator = Accelerator(plugins=[engine_plugin])
    model, optimizer, loader = regression.make()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)

    p_model, p_optimizer, p_scheduler, p_loader = accelerator.prepare(model, optimizer, scheduler, loader)

    seen = engine_plugin.seen
    assert [len(seen[k]) for k in ("models", "optimizers", "schedulers", "dataloaders")] == [1, 1, 1, 1]
    assert seen["models"][0] is model and seen["optimizers"][0] is optimizer and seen["schedulers"][0] is scheduler
    # Dataloaders are prepared before the engine sees them, so that it knows the per-process batch size.
    assert seen["dataloaders"][0] is p_loader and p_loader is not loader
    assert isinstance(p_model, Engine) and p_model.module is model
    # What the engine did not replace comes back as given.
    assert p_optimizer is optimizer and p_scheduler is scheduler
    x, _ = next(iter(p_loader))
    assert p_model(x).shape == (4, 1)


# --------------------------------------------------------------------------- #
# the rest of the run: sync, collectives and state hooks answered by the built-in backend
# --------------------------------------------------------------------------- #


class CheckpointWatcher:
    """Notified after each checkpoint is complete and in place, as an uploader would be."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []

    @hookimpl
    def plait_checkpoint_saved(self, directory: str) -> None:
        self.seen.append((directory, sorted(p.name for p in Path(directory).iterdir())))


def test_built_in_backend_trains_like_plain_pytorch_and_resumes_from_a_checkpoint(tmp_path, regression):
    # Gradient accumulation of 2 batches of 4 is one batch of 8.
    torch.manual_seed(0)
    reference, reference_optimizer, _ = regression.make(batch_size=8)
    _, _, big_loader = regression.make(batch_size=8)
    for x, y in big_loader:
        torch.nn.functional.mse_loss(reference(x), y).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        reference_optimizer.step()
        reference_optimizer.zero_grad()

    watcher = CheckpointWatcher()
    accelerator = Accelerator(gradient_accumulation_steps=2, plugins=[watcher])
    model, optimizer, loader = regression.make(batch_size=4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    norms = []
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norms.append(accelerator.clip_grad_norm_(model.parameters(), 1.0))
                accelerator.clip_grad_value_(model.parameters(), 1e6)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()

    assert len(norms) == 4
    assert final_weights(model) == pytest.approx(final_weights(reference), rel=1e-5)

    # One process: collectives return this process's values.
    loss = torch.tensor(0.25)
    assert accelerator.gather(loss[None]).tolist() == [0.25]
    assert accelerator.reduce(loss, "mean").item() == 0.25
    assert accelerator.broadcast(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
    assert accelerator.gather_object([{"rank": accelerator.process_index}]) == [{"rank": 0}]
    accelerator.wait_for_everyone()

    directory = accelerator.save_state(tmp_path / "checkpoint")
    assert watcher.seen and watcher.seen[0][0] == directory
    assert "model.safetensors" in watcher.seen[0][1] and "optimizer.pt" in watcher.seen[0][1]
    saved = final_weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    accelerator.load_state(directory)

    assert final_weights(model) == saved
    assert accelerator.get_state_dict(model).keys() == {"weight", "bias"}
    accelerator.end_training()


# --------------------------------------------------------------------------- #
# trackers
# --------------------------------------------------------------------------- #


class Recorder(GeneralTracker):
    """A tracker object of the user's own (HF Accelerate's API)."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def start(self) -> None:
        self.events.append(("start",))

    def store_init_configuration(self, values: Any) -> None:
        self.events.append(("config", dict(values)))

    def log(self, values: Any, step: int | None = None, **kwargs: Any) -> None:
        self.events.append(("log", step, dict(values)))

    def finish(self) -> None:
        self.events.append(("finish",))


class Unreachable(Recorder):
    name = "unreachable"

    def log(self, values: Any, step: int | None = None, **kwargs: Any) -> None:
        raise ConnectionError("tracking server unreachable")


def fit_and_log(accelerator: Accelerator, regression: Any) -> list[float]:
    model, optimizer, loader = accelerator.prepare(*regression.make())
    losses = []
    for step, (x, y) in enumerate(loader):
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        accelerator.log({"loss": loss.item()}, step=step)
    return losses


def test_a_tracker_plugin_is_loaded_only_when_named_in_log_with(installed_plugins):
    assert not Accelerator().plugin_manager.has_plugin("plait.trackers:toylog")
    assert Accelerator(log_with="toylog").plugin_manager.has_plugin("plait.trackers:toylog")
    assert Accelerator(log_with="all").plugin_manager.has_plugin("plait.trackers:toylog")


def test_a_tracker_object_and_a_tracker_plugin_both_receive_the_run(installed_plugins, tmp_path, regression):
    recorder = Recorder()
    accelerator = Accelerator(log_with=["toylog", recorder], project_dir=tmp_path)

    accelerator.init_trackers("demo", config={"lr": 0.1}, init_kwargs={"toylog": {"tags": ["smoke"]}})
    losses = fit_and_log(accelerator, regression)
    accelerator.end_training()

    logged = [json.loads(line) for line in (tmp_path / "toylog.jsonl").read_text().splitlines()]
    assert logged[0] == {"event": "start", "project": "demo", "config": {"lr": 0.1}, "options": {"tags": ["smoke"]}}
    assert [(e["step"], e["values"]["loss"]) for e in logged[1:-1]] == list(enumerate(losses))
    assert logged[-1] == {"event": "finish"}
    assert recorder.events == [
        ("start",),
        ("config", {"lr": 0.1}),
        *[("log", step, {"loss": loss}) for step, loss in enumerate(losses)],
        ("finish",),
    ]
    assert accelerator.get_tracker("recorder") is recorder
    assert accelerator.get_tracker("toylog", unwrap=True) == tmp_path / "toylog.jsonl"
    with pytest.raises(ValueError, match="no tracker named 'tensorboard'"):
        accelerator.get_tracker("tensorboard")


def test_a_failing_tracker_warns_once_and_training_continues(regression):
    recorder = Recorder()
    accelerator = Accelerator(log_with=[Unreachable(), recorder])
    accelerator.init_trackers("demo")

    with pytest.warns(UserWarning) as caught:
        losses = fit_and_log(accelerator, regression)

    failures = [str(w.message) for w in caught if "unreachable" in str(w.message)]
    assert len(failures) == 1
    assert "failed in plait_tracker_log (ConnectionError: tracking server unreachable)" in failures[0]
    assert len([e for e in recorder.events if e[0] == "log"]) == len(losses) == 8
    assert losses[-1] < losses[0]


def test_strict_trackers_raise_the_tracker_error(regression):
    accelerator = Accelerator(log_with=[Unreachable()], strict_trackers=True)
    accelerator.init_trackers("demo")

    with pytest.raises(ConnectionError, match="tracking server unreachable"):
        accelerator.log({"loss": 1.0}, step=0)


def test_logging_before_init_trackers_raises_when_trackers_are_configured():
    accelerator = Accelerator(log_with=[Recorder()])

    with pytest.raises(RuntimeError, match=r"log\(\) was called before accelerator.init_trackers\(\)"):
        accelerator.log({"loss": 1.0})


# --------------------------------------------------------------------------- #
# command-line hooks: launching and config questions
# --------------------------------------------------------------------------- #


def test_the_selected_backend_owns_launching_and_a_later_plugin_can_take_it_over(installed_plugins, tmp_path):
    script = write(
        tmp_path / "train.py",
        """
        import os, pathlib, sys
        pathlib.Path(sys.argv[1]).write_text(os.environ["PLAIT_BACKEND"])
        sys.exit(7)
        """,
    )
    marker = tmp_path / "launched"
    toy_config = resolve_config({"backend": "toy"}, extra_backends=installed_backends())
    pm = new_manager()
    load_selected(pm, BACKENDS_GROUP, "toy", ())

    assert pm.hook.plait_launch(config=toy_config, command=[str(script), str(marker)]) == 7
    assert marker.read_text() == "toy"
    # Another backend's run: toy declines and the default launcher (torch.distributed.run) would start it.
    assert pm.hook.plait_launch(config=resolve_config({"backend": "single"}), command=[str(script)]) is None

    class DryRun:
        @hookimpl
        def plait_launch(self, command: list[str]) -> int:
            return 0

    marker.unlink()
    register(pm, DryRun())
    assert pm.hook.plait_launch(config=toy_config, command=[str(script), str(marker)]) == 0
    assert not marker.exists()


def test_a_backend_adds_launch_flags_whose_values_are_a_valid_section(installed_plugins, monkeypatch):
    click = pytest.importorskip("click")
    from click.testing import CliRunner
    from plait_toy import ToyOptions

    pm = new_manager()
    load_selected(pm, BACKENDS_GROUP, "toy", ())
    options = {
        section: list(flags) for contribution in pm.hook.plait_launch_options() for section, flags in contribution.items()
    }
    assert [flag.name for flag in options["toy"]] == ["loss_scale", "label"]

    seen: dict[str, Any] = {}
    command = click.Command("launch", params=options["toy"], callback=lambda **values: seen.update(values))
    result = CliRunner().invoke(command, ["--toy-loss-scale", "0.5"])

    assert result.exit_code == 0, result.output
    assert seen == {"loss_scale": 0.5, "label": None}  # a flag not given leaves the file's value alone
    given = {key: value for key, value in seen.items() if value is not None}
    monkeypatch.setenv("PLAIT_TOY", json.dumps(given))
    assert Accelerator(backend="toy").backend_options == ToyOptions(loss_scale=0.5, label="plain")


def test_a_backend_answers_config_questions_only_for_itself(installed_plugins, isolated_config):
    from plait_toy import ToyOptions

    asked: list[str] = []

    def ask(question: str, default: Any = None, choices: list[str] | None = None, type: Any = str) -> Any:
        asked.append(question)
        return choices[-1] if choices else type(default)

    pm = new_manager()
    load_selected(pm, BACKENDS_GROUP, "toy", ())

    assert pm.hook.plait_config_questions(backend="fsdp", ask=ask) is None
    assert asked == []
    answers = pm.hook.plait_config_questions(backend="toy", ask=ask)
    assert answers == {"loss_scale": 1.0, "label": "fancy"}

    # The answers are a valid section of the file `plait config` writes.
    import yaml

    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(yaml.safe_dump({"backend": "toy", "toy": answers}))
    assert Accelerator().backend_options == ToyOptions(loss_scale=1.0, label="fancy")
