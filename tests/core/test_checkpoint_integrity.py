"""Checkpoints load all or nothing, only what the manifest lists and verifies, never through an unrestricted
unpickler; their removal never leaves a half-deleted one that looks complete; what cannot be loaded back is
refused when saving; a full disk names the checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from plait import Accelerator, CheckpointError, ProjectConfiguration
from plait.checkpoint import DELETE_MARK, MANIFEST, TMP_MARK, automatic_checkpoints, checksum_file


class Holder:
    """A registered object whose state is whatever the test puts in it."""

    def __init__(self, state: Any = None) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


class Other(Holder):
    pass


def step_lr(optimizer: Any) -> Any:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def train(groups: int = 1, optimizer_class: type = torch.optim.AdamW, out_features: int = 2,
          register: tuple[Any, ...] = (), scheduler_class: Any = step_lr,
          **kwargs: Any) -> tuple[Accelerator, nn.Module, Any, Any]:
    """An accelerator with a model, an optimizer, a scheduler and registered objects, after one step."""
    accelerator = Accelerator(**kwargs)
    torch.manual_seed(0)
    model = nn.Linear(4, out_features)
    params = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}] if groups == 2 else model.parameters()
    optimizer = optimizer_class(params, lr=0.1)
    scheduler = scheduler_class(optimizer)
    accelerator.register_for_checkpointing(*register)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.backward(model(torch.ones(3, 4)).sum())
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return accelerator, model, optimizer, scheduler


def frozen(model: nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Clones of every tensor of the model, the optimizer's state dict, the scheduler's, the RNG's."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()), "scheduler": copy.deepcopy(scheduler.state_dict()),
            "rng": torch.get_rng_state()}


def assert_unchanged(model: nn.Module, optimizer: Any, scheduler: Any, before: dict[str, Any]) -> None:
    now = frozen(model, optimizer, scheduler)
    assert now["model"].keys() == before["model"].keys()
    for key, tensor in before["model"].items():
        assert torch.equal(now["model"][key], tensor), key
    assert_equal_nested(now["optimizer"], before["optimizer"])
    assert now["scheduler"] == before["scheduler"]
    assert torch.equal(now["rng"], before["rng"])


def assert_equal_nested(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_nested(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_nested(x, y)
    else:
        assert a == b


def saved(tmp_path: Path, **kwargs: Any) -> Path:
    accelerator, *_ = train(**kwargs)
    return Path(accelerator.save_state(tmp_path / "ckpt"))


def refused_and_unchanged(path: Path, message: str, **kwargs: Any) -> str:
    """Loading ``path`` into a differently trained run is refused with ``message``, and nothing changed."""
    accelerator, model, optimizer, scheduler = train(**kwargs)
    with torch.no_grad():
        model.weight.add_(5.0)
    before = frozen(model, optimizer, scheduler)
    with pytest.raises(CheckpointError, match=message) as error:
        accelerator.load_state(path)
    assert "nothing was loaded" in str(error.value)
    assert_unchanged(model, optimizer, scheduler, before)
    return str(error.value)


def edit_manifest(path: Path, change: Any) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def relist(path: Path, name: str) -> None:
    """Make the manifest vouch for ``name`` as it is now (what a crafted checkpoint would do)."""
    def change(manifest: dict[str, Any]) -> None:
        manifest["files"][name] = {"algorithm": "xxh3_128", "digest": checksum_file(path / name),
                                   "size": (path / name).stat().st_size}

    edit_manifest(path, change)


# --------------------------------------------------------------------------- point 3: all or nothing
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer_class": torch.optim.SGD},
         r"optimizer 0 was saved from a torch\.optim\.adamw\.AdamW but this accelerator's is a torch\.optim\.sgd\.SGD"),
        ({"optimizer_class": torch.optim.Adam}, r"saved from a torch\.optim\.adamw\.AdamW .* torch\.optim\.adam\.Adam"),
        ({"groups": 2}, r"optimizer\.pt: it holds 1 parameter groups but the optimizer has 2"),
    ],
    ids=["adamw-into-sgd", "adamw-into-adam", "one-group-into-two"],
)
def test_an_optimizer_that_does_not_fit_is_refused_before_anything_changes(tmp_path, kwargs, message):
    refused_and_unchanged(saved(tmp_path), message, **kwargs)


def test_two_parameter_groups_into_one_are_refused_before_the_weights_change(tmp_path):
    refused_and_unchanged(saved(tmp_path, groups=2), r"holds 2 parameter groups but the optimizer has 1")


def test_an_optimizer_state_of_another_shape_is_refused(tmp_path):
    path = saved(tmp_path)
    accelerator, model, optimizer, scheduler = train(out_features=3)
    accelerator.register_load_state_pre_hook(lambda models, _: models.clear())  # the model is not loaded...
    before = frozen(model, optimizer, scheduler)
    with pytest.raises(CheckpointError, match=r"state 'exp_avg' of parameter 0 has shape \(2, 4\) but the "
                                              r"parameter's is \(3, 4\); nothing was loaded"):
        accelerator.load_state(path)  # ...but its optimizer's state is checked all the same
    assert_unchanged(model, optimizer, scheduler, before)


def test_a_missing_optimizer_file_is_refused_before_the_weights_change(tmp_path):
    path = saved(tmp_path)
    (path / "optimizer.pt").unlink()
    edit_manifest(path, lambda m: m["files"].pop("optimizer.pt"))
    refused_and_unchanged(path, r"plait_checkpoint.json does not list file 'optimizer.pt'")


def test_a_scheduler_of_another_class_is_refused(tmp_path):
    refused_and_unchanged(saved(tmp_path), r"scheduler 0 was saved from a torch\.optim\.lr_scheduler\.StepLR but this "
                          r"accelerator's is a torch\.optim\.lr_scheduler\.ExponentialLR",
                          scheduler_class=lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9))


def test_registered_objects_in_another_order_are_refused(tmp_path):
    path = saved(tmp_path, register=(Holder({"a": 1}), Other({"b": 2})))
    first, second = Other({"b": 0}), Holder({"a": 0})
    refused_and_unchanged(path, r"registered object 0 was saved from a .*\.Holder but this accelerator's is a "
                                r".*\.Other", register=(first, second))
    assert (first.state, second.state) == ({"b": 0}, {"a": 0})


def test_a_load_refused_by_a_later_model_leaves_the_first_unchanged(tmp_path):
    accelerator = Accelerator()
    first, _ = accelerator.prepare(nn.Linear(2, 2), nn.Linear(2, 3))
    path = accelerator.save_state(tmp_path / "ckpt")
    other = Accelerator()
    first2, _ = other.prepare(nn.Linear(2, 2), nn.Linear(2, 4))
    weight = first2.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"model_1.safetensors: key 'weight' has shape \(3, 2\)"):
        other.load_state(path)
    assert torch.equal(first2.weight, weight)
    assert not torch.equal(first2.weight, first.weight)


@pytest.mark.parametrize(
    ("name", "state", "message"),
    [("dataloader.pt", {"epoch": 1, "seed": -1}, r"dataloader 0's state has 'position' = None, expected int"),
     ("dataloader.pt", {"epoch": 1, "position": 2.5, "seed": -1}, r"dataloader 0's state has 'position' = 2.5"),
     ("scaler.pt", {}, r"the gradient scaler's state in scaler.pt lacks \['scale'"),
     ("random_states_0.pt", {"python": {}}, r"random_states_0.pt is not the RNG state save_state writes")],
    ids=["dataloader-without-position", "dataloader-float-position", "empty-scaler", "rng-without-numpy"],
)
def test_a_small_state_that_does_not_fit_its_target_is_refused(tmp_path, name, state, message):
    from torch.utils.data import DataLoader

    def build() -> tuple[Accelerator, nn.Module, Any]:
        accelerator = Accelerator(mixed_precision="fp16", cpu=True)
        model, loader = accelerator.prepare(nn.Linear(2, 1), DataLoader(list(range(8)), batch_size=2))
        return accelerator, model, loader

    accelerator, _, loader = build()
    next(iter(loader))
    path = Path(accelerator.save_state(tmp_path / "ckpt"))
    torch.save(state, path / name)
    relist(path, name)
    fresh, model2, loader2 = build()
    with torch.no_grad():
        model2.weight.fill_(3.0)
    scale = fresh.scaler.get_scale()
    with pytest.raises(CheckpointError, match=message + r".*nothing was loaded"):
        fresh.load_state(path)
    assert torch.all(model2.weight == 3.0) and (loader2.epoch, loader2.position) == (0, 0)
    assert fresh.scaler.get_scale() == scale


# --------------------------------------------------------------------------- point 4: only what the manifest vouches for
def _copy_weights_from(tmp_path: Path) -> Any:
    def damage(path: Path) -> None:
        accelerator = Accelerator()
        model = accelerator.prepare(nn.Linear(4, 2))
        with torch.no_grad():
            model.weight.fill_(7.0)
        other = Path(accelerator.save_state(tmp_path / "other"))
        edit_manifest(path, lambda m: m["files"].pop("model.safetensors"))
        (path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: edit_manifest(path, lambda m: m.update(files={})),
         r"plait_checkpoint.json does not list file '\w+\.\w+'"),
        ("unlisted", r"plait_checkpoint.json does not list file 'model.safetensors'"),
        (lambda path: edit_manifest(path, lambda m: m.update(format=99)),
         r"plait_checkpoint.json has format 99, but this plait reads format 1 only"),
        (lambda path: edit_manifest(path, lambda m: m.update(files=list(m["files"]))),
         r"plait_checkpoint.json is malformed: 'files' is list"),
        (lambda path: edit_manifest(path, lambda m: m["files"]["model.safetensors"].pop("size")),
         r"plait_checkpoint.json is malformed: the entry of 'model.safetensors' has size None"),
        (lambda path: edit_manifest(path, lambda m: m["files"].update({"../x": {"size": 0, "digest": ""}})),
         r"plait_checkpoint.json is malformed: file name '\.\./x' is not a relative path"),
        (lambda path: edit_manifest(path, lambda m: m["metadata"].update(step="3")),
         r"plait_checkpoint.json is malformed: metadata 'step' is '3'"),
    ],
    ids=["files-empty", "unlisted-file", "format-99", "files-a-list", "entry-without-size", "outside-path",
         "step-a-string"],
)
def test_only_listed_verified_files_of_a_well_formed_manifest_are_loaded(tmp_path, damage, message):
    path = saved(tmp_path)
    (_copy_weights_from(tmp_path) if damage == "unlisted" else damage)(path)
    refused_and_unchanged(path, message)


# --------------------------------------------------------------------------- point 1: no unrestricted unpickler
class Payload:
    """What a crafted file holds: unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["optimizer.pt", "custom_checkpoint_0.pt", "scheduler.pt", "random_states_0.pt"])
