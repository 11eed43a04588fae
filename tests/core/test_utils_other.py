"""plait.utils.other: unwrapping models, save/load, the environment helpers, write_basic_config, and merging
torch.distributed.checkpoint folders (here written by one process; tests/fsdp merges a real 2-process FSDP run)."""

from __future__ import annotations

import io
import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from plait.errors import CheckpointError, NotSupportedError
from plait.testing import identical, run_processes
from plait.utils import (
    clear_environment,
    convert_bytes,
    extract_model_from_parallel,
    get_int_from_env,
    get_pretty_name,
    is_compiled_module,
    is_port_in_use,
    load,
    merge_dicts,
    merge_fsdp_weights,
    parse_choice_from_env,
    parse_flag_from_env,
    patch_environment,
    save,
    str_to_bool,
    write_basic_config,
)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


# --------------------------------------------------------------------------- models
def test_containers_are_removed_and_compile_is_kept_or_not():
    inner = model()
    assert extract_model_from_parallel(inner) is inner  # a plain module (what FSDP2 gives) is the module
    assert extract_model_from_parallel(nn.DataParallel(nn.DataParallel(inner))) is inner
    compiled = torch.compile(nn.DataParallel(inner))
    assert is_compiled_module(compiled) and not is_compiled_module(inner)
    kept = extract_model_from_parallel(compiled)
    assert kept is compiled and kept._orig_mod is inner  # the compiled wrapper now around the module itself
    assert extract_model_from_parallel(torch.compile(inner), keep_torch_compile=False) is inner


def test_ddp_is_removed(tmp_path: Path):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        inner = model()
        assert extract_model_from_parallel(nn.parallel.DistributedDataParallel(inner)) is inner
    finally:
        dist.destroy_process_group()


def test_deepspeed_engines_are_recognised_without_importing_deepspeed():
    imported = "deepspeed" in sys.modules
    inner = model()
    engine_class = type("DeepSpeedEngine", (nn.Module,), {"__module__": "deepspeed.runtime.engine"})
    pipeline_class = type("PipelineEngine", (engine_class,), {"__module__": "deepspeed.runtime.pipe.engine"})
    engine = pipeline_class()
    engine.module = inner
    assert extract_model_from_parallel(engine) is inner
    lookalike = type("DeepSpeedEngine", (nn.Module,), {"__module__": "somewhere.else"})()
    assert extract_model_from_parallel(lookalike) is lookalike
    assert ("deepspeed" in sys.modules) == imported


def test_recursive_removes_containers_of_children():
    inner = model()
    outer = nn.Sequential(nn.DataParallel(inner[0]), inner[2])
    assert extract_model_from_parallel(outer, recursive=True)[0] is inner[0]


def test_keep_fp32_wrapper_false_removes_the_mixed_precision_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from plait import Accelerator

    monkeypatch.chdir(tmp_path)
    prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare(model())
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    exact = model()(x)
    assert not torch.equal(prepared(x), exact)  # computed in bfloat16
    unwrapped = extract_model_from_parallel(prepared, keep_fp32_wrapper=False)
    assert torch.equal(unwrapped(x), exact)  # float32 again: the patch is gone


def test_bad_model_names_the_type():
    with pytest.raises(TypeError, match=r"extract_model_from_parallel\(dict\): expected a torch.nn.Module"):
        extract_model_from_parallel({})


def test_get_pretty_name():
    class Outer:
        class Inner:
            pass

    assert get_pretty_name(Outer.Inner) == "test_get_pretty_name.<locals>.Outer.Inner"
    assert get_pretty_name(Outer.Inner()) == "test_get_pretty_name.<locals>.Outer.Inner"
    assert get_pretty_name(get_pretty_name) == "get_pretty_name"
    assert get_pretty_name(3) == "int"


# --------------------------------------------------------------------------- save and load
def test_save_and_load_give_the_exact_tensors(tmp_path: Path):
    state = model().state_dict()
    save(state, tmp_path / "w.pt")
    assert identical(load(tmp_path / "w.pt"), state)
    tied = {"a": torch.arange(6.0), "b": torch.randn(2, 3)}
    tied["alias"] = tied["a"]
    save(tied, tmp_path / "w.safetensors", safe_serialization=True)
    stored = load_file(str(tmp_path / "w.safetensors"))
    assert set(stored) == {"a", "b"}  # shared memory stored once
    from plait.checkpoint.tensor_files import load_safetensors

    assert identical(load_safetensors(tmp_path / "w.safetensors"), tied)
    buffer = io.BytesIO()
    save(tied, buffer, safe_serialization=True)
    from safetensors.torch import load as load_bytes

    assert identical(load_bytes(buffer.getvalue()), {"a": tied["a"], "b": tied["b"]})
    with pytest.raises(TypeError, match=r"got a list: safetensors stores a dict of tensors"):
        save([1], tmp_path / "x.safetensors", safe_serialization=True)


