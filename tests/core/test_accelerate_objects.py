"""HF Accelerate's configuration objects on one process: each one changes the numbers as Accelerate's does."""

from __future__ import annotations

import json
import pickle
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator, ConfigError, NotSupportedError
from plait.config.objects import fsdp_section, zero_section
from plait.utils import (
    AutocastKwargs,
    DataLoaderConfiguration,
    DeepSpeedPlugin,
    DistributedDataParallelKwargs,
    FullyShardedDataParallelPlugin,
    GradientAccumulationPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
    ProfileKwargs,
    TorchDynamoPlugin,
)


def data(n: int = 20) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def train(accelerator: Accelerator, loader_batch: int = 4, epochs: int = 1, n: int = 20) -> tuple[nn.Module, int]:
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net, optimizer, loader = accelerator.prepare(net, optimizer, DataLoader(data(n), batch_size=loader_batch))
    steps = 0
    for _ in range(epochs):
        for x, y in loader:
            with accelerator.accumulate(net):
                accelerator.backward(nn.functional.mse_loss(net(x), y))
                optimizer.step()
                optimizer.zero_grad()
                steps += accelerator.sync_gradients
    return net, steps


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# --------------------------------------------------------------------------- DataLoaderConfiguration
def test_dataloader_configuration_yields_exactly_the_batches_of_the_old_arguments():
    loader = DataLoader(list(range(12)), batch_size=4, shuffle=True)
    for fields in ({"split_batches": True}, {"even_batches": False}, {}):
        torch.manual_seed(5)
        old = [b.tolist() for b in Accelerator(**fields).prepare(loader)]
        torch.manual_seed(5)
        new = [b.tolist() for b in Accelerator(dataloader_config=DataLoaderConfiguration(**fields)).prepare(loader)]
        assert new == old and sorted(x for batch in new for x in batch) == list(range(12))
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True))
    assert accelerator.split_batches and accelerator.config.non_blocking
    assert accelerator.dataloader_config.split_batches is True


def test_data_seed_fixes_the_shuffled_order_whatever_the_global_seed():
    loader = DataLoader(list(range(16)), batch_size=4, shuffle=True)
    orders = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=42)
        orders.append([b.tolist() for b in Accelerator(dataloader_config=config).prepare(loader)])
    assert orders[0] == orders[1]
    torch.manual_seed(0)
    other = [b.tolist() for b in Accelerator(dataloader_config=DataLoaderConfiguration(data_seed=7)).prepare(loader)]
    assert other != orders[0]  # the seed decides: the oracle can fail


def test_dataloader_configuration_contradicted_by_an_old_argument_is_refused():
    with pytest.raises(ValueError, match=r"split_batches=False contradicts dataloader_config.split_batches=True"):
        Accelerator(split_batches=False, dataloader_config=DataLoaderConfiguration(split_batches=True))


# --------------------------------------------------------------------------- GradientAccumulationPlugin
def test_gradient_accumulation_plugin_num_steps_equals_the_argument():
    a, steps_a = train(Accelerator(gradient_accumulation_steps=2))
    b, steps_b = train(Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2)))
    c, _ = train(Accelerator())
    assert steps_a == steps_b == 3  # 5 batches: steps after 2, 4 and the last one
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b)))
    assert not all(torch.equal(p, q) for p, q in zip(params(a), params(c)))
    with pytest.raises(ValueError, match="not both"):
        Accelerator(gradient_accumulation_steps=2, gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2))


def test_sync_with_dataloader_false_does_not_step_on_the_short_last_accumulation():
    # 5 batches, 2 per step: with sync_with_dataloader the 5th batch steps alone; without, it waits.
    plugin = GradientAccumulationPlugin(num_steps=2, sync_with_dataloader=False)
    _, steps = train(Accelerator(gradient_accumulation_plugin=plugin))
    assert steps == 2
    # Over two epochs, the leftover micro-batch of epoch 1 joins the first of epoch 2: 10 batches, 5 steps.
    _, steps = train(Accelerator(gradient_accumulation_plugin=plugin), epochs=2)
    assert steps == 5
    _, steps = train(Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2)), epochs=2)
    assert steps == 6