def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, name):
    path = saved(tmp_path, register=(Holder({"a": 1}),))
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, path / name)
    relist(path, name)
    message = refused_and_unchanged(path, "could not be loaded safely", register=(Holder({"a": 0}),))
    assert f"checkpoint file {path / name} " in message
    assert not marker.exists()


# --------------------------------------------------------------------------- point 6: what is saved loads back
@dataclasses.dataclass
class Settings:
    lr: float = 0.1


def test_numpy_and_datetime_values_round_trip_exactly(tmp_path):
    np.random.seed(7)
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    state = {"rng": np.random.get_state(), "array": np.arange(12, dtype=np.float16).reshape(3, 4)[:, ::2],
             "ints": np.array([[1, 2]], dtype=np.uint32), "scalar": np.int64(-5), "real": np.float32(0.25),
             "when": when, "day": dt.date(2023, 1, 2), "lasted": dt.timedelta(days=1, microseconds=5),
             "nested": [(np.bool_(True), {"k": np.zeros((0, 2))})], "empty": b"", "raw": bytearray(b"\x00\xff")}
    accelerator, *_ = train(register=(Holder(state),))
    path = accelerator.save_state(tmp_path / "ckpt")
    restored = Holder()
    train(register=(restored,))[0].load_state(path)
    back = restored.state
    kind, keys, *rest = state["rng"]
    assert back["rng"][0] == kind and back["rng"][2:] == tuple(rest)
    for got, want in [(back["rng"][1], keys), (back["array"], state["array"]), (back["ints"], state["ints"]),
                      (back["nested"][0][1]["k"], state["nested"][0][1]["k"])]:
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    for key in ("scalar", "real", "when", "day", "lasted", "empty", "raw"):
        assert type(back[key]) is type(state[key]) and back[key] == state[key], key
    assert back["when"].utcoffset() == dt.timedelta(hours=-3)
    assert type(back["nested"][0][0]) is np.bool_ and back["nested"][0][0]
    np.random.set_state(back["rng"])  # numpy accepts the restored state
    np.random.seed(7)
    expected = np.random.rand(3)
    np.random.set_state(back["rng"])
    assert np.array_equal(np.random.rand(3), expected)


