"""Checkpoints are complete or absent; bad input is refused with the file named, and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plait import Accelerator, CheckpointError, ProjectConfiguration
from plait.checkpoint import MANIFEST, TMP_MARK


def prepared(**kwargs):
    accelerator = Accelerator(**kwargs)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(model(torch.ones(3, 4)).sum())
    optimizer.step()
    optimizer.zero_grad()
    return accelerator, model, optimizer


def snapshot(model: nn.Module, optimizer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    for i, s in optimizer.state_dict()["state"].items():
        state.update({f"opt.{i}.{k}": v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)})
    return state


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_and_load_round_trip_with_manifest(tmp_path: Path) -> None:
    accelerator, model, optimizer = prepared()
    saved = snapshot(model, optimizer)
    path = Path(accelerator.save_state(tmp_path / "ckpt"))
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.safetensors", "optimizer.pt", "random_states_0.pt"}
    assert all(entry["algorithm"] == "xxh3_128" and len(entry["digest"]) == 32 for entry in manifest["files"].values())
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))
    with torch.no_grad():
        model.weight.add_(1.0)
    accelerator.backward(model(torch.ones(3, 4)).sum())
    optimizer.step()
    accelerator.load_state(path)
    assert_same(snapshot(model, optimizer), saved)


def test_manifests_with_sha256_entries_verify_too(tmp_path: Path) -> None:
    import hashlib

    from plait.checkpoint import verify

    accelerator, _, _ = prepared()
    path = Path(accelerator.save_state(tmp_path / "ckpt"))
    manifest_path = path / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["files"].items():
        manifest["files"][name] = {"sha256": hashlib.sha256((path / name).read_bytes()).hexdigest(), "size": entry["size"]}
    manifest_path.write_text(json.dumps(manifest))
    assert verify(path)["files"] == manifest["files"]
    manifest["files"]["optimizer.pt"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"optimizer.pt is corrupted: its checksum does not match"):
        verify(path)


def test_saving_into_an_existing_checkpoint_is_refused_unless_overwrite(tmp_path: Path) -> None:
    accelerator, model, _ = prepared()
    path = accelerator.save_state(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"already exists.*overwrite=True"):
        accelerator.save_state(path)
    with torch.no_grad():
        model.weight.fill_(3.0)
    accelerator.save_state(path, overwrite=True)
    with torch.no_grad():
        model.weight.fill_(0.0)
    accelerator.load_state(path)
    assert torch.all(model.weight == 3.0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.rename(p.parent / "elsewhere"), r"no checkpoint at .*ckpt: the directory does not exist"),
        (lambda p: (p / "optimizer.pt").unlink(), r"missing file 'optimizer.pt'"),
        (lambda p: (p / MANIFEST).unlink(), r"manifest plait_checkpoint.json is missing"),
        (lambda p: _flip_a_byte(p / "model.safetensors"), r"model.safetensors is corrupted"),
        (lambda p: (p / "optimizer.pt").write_bytes(b"short"), r"optimizer.pt is corrupted"),
    ],
    ids=["missing-directory", "missing-file", "missing-manifest", "corrupted-bytes", "truncated-file"],
)
def test_a_damaged_checkpoint_is_refused_and_nothing_changes(tmp_path: Path, damage, message: str) -> None:
    accelerator, model, optimizer = prepared()
    path = Path(accelerator.save_state(tmp_path / "ckpt"))
    with torch.no_grad():
        model.weight.add_(5.0)
    before = snapshot(model, optimizer)
    rng_before = torch.get_rng_state()
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        accelerator.load_state(path)
    assert_same(snapshot(model, optimizer), before)
    assert torch.equal(torch.get_rng_state(), rng_before)


def _flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def test_a_temporary_directory_is_refused(tmp_path: Path) -> None:
    accelerator, _, _ = prepared()
    temporary = tmp_path / f".ckpt{TMP_MARK}abc"
    temporary.mkdir()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        accelerator.load_state(temporary)


def test_a_checkpoint_for_other_objects_is_refused(tmp_path: Path) -> None:
    accelerator, _, _ = prepared()
    path = accelerator.save_state(tmp_path / "ckpt")
    other = Accelerator()
    other.prepare(nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match="holds 1 optimizers but this accelerator has 0"):
        other.load_state(path)


def test_a_checkpoint_of_another_shape_names_the_key(tmp_path: Path) -> None:
    accelerator, _, _ = prepared()
    path = accelerator.save_state(tmp_path / "ckpt")
    other = Accelerator()
    model = nn.Linear(4, 3)
    weight = model.weight.detach().clone()
    model, _ = other.prepare(model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(CheckpointError, match=r"key 'weight' has shape \(2, 4\) but the model's is \(3, 4\)"):
        other.load_state(path)
    assert torch.equal(model.weight, weight)


def test_a_crash_while_overwriting_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    script = Path(__file__).parent / "scripts" / "crash_during_save.py"
    result = subprocess.run([sys.executable, str(script), str(path)], timeout=120)
    assert result.returncode == 9
    assert list(tmp_path.glob(f".ckpt{TMP_MARK}*")), "the interrupted save left its temporary directory"
    accelerator = Accelerator()
    model = accelerator.prepare(nn.Linear(3, 3))
    restored: dict[str, int] = {}
    accelerator.register_for_checkpointing(DiesWhenSaved(restored))
    accelerator.load_state(path)
    assert restored == {"value": 1}
    assert torch.all(model.weight == 1.0)
    # The next save to that path cleans the leftovers up.
    accelerator.save_state(path, overwrite=True)
    assert not list(tmp_path.glob(f".ckpt{TMP_MARK}*"))


class DiesWhenSaved:
    """The class the script registered (its name is recorded and checked when loading), without its bomb."""

    def __init__(self, into: dict[str, int]) -> None:
        self.into = into

    def state_dict(self) -> dict[str, int]:
        return dict(self.into)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.into.update(state)


def test_automatic_naming_rotates_and_resumes_numbering(tmp_path: Path) -> None:
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2)
    accelerator, model, _ = prepared(project_config=config)
    for value in range(4):
        with torch.no_grad():
            model.weight.fill_(float(value))
        accelerator.save_state()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_2", "checkpoint_3"]

    config2 = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2)
    resumed, model2, _ = prepared(project_config=config2)
    loaded = resumed.load_state()
    assert Path(loaded).name == "checkpoint_3"
    assert torch.all(model2.weight == 3.0)
    resumed.save_state()  # continues the numbering instead of colliding with checkpoint_3
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_3", "checkpoint_4"]


def test_load_state_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    accelerator, _, _ = prepared(project_config=config)
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        accelerator.load_state()


def test_save_state_needs_a_directory() -> None:
    accelerator, _, _ = prepared()
    with pytest.raises(ValueError, match="needs output_dir"):
        accelerator.save_state()


def test_everything_is_restored_scheduler_scaler_dataloader_custom(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    class Counter:
        def __init__(self) -> None:
            self.count = 0

        def state_dict(self) -> dict[str, int]:
            return {"count": self.count}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.count = state["count"]

    def build():
        accelerator = Accelerator(mixed_precision="fp16", cpu=True)
        model = nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        loader = DataLoader(list(range(10)), batch_size=2, shuffle=True)
        counter = Counter()
        accelerator.register_for_checkpointing(counter)
        return accelerator, counter, *accelerator.prepare(model, optimizer, scheduler, loader)

    accelerator, counter, model, optimizer, scheduler, loader = build()
    for _ in range(2):
        for _ in loader:
            pass
    iterator = iter(loader)
    next(iterator)
    accelerator.backward(model(torch.ones(1, 2)).sum())
    optimizer.step()
    scheduler.step()
    counter.count = 7
    accelerator.scaler.update(1024.0)
    path = accelerator.save_state(tmp_path / "ckpt")
    expected_rest = [b.tolist() for b in iterator]

    fresh, counter2, _, _, scheduler2, loader2 = build()
    fresh.load_state(path)
    assert counter2.count == 7
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert fresh.scaler.get_scale() == 1024.0
    assert (loader2.epoch, loader2.position) == (2, 1)
    assert [b.tolist() for b in fresh.skip_first_batches(loader2, 1)] == expected_rest