class Payload:
    def __reduce__(self) -> Any:
        return (os.getcwd, ())


def test_load_reads_numpy_rng_states_but_no_code(tmp_path: Path):
    rng = np.random.RandomState(3)
    rng.rand(5)
    saved = {"numpy": rng.get_state(), "torch": torch.get_rng_state()}
    torch.save(saved, tmp_path / "rng.pt")
    before = set(map(id, torch.serialization.get_safe_globals()))
    loaded = load(tmp_path / "rng.pt")
    assert set(map(id, torch.serialization.get_safe_globals())) == before  # the allowlist is restored
    restored = np.random.RandomState()
    restored.set_state(loaded["numpy"])
    assert np.array_equal(restored.rand(4), rng.rand(4)) and torch.equal(loaded["torch"], saved["torch"])
    torch.save({"x": Payload()}, tmp_path / "code.pt")
    with pytest.raises(pickle.UnpicklingError):
        load(tmp_path / "code.pt")
    assert load(tmp_path / "code.pt", weights_only=False)["x"] == os.getcwd()


def save_worker(directory: str) -> list[str]:
    from plait.state import PartialState
    from plait.utils import save

    rank = PartialState(cpu=True).process_index
    save({"rank": torch.tensor(rank)}, Path(directory) / f"global_{rank}.pt")
    save({"rank": torch.tensor(rank)}, Path(directory) / f"node_{rank}.pt", save_on_each_node=True)
    save({"rank": torch.tensor(rank)}, Path(directory) / f"safe_{rank}.safetensors", safe_serialization=True)
    PartialState().wait_for_everyone()
    return sorted(os.listdir(directory))


def test_only_the_main_process_saves(tmp_path: Path):
    written = run_processes(save_worker, 2, args=(str(tmp_path),))
    assert written[0] == written[1] == ["global_0.pt", "node_0.pt", "safe_0.safetensors"]  # one machine: rank 0


def test_merge_dicts_merges_nested_dicts():
    destination = {"a": {"x": 1, "y": 2}, "b": 1}
    assert merge_dicts({"a": {"y": 3, "z": {"k": 4}}, "c": 5}, destination) is destination
    assert destination == {"a": {"x": 1, "y": 3, "z": {"k": 4}}, "b": 1, "c": 5}


# --------------------------------------------------------------------------- config file
def test_write_basic_config_writes_plait_s_default_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from plait.config import default_config_path, resolve_config
    from plait.config.yaml_files import load_config_file

    path = write_basic_config(mixed_precision="BF16")
    assert path == default_config_path() and Path(path).is_file()
    values = load_config_file(Path(path), ())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert values["mixed_precision"] == "bf16"
    if gpus <= 1:
        assert (values["backend"], values["num_processes"], values["cpu"]) == ("single", 1, gpus == 0)
    assert resolve_config({}).mixed_precision == "bf16"  # what every run reads
    text = Path(path).read_text()
    assert write_basic_config(mixed_precision="no") is False  # as Accelerate: an existing file is kept
    assert Path(path).read_text() == text and "already exists" in capsys.readouterr().out
    elsewhere = write_basic_config(save_location=tmp_path / "sub" / "c.yaml")
    assert elsewhere == tmp_path / "sub" / "c.yaml" and load_config_file(elsewhere, ())["mixed_precision"] == "no"


def test_write_basic_config_refuses_what_plait_cannot_run(tmp_path: Path):
    with pytest.raises(NotSupportedError, match=r"mixed_precision='fp8' is not supported by plait: .*'bf16'"):
        write_basic_config("fp8", tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=r"mixed_precision='fp32' is not valid: expected one of 'no', 'fp16', 'bf16'"):
        write_basic_config("fp32", tmp_path / "a.yaml")
    assert not (tmp_path / "a.yaml").exists()


# --------------------------------------------------------------------------- environment
def test_patch_environment_upper_cases_and_restores_exactly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLAIT_T_KEPT", "before")
    monkeypatch.delenv("PLAIT_T_NEW", raising=False)
    with patch_environment(plait_t_kept=1, PLAIT_T_NEW=2.5):
        assert os.environ["PLAIT_T_KEPT"] == "1" and os.environ["PLAIT_T_NEW"] == "2.5"
        os.environ["PLAIT_T_KEPT"] = "changed inside"
    assert os.environ["PLAIT_T_KEPT"] == "before" and "PLAIT_T_NEW" not in os.environ
    with pytest.raises(KeyError), patch_environment(PLAIT_T_NEW="x"):
        raise KeyError("inside")
    assert "PLAIT_T_NEW" not in os.environ
    with pytest.raises(ValueError, match="the same variable once upper-cased"), patch_environment(a=1, A=2):
        pass