def test_adjust_scheduler_counts_the_skipped_scheduler_steps_only_when_set_away_from_its_default():
    def scheduler_count(plugin: GradientAccumulationPlugin) -> int:
        accelerator = Accelerator(gradient_accumulation_plugin=plugin)
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
        net, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
        for _ in range(4):
            with accelerator.accumulate(net):
                accelerator.backward(net(torch.ones(1, 4)).sum())
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        return int(scheduler.scheduler._step_count)

    # Accelerate reads the plugin's to_kwargs(): adjust_scheduler=True is its default, so it has no effect.
    assert scheduler_count(GradientAccumulationPlugin(num_steps=4)) == 2  # created, then one real step
    assert scheduler_count(GradientAccumulationPlugin(num_steps=4, adjust_scheduler=True)) == 2
    accelerator = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=4, sync_each_batch=True))
    assert accelerator.gradient_state.plugin_kwargs == {"num_steps": 4, "sync_each_batch": True}


# --------------------------------------------------------------------------- kwargs handlers
def test_kwargs_handlers_are_kept_under_accelerate_s_attribute_names():
    ddp, scaler = DistributedDataParallelKwargs(find_unused_parameters=True), GradScalerKwargs(init_scale=1024)
    accelerator = Accelerator(kwargs_handlers=[ddp, scaler])
    assert accelerator.ddp_handler is ddp and accelerator.scaler_handler is scaler
    assert accelerator.init_handler is None and accelerator.autocast_handler is None
    # One process runs no DistributedDataParallel: its kwargs wait in the ddp section.
    assert accelerator.config.section("ddp") == {"find_unused_parameters": True}
    with pytest.raises(ValueError, match="two DistributedDataParallelKwargs"):
        Accelerator(kwargs_handlers=[ddp, DistributedDataParallelKwargs()])
    with pytest.raises(TypeError, match="kwargs_handlers contains"):
        Accelerator(kwargs_handlers=[{"find_unused_parameters": True}])


def test_grad_scaler_kwargs_reach_the_scaler():
    accelerator = Accelerator(mixed_precision="fp16", cpu=True,
                              kwargs_handlers=[GradScalerKwargs(init_scale=1024, growth_interval=3)])
    assert accelerator.scaler.get_scale() == 1024.0
    assert accelerator.scaler.get_growth_interval() == 3
    assert Accelerator(mixed_precision="fp16", cpu=True).scaler.get_scale() == 65536.0


def test_autocast_kwargs_disabled_runs_the_forward_in_full_precision():
    x = torch.randn(8, 4)
    reference = model()(x)
    plain = Accelerator(mixed_precision="bf16", cpu=True).prepare(model())(x)
    disabled = Accelerator(mixed_precision="bf16", cpu=True,
                           kwargs_handlers=[AutocastKwargs(enabled=False)]).prepare(model())(x)
    assert torch.equal(disabled, reference)
    assert not torch.equal(plain, reference)  # bf16 rounds: the oracle can fail


def test_init_process_group_kwargs_set_the_timeout():
    accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=7))])
    assert accelerator.config.process_group_timeout == 7
    assert accelerator.config.process_group_backend == "gloo"
    assert InitProcessGroupKwargs().timeout == timedelta(seconds=600)  # Accelerate's default for nccl
    with pytest.raises(ConfigError, match="init_method='tcp://x:1'"):
        Accelerator(kwargs_handlers=[InitProcessGroupKwargs(init_method="tcp://x:1")])