@pytest.mark.parametrize(
    ("value", "path", "kind"),
    [(Settings(), r"state\['config'\]", r"[\w.]*test_checkpoint_integrity\.Settings"),
     ({"deep": [1, {2}, os.stat_result(range(10))]}, r"state\['config'\]\['deep'\]\[2\]", r"os\.stat_result"),
     (torch.optim.SGD, r"state\['config'\]", r"builtins\.type")],
    ids=["dataclass", "namedtuple-like", "a-class"],
)
def test_a_state_that_would_not_load_is_refused_when_saving(tmp_path, value, path, kind):
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    accelerator, *_ = train(register=(Holder({"ok": 1}), Holder({"config": value})), project_config=config)
    with pytest.raises(CheckpointError, match=rf"registered object 1 \(.*\.Holder\)'s state_dict\(\) holds a "
                                              rf"{kind} at {path}.*Return plain containers"):
        accelerator.save_state()
    assert accelerator.project_configuration.iteration == 0
    assert not any((tmp_path / "checkpoints").iterdir())  # no checkpoint, no temporary directory


# --------------------------------------------------------------------------- point 8: a full disk names the checkpoint
def test_a_full_disk_names_the_checkpoint_and_keeps_nothing(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full, where every write fails with ENOSPC")
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    accelerator, *_ = train(project_config=config)
    accelerator.save_state()

    def full_disk(models: list[Any], weights: list[Any], output_dir: str) -> None:
        os.symlink("/dev/full", Path(output_dir) / "model.safetensors")  # the weights' writes fail for real

    handle = accelerator.register_save_state_pre_hook(full_disk)
    final = tmp_path / "checkpoints" / "checkpoint_1"
    with pytest.raises(CheckpointError, match=rf"no space left on the device to save checkpoint {final} "
                                              rf"\(\[Errno 28\] No space left on device\)"):
        accelerator.save_state()
    assert accelerator.project_configuration.iteration == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_0"]
    handle.remove()
    assert Path(accelerator.save_state()).name == "checkpoint_1"


# --------------------------------------------------------------------------- point 5: removal is never half-done
ROTATE_AND_DIE = """
import os, shutil, sys
import torch
from plait import Accelerator, ProjectConfiguration

accelerator = Accelerator(project_config=ProjectConfiguration(
    project_dir=sys.argv[1], automatic_checkpoint_naming=True, total_limit=1))
model = accelerator.prepare(torch.nn.Linear(2, 2))
accelerator.save_state()

def dies_while_deleting(path, *args, **kwargs):
    os.remove(os.path.join(path, "model.safetensors"))  # the first file is gone...
    os._exit(9)                                           # ...and the process is killed

shutil.rmtree = dies_while_deleting
accelerator.save_state()  # checkpoint_1, then rotation deletes checkpoint_0
"""


def test_a_kill_during_rotation_leaves_no_half_deleted_checkpoint_that_looks_complete(tmp_path):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(ROTATE_AND_DIE), str(tmp_path)], timeout=120,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 9, result.stderr
    folder = tmp_path / "checkpoints"
    assert [p.name for _, p in automatic_checkpoints(folder)] == ["checkpoint_1"]
    assert len(list(folder.glob(f".checkpoint_0{DELETE_MARK}*"))) == 1, "the interrupted deletion's leftover"
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=1)
    accelerator = Accelerator(project_config=config)
    accelerator.prepare(nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        accelerator.load_state(next(folder.glob(f".checkpoint_0{DELETE_MARK}*")))
    assert Path(accelerator.load_state()).name == "checkpoint_1"
    accelerator.save_state()  # the next save finishes the interrupted deletion
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_2"]


def test_an_overwritten_checkpoint_is_kept_until_its_replacement_is_in_place(tmp_path):
    from plait.checkpoint import OLD_MARK, remove_stale_temporaries

    accelerator, *_ = train()
    path = Path(accelerator.save_state(tmp_path / "ckpt"))
    # A kill between the two renames of commit(overwrite=True): the old checkpoint is hidden, the new one not in place.
    hidden = tmp_path / f".ckpt{OLD_MARK}abc"
    os.replace(path, hidden)
    remove_stale_temporaries(path)  # what the next save does first
    assert (hidden / MANIFEST).is_file(), "the only complete copy is never deleted"
    os.replace(hidden, path)
    accelerator.save_state(path, overwrite=True)
    assert not list(tmp_path.glob(f".ckpt{OLD_MARK}*")) and not list(tmp_path.glob(f".ckpt{TMP_MARK}*"))
    (tmp_path / f".ckpt{OLD_MARK}def").mkdir()  # an interrupted deletion after the replacement was in place
    remove_stale_temporaries(path)
    assert not list(tmp_path.glob(f".ckpt{OLD_MARK}*"))


def test_a_checkpoint_without_this_process_s_rng_state_loads_with_a_warning(tmp_path):
    path = saved(tmp_path)
    (path / "random_states_0.pt").unlink()
    edit_manifest(path, lambda m: m["files"].pop("random_states_0.pt"))
    accelerator, model, *_ = train()
    with torch.no_grad():
        model.weight.add_(5.0)
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match=r"has no RNG state for process 0 \(saved by 1 processes\)") as record:
        accelerator.load_state(path)
    assert record[0].filename == __file__  # the warning points at the caller's load_state
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model.weight, train()[1].weight)  # the weights were loaded


