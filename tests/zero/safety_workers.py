"""Worker of tests/zero/test_checkpoint_safety.py, run on real processes by ``plait.testing.run_processes``.

One launch trains AdamW under ZeRO stage 2 and saves; rank 0 makes crafted copies of the checkpoint (between
barriers), whose manifests list the crafted files with matching checksums; each copy is then loaded into
engines that already trained a step. Each attempt returns its error and whether every tensor of the engine
(module, ZeRO partitions, optimizer state) stayed as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from zero_workers import make_data, make_model

from plait.checkpoint import MANIFEST, checksum_file
from plait.testing import error_of, same, snapshot

STATE = "zero/state"
PARTITION_1 = f"{STATE}/zero_pp_rank_1_mp_rank_00_optim_states.pt"
MODULE_STATES = f"{STATE}/mp_rank_00_model_states.pt"
MODULE_STATES_1_STAGE3 = f"{STATE}/zero_pp_rank_1_mp_rank_00_model_states.pt"
INFO = "zero/plait_zero.json"


class Payload:
    """Unpickled without restriction (DeepSpeed's own loader), this creates the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _relist(directory: Path, name: str) -> None:
    """Enter ``name``'s new size and checksum in the manifest, as a forger would: only the content is wrong."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    entry = manifest["files"][name]
    entry.update(size=(directory / name).stat().st_size, digest=checksum_file(directory / name, entry["algorithm"]))
    path.write_text(json.dumps(manifest))


def _craft(root: Path, marker: str) -> None:
    for case, name in (("payload_partition", PARTITION_1), ("payload_module", MODULE_STATES)):
        target = root / case
        shutil.copytree(root / "adamw", target)
        torch.save({"optimizer_state_dict": Payload(marker), "module": {}}, target / name)
        _relist(target, name)
    target = root / "unrecorded_class"  # as saved before plait recorded the optimizer's class
    shutil.copytree(root / "adamw", target)
    info = json.loads((target / INFO).read_text())
    del info["optimizer_class"]
    (target / INFO).write_text(json.dumps(info))
    _relist(target, INFO)


def _train(acc: Any, optimizer_class: Any, steps: int, seed: int, **kwargs: Any) -> tuple[Any, Any]:
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(seed * 0.01)
    model, optimizer = acc.prepare(model, optimizer_class(model.parameters(), lr=1e-2, **kwargs))
    x, y = make_data(8, seed=seed)
    n = len(x) // acc.num_processes
    mine = slice(acc.process_index * n, (acc.process_index + 1) * n)
    for _ in range(steps):
        acc.backward(nn.functional.mse_loss(model(x[mine]), y[mine]))
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _snapshot(engine: Any) -> Any:
    """The module's weights (ZeRO-3: this process's partitions), the ZeRO optimizer's whole state (its fp32
    partition, the inner optimizer's state)."""
    partitions = [p.ds_tensor for p in engine.module.parameters() if hasattr(p, "ds_tensor")]
    return snapshot(engine.module.state_dict()), snapshot(partitions), snapshot(engine.optimizer.state_dict())


def _attempt(acc: Any, engine: Any, directory: Path) -> dict[str, Any]:
    before = _snapshot(engine)
    error = error_of(lambda: acc.load_state(str(directory)))
    return {"error": error, "unchanged": same(before, _snapshot(engine))}


def safety_worker(directory: str, marker: str) -> dict[str, Any]:
    from plait import Accelerator

    root = Path(directory)
    out: dict[str, Any] = {}
    options = {"stage": 2}
    acc = Accelerator(backend="zero", backend_options=options)
    model, _ = _train(acc, torch.optim.AdamW, steps=2, seed=0)
    acc.save_state(str(root / "adamw"))
    out["saved"] = snapshot(model.module.state_dict())
    if acc.is_main_process:
        _craft(root, marker)
    acc.wait_for_everyone()

    acc = Accelerator(backend="zero", backend_options=options)
    model, _ = _train(acc, torch.optim.AdamW, steps=1, seed=1)
    for case in ("payload_partition", "payload_module"):
        out[case] = _attempt(acc, model, root / case)
    out["good"] = _attempt(acc, model, root / "adamw")  # the harness sees a load change memory
    out["good_loaded"] = snapshot(model.module.state_dict())

    acc = Accelerator(backend="zero", backend_options=options)
    model, _ = _train(acc, torch.optim.SGD, steps=1, seed=2, momentum=0.9)
    for case in ("adamw", "unrecorded_class"):
        out[f"sgd_{case}"] = _attempt(acc, model, root / case)

    # ZeRO-3: each process's module states are its own file too.
    acc = Accelerator(backend="zero", backend_options={"stage": 3})
    _train(acc, torch.optim.AdamW, steps=2, seed=0)
    acc.save_state(str(root / "adamw3"))
    if acc.is_main_process:
        target = root / "payload_module3"
        shutil.copytree(root / "adamw3", target)
        torch.save({"module": Payload(marker)}, target / MODULE_STATES_1_STAGE3)
        _relist(target, MODULE_STATES_1_STAGE3)
    acc.wait_for_everyone()
    acc = Accelerator(backend="zero", backend_options={"stage": 3})
    model, _ = _train(acc, torch.optim.SGD, steps=1, seed=2, momentum=0.9)
    for case in ("adamw3", "payload_module3"):
        out[f"sgd_{case}"] = _attempt(acc, model, root / case)
    out["stage3_partition_numel"] = sum(p.ds_tensor.numel() for p in model.module.parameters())
    acc.end_training()
    return out