def test_clear_environment_gives_everything_back(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLAIT_T_KEPT", "before")
    saved = dict(os.environ)
    with clear_environment():
        assert dict(os.environ) == {}
        os.environ["PLAIT_T_ADDED"] = "x"
    assert dict(os.environ) == saved


def test_environment_parsers(monkeypatch: pytest.MonkeyPatch):
    assert [str_to_bool(v) for v in ("YES", "on", "1", "f", "No", "0")] == [1, 1, 1, 0, 0, 0]
    assert str_to_bool("true", to_bool=True) is True and str_to_bool("off", to_bool=True) is False
    with pytest.raises(ValueError, match="invalid truth value 'maybe'"):
        str_to_bool("maybe")
    monkeypatch.setenv("PLAIT_T_A", "-1")
    monkeypatch.setenv("PLAIT_T_B", "7")
    assert get_int_from_env(["PLAIT_T_MISSING", "PLAIT_T_A", "PLAIT_T_B"], 3) == 7
    assert get_int_from_env(["PLAIT_T_MISSING"], 3) == 3
    monkeypatch.setenv("PLAIT_T_C", "seven")
    with pytest.raises(ValueError, match="PLAIT_T_C='seven' is not valid: expected a whole number"):
        get_int_from_env(["PLAIT_T_C"], 0)
    monkeypatch.setenv("PLAIT_T_FLAG", "yes")
    assert parse_flag_from_env("PLAIT_T_FLAG") and not parse_flag_from_env("PLAIT_T_MISSING")
    assert parse_flag_from_env("PLAIT_T_MISSING", default=True)
    with pytest.raises(ValueError, match="PLAIT_T_C='seven' is not valid"):
        parse_flag_from_env("PLAIT_T_C")
    assert parse_choice_from_env("PLAIT_T_B") == "7" and parse_choice_from_env("PLAIT_T_MISSING") == "no"


def test_convert_bytes_is_accelerate_s_format():
    assert [convert_bytes(n) for n in (100, 1536, 5 * 1024**2, 1024**3 * 2.25, 3 * 1024**5)] == [
        "100 bytes", "1.5 KB", "5.0 MB", "2.25 GB", "3.0 PB"]


def test_is_port_in_use():
    with socket.socket() as listening:
        listening.bind(("localhost", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert is_port_in_use(port)
    assert not is_port_in_use(port)


# --------------------------------------------------------------------------- merging DCP folders
def _dcp_save(state: dict[str, Any], folder: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled": one process, as asked
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


@pytest.mark.parametrize("layout", ["plait", "accelerate"])
def test_merge_fsdp_weights_of_a_dcp_folder_gives_every_tensor_exactly(tmp_path: Path, layout: str):
    state = model().state_dict()
    folder = tmp_path / "pytorch_model_fsdp_0"
    _dcp_save(state if layout == "plait" else {"model": state}, folder)
    written = merge_fsdp_weights(folder, tmp_path / "out")
    assert written == tmp_path / "out" / "model.safetensors"
    assert identical(load_file(str(written)), state)
    # HF Accelerate's save_state folder (holding pytorch_model_fsdp_0/) works too; .bin without safetensors.
    written = merge_fsdp_weights(tmp_path, tmp_path / "bin", safe_serialization=False)
    assert written.name == "pytorch_model.bin" and identical(torch.load(written, weights_only=True), state)


def test_merge_fsdp_weights_can_remove_the_checkpoint_but_not_the_output(tmp_path: Path):
    state = model().state_dict()
    _dcp_save(state, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="is inside checkpoint_dir"):
        merge_fsdp_weights(tmp_path / "ckpt", tmp_path / "ckpt" / "merged", remove_checkpoint_dir=True)
    written = merge_fsdp_weights(tmp_path / "ckpt", tmp_path / "merged", remove_checkpoint_dir=True)
    assert identical(load_file(str(written)), state) and not (tmp_path / "ckpt").exists()


def test_merge_fsdp_weights_names_what_is_not_a_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"is not a sharded checkpoint: expected a plait checkpoint holding "
                                              r"pytorch_model_fsdp_0/ or a torch\.distributed\.checkpoint directory"):
        merge_fsdp_weights(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