def test_profile_writes_one_chrome_trace_with_the_ops_that_ran(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    net = accelerator.prepare(nn.Linear(4, 4))
    with accelerator.profile(ProfileKwargs(activities=["cpu"], record_shapes=True, output_trace_dir=str(tmp_path))) as prof:
        net(torch.randn(3, 4))
    trace = json.loads((tmp_path / "profile_0.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::addmm" in names or "aten::linear" in names
    assert any(e.key in ("aten::addmm", "aten::linear") for e in prof.key_averages())
    with pytest.raises(ValueError, match="'tpu' is not an activity"):
        ProfileKwargs(activities=["tpu"]).build()


def test_fp8_and_the_names_plait_does_not_run_are_refused_plainly():
    with pytest.raises(ConfigError, match=r"mixed_precision='fp8' is not supported by plait.*'bf16'"):
        Accelerator(mixed_precision="fp8")
    from plait.utils import FP8RecipeKwargs, MegatronLMPlugin

    with pytest.raises(NotSupportedError, match="not supported by plait"):
        Accelerator(megatron_lm_plugin=object())
    for name in (FP8RecipeKwargs, MegatronLMPlugin):
        with pytest.raises(NotSupportedError, match="not supported by plait"):
            name()


# --------------------------------------------------------------------------- backend plugins
def test_fsdp_plugin_maps_accelerate_s_fields_onto_the_fsdp_section():
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=False, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["Block"], cpu_offload=True, state_dict_type="FULL_STATE_DICT",
        activation_checkpointing=True, cpu_ram_efficient_loading=True, mixed_precision_policy={"reduce_dtype": "bf16"},
    )
    assert fsdp_section(plugin) == {
        "version": 2, "reshard_after_forward": False, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": ["Block"], "offload_params": True, "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": True, "cpu_ram_efficient_loading": True, "reduce_dtype": "bf16",
    }
    assert fsdp_section(FullyShardedDataParallelPlugin(sharding_strategy="SHARD_GRAD_OP")) == {"reshard_after_forward": False}
    with pytest.raises(ConfigError, match=r"fsdp_plugin.auto_wrap_policy=.* is a function, which backend 'fsdp' cannot"):
        fsdp_section(FullyShardedDataParallelPlugin(auto_wrap_policy=lambda *a: True))
    with pytest.raises(ConfigError, match=r"fsdp_plugin.param_init_fn is not supported by backend 'fsdp'"):
        fsdp_section(FullyShardedDataParallelPlugin(param_init_fn=lambda m: None))


def test_deepspeed_plugin_maps_onto_the_zero_section_and_builds_accelerate_s_config(tmp_path: Path):
    plugin = DeepSpeedPlugin(zero_stage=3, gradient_clipping=1.0, offload_optimizer_device="cpu", zero3_init_flag=True)
    assert zero_section(plugin) == {"stage": 3, "gradient_clipping": 1.0, "offload_optimizer_device": "cpu",
                                    "zero3_init": True}
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "gradient_accumulation_steps": 4,
                                "train_micro_batch_size_per_gpu": 2}))
    from_file = DeepSpeedPlugin(hf_ds_config=str(path))
    assert from_file.zero_stage == 1 and from_file.gradient_accumulation_steps == 4
    assert zero_section(from_file) == {"stage": 1, "zero3_init": False, "config_file": str(path)}
    # As HF Accelerate: the JSON's values win over the fields; a field fills what the JSON leaves out or "auto".
    both = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {"stage": 2}, "gradient_clipping": "auto"},
                           zero_stage=3, gradient_clipping=0.5)
    assert both.zero_stage == 2 and both.deepspeed_config["gradient_clipping"] == 0.5
    assert DeepSpeedPlugin(zero_stage=3).zero3_init_flag is True  # Accelerate's default under ZeRO-3
    with pytest.raises(FileNotFoundError, match="no such file"):
        DeepSpeedPlugin(hf_ds_config=str(tmp_path / "missing.json"))


def test_a_backend_plugin_contradicting_the_backend_argument_is_refused():
    with pytest.raises(ConfigError, match="backend='single' contradicts fsdp_plugin, which runs backend 'fsdp'"):
        Accelerator(backend="single", fsdp_plugin=FullyShardedDataParallelPlugin())