# --------------------------------------------------------------------------- one pass: verified files read once
def rewrite_header(path: Path, change: Any) -> None:
    """Rewrite a safetensors file's header (``change`` edits the parsed JSON) keeping its data, and relist it."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size:])
    relist(path.parent, path.name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h["weight"].update(data_offsets=[0, 10**9]), r"tensor 'weight' of shape \[2, 4\] does not fit its bytes"),
        (lambda h: h["weight"].update(dtype="F64"), r"tensor 'weight' of shape \[2, 4\] does not fit its bytes"),
        (lambda h: h["weight"].update(shape=[3, 4]), r"key 'weight' has shape \(3, 4\) but the model's is \(2, 4\)"),
        (lambda h: h["weight"].pop("data_offsets"), r"malformed safetensors header at 'weight'"),
    ],
)
def test_a_safetensors_header_that_does_not_describe_its_bytes_is_refused(tmp_path, change, message):
    """The verified mapping is read by plait's own header parser: a crafted header whose manifest vouches for
    it (offsets past the end, a shape its bytes cannot hold) is refused by name, never read out of bounds."""
    path = saved(tmp_path)
    rewrite_header(path / "model.safetensors", change)
    error = refused_and_unchanged(path, message)
    assert str(path / "model.safetensors") in error


def test_loaded_tensors_are_the_verified_bytes_and_training_never_writes_the_checkpoint(tmp_path):
    """The model and optimizer state come from the mapping the checksum was computed on, exactly; training
    after the load writes copy-on-write pages, so the checkpoint still verifies, and a second load from it
    restores the same numbers again."""
    from plait.checkpoint import verify
    from plait.checkpoint.tensor_files import load_safetensors

    accelerator, model, optimizer, scheduler = train()
    path = Path(accelerator.save_state(tmp_path / "ckpt"))
    expected = frozen(model, optimizer, scheduler)
    for _ in range(3):
        accelerator.backward(model(torch.ones(3, 4)).sum())
        optimizer.step()
        optimizer.zero_grad()
    accelerator.load_state(path)
    assert_unchanged(model, optimizer, scheduler, {**expected, "rng": torch.get_rng_state()})
    for _ in range(3):  # AdamW updates its exp_avg/exp_avg_sq in place: views of the mapping
        accelerator.backward(model(torch.ones(3, 4)).sum())
        optimizer.step()
        optimizer.zero_grad()
    verify(path)
    on_disk = load_safetensors(path / "optimizer.safetensors")
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(on_disk[f"state.0.{name}"], expected["optimizer"]["state"][0][name])
        assert not torch.equal(optimizer.state_dict()["state"][0][name], expected["optimizer"]["state"][0][name])
    accelerator.load_state(path)
    assert_unchanged(model, optimizer, scheduler, {**expected, "rng": torch.get_rng_state()})