# --------------------------------------------------------------------------- dynamo
def test_dynamo_backend_compiles_the_prepared_model_and_checkpoints_have_plain_keys(tmp_path: Path):
    torch._dynamo.reset()
    eager, _ = train(Accelerator(cpu=True))
    accelerator = Accelerator(cpu=True, dynamo_backend="eager")
    compiled, _ = train(accelerator)
    assert hasattr(compiled, "_orig_mod")  # torch.compile's module
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    inner = accelerator.unwrap_model(compiled, keep_torch_compile=False)
    assert isinstance(inner, nn.Sequential)
    assert list(accelerator.get_state_dict(compiled)) == list(model().state_dict())
    accelerator.save_model(compiled, tmp_path / "export")
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "export" / "model.safetensors"))) == sorted(model().state_dict())
    accelerator.save_state(tmp_path / "state")
    saved = params(compiled)
    with torch.no_grad():
        for p in compiled.parameters():
            p.zero_()
    accelerator.load_state(tmp_path / "state")
    assert all(torch.equal(p, q) for p, q in zip(params(compiled), saved))
    plugin = TorchDynamoPlugin(backend="eager", fullgraph=True)
    assert Accelerator(dynamo_plugin=plugin).dynamo_plugin is plugin
    with pytest.raises(ValueError, match=r"backend='warp'.* not"):
        Accelerator(dynamo_backend="warp")


# --------------------------------------------------------------------------- point 5: Accelerate's behaviour
def test_unwrap_model_strips_data_parallel():
    accelerator = Accelerator(cpu=True)
    inner = nn.Linear(2, 2)
    assert accelerator.unwrap_model(nn.DataParallel(inner)) is inner


def test_save_state_writes_into_an_existing_empty_directory_but_not_a_full_one(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    net = accelerator.prepare(model())
    empty = tmp_path / "empty"
    empty.mkdir()
    accelerator.save_state(empty)
    assert (empty / "model.safetensors").is_file()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    from plait import CheckpointError

    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        accelerator.save_state(full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    del net


def test_an_accelerator_can_be_pickled_with_its_prepared_dataloaders():
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(list(range(10)), batch_size=3))
    loaded = pickle.loads(pickle.dumps(accelerator))
    assert [b.tolist() for b in loaded.prepared.dataloaders[0]] == [b.tolist() for b in loader]
    # Its plugins are loaded again: it still prepares.
    assert loaded.prepare(nn.Linear(2, 2)) in loaded.prepared


# --------------------------------------------------------------------------- point 4: methods
def test_save_and_load_pre_hooks_take_over_a_model_and_their_handles_remove_them(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    net = accelerator.prepare(model())
    calls = []

    def save_hook(models, weights, output_dir):
        calls.append("save")
        torch.save(weights.pop(), Path(output_dir) / "my_model.pt")  # this model is saved the hook's way

    def load_hook(models, input_dir):
        calls.append("load")
        models.pop().load_state_dict(torch.load(Path(input_dir) / "my_model.pt", weights_only=True))

    save_handle = accelerator.register_save_state_pre_hook(save_hook)
    load_handle = accelerator.register_load_state_pre_hook(load_hook)
    saved = params(net)
    accelerator.save_state(tmp_path / "a")
    assert not (tmp_path / "a" / "model.safetensors").exists()
    manifest = json.loads((tmp_path / "a" / "plait_checkpoint.json").read_text())
    assert "my_model.pt" in manifest["files"]  # verified like every other file
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    accelerator.load_state(tmp_path / "a")
    assert all(torch.equal(p, q) for p, q in zip(params(net), saved))
    assert calls == ["save", "load"]
    save_handle.remove()
    load_handle.remove()
    accelerator.save_state(tmp_path / "b")
    assert (tmp_path / "b" / "model.safetensors").is_file() and calls == ["save", "load"]


def test_check_trigger_on_one_process_is_true_once_after_set_trigger():
    accelerator = Accelerator(cpu=True)
    assert accelerator.check_trigger() is False
    accelerator.set_trigger()
    assert accelerator.check_trigger() is True
    assert accelerator.check_trigger() is False


def test_distributed_type_has_every_member_name_accelerate_has():
    from plait import DistributedType

    accelerate_members = ["NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA",
                          "MULTI_XPU", "DEEPSPEED", "FSDP", "XLA", "MEGATRON_LM", "MULTI_HPU", "MULTI_NEURON"]
    assert [m.name for m in DistributedType] == accelerate_members
    assert all(DistributedType[name] == name for name in accelerate_members)


ACCELERATE_TOP_LEVEL = [
    "Accelerator", "PartialState", "DistributedType", "DataLoaderConfiguration", "DistributedDataParallelKwargs",
    "DDPCommunicationHookType", "InitProcessGroupKwargs", "GradScalerKwargs", "AutocastKwargs", "ProfileKwargs",
    "FullyShardedDataParallelPlugin", "DeepSpeedPlugin", "notebook_launcher", "debug_launcher",
    "find_executable_batch_size", "skip_first_batches", "synchronize_rng_states", "init_empty_weights",
    "init_on_device", "dispatch_model", "load_checkpoint_and_dispatch", "infer_auto_device_map", "cpu_offload",
    "disk_offload", "cpu_offload_with_hook", "load_checkpoint_in_model", "prepare_pippy", "ParallelismConfig",
    "is_rich_available",
]


def test_every_name_accelerate_exports_at_its_top_level_and_in_utils_resolves():
    import plait
    import plait.utils

    missing = [name for name in ACCELERATE_TOP_LEVEL if not hasattr(plait, name)]
    assert not missing
    assert set(ACCELERATE_TOP_LEVEL) <= set(dir(plait))
    unresolved = [name for name in plait.utils.__all__ if getattr(plait.utils, name, None) is None]
    assert not unresolved
    for module in ("plait.state", "plait.logging", "plait.launchers", "plait.local_sgd", "plait.big_modeling"):
        __import__(module)
    from plait.local_sgd import LocalSGD
    from plait.logging import get_logger
    from plait.state import AcceleratorState, GradientState, PartialState

    assert callable(get_logger) and LocalSGD and AcceleratorState and GradientState and PartialState


def test_use_stateful_dataloader_resumes_mid_epoch_after_load_state(tmp_path: Path):
    def loader_run(stateful: bool) -> tuple[list[list[int]], list[list[int]]]:
        config = DataLoaderConfiguration(use_stateful_dataloader=stateful)
        torch.manual_seed(3)
        accelerator = Accelerator(cpu=True, dataloader_config=config)
        loader = accelerator.prepare(DataLoader(list(range(12)), batch_size=2, shuffle=True))
        full = [b.tolist() for b in loader]  # epoch 0
        seen = []
        for i, batch in enumerate(loader):  # epoch 1, interrupted after 2 batches
            seen.append(batch.tolist())
            if i == 1:
                accelerator.save_state(tmp_path / f"mid-{stateful}")
                break
        torch.manual_seed(99)
        again = Accelerator(cpu=True, dataloader_config=config)
        resumed = again.prepare(DataLoader(list(range(12)), batch_size=2, shuffle=True))
        again.load_state(tmp_path / f"mid-{stateful}")
        return seen + [b.tolist() for b in resumed], full

    epoch, first = loader_run(stateful=True)
    assert len(epoch) == 6 and sorted(x for b in epoch for x in b) == list(range(12))
    assert epoch != first  # epoch 1's own order, continued where it stopped
    plain, _ = loader_run(stateful=False)
    assert len(plain) == 8  # without it, Accelerate's protocol: the pass restarts (skip_first_batches is the user's)
