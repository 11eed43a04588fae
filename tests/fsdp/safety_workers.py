"""Worker of tests/fsdp/test_checkpoint_safety.py, run on real processes by ``plait.testing.run_processes``.

One launch saves a sharded and a full checkpoint of AdamW training, makes crafted copies of them
(rank 0, between barriers), and tries to load each into prepared models and optimizers that already
trained a step; it returns, per attempt, the error and whether every tensor in memory stayed as it was.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from fsdp_workers import consolidated, make, run

from plait.checkpoint import MANIFEST, checksum_file
from plait.testing import error_of, same, snapshot

MODEL_METADATA = "pytorch_model_fsdp_0/.metadata"
OPTIMIZER_METADATA = "optimizer_0/.metadata"


class Payload:
    """Unpickled by plain ``pickle``, this creates the file ``marker``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _accelerator(full: bool = False) -> Any:
    from plait import Accelerator

    return Accelerator(backend="fsdp", backend_options={"state_dict_type": "FULL_STATE_DICT"} if full else None)


def _snapshot(model: Any, optimizer: Any) -> Any:
    """This process's shards of the model and the optimizer's whole state."""
    return snapshot(model.state_dict()), snapshot(optimizer.optimizer.state_dict())


def _attempt(acc: Any, model: Any, optimizer: Any, directory: Path) -> dict[str, Any]:
    before = _snapshot(model, optimizer)
    error = error_of(lambda: acc.load_state(str(directory)))
    return {"error": error, "unchanged": same(before, _snapshot(model, optimizer))}


def _relist(directory: Path, name: str) -> None:
    """Enter ``name``'s new size and checksum in the manifest, as a forger would: only the content is wrong."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    entry = manifest["files"].setdefault(name, {"algorithm": "xxh3_128"})
    entry.update(size=(directory / name).stat().st_size, digest=checksum_file(directory / name, entry["algorithm"]))
    path.write_text(json.dumps(manifest))


def _craft(root: Path, marker: str) -> None:
    """Crafted copies of the sharded checkpoint, each listed in its manifest with matching checksums."""
    def copy(name: str, listed: str = MODEL_METADATA) -> tuple[Path, Any]:
        target = root / name
        shutil.copytree(root / "sharded", target)
        with open(target / listed, "rb") as f:  # our own file: plain pickle is fine here
            return target, pickle.load(f)

    for name, listed in (("payload_model", MODEL_METADATA), ("payload_optimizer", OPTIMIZER_METADATA)):
        target, metadata = copy(name, listed)
        metadata.planner_data = {"x": Payload(marker)}  # DCP's own reader would run this
        with open(target / listed, "wb") as f:
            pickle.dump(metadata, f)
        _relist(target, listed)

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    target, metadata = copy("bytes_entry")
    metadata.state_dict_metadata["net.1.weight"] = BytesStorageMetadata()  # DCP would torch.load it unrestricted
    with open(target / MODEL_METADATA, "wb") as f:
        pickle.dump(metadata, f)
    _relist(target, MODEL_METADATA)

    target, _ = copy("unrecorded_class")  # as saved before plait recorded optimizer classes
    manifest = json.loads((target / MANIFEST).read_text())
    del manifest["metadata"]["optimizer_classes"]
    (target / MANIFEST).write_text(json.dumps(manifest))

    target, metadata = copy("unlisted_shard")
    shutil.copy(target / "pytorch_model_fsdp_0" / "__1_0.distcp", target / "pytorch_model_fsdp_0" / "__7_0.distcp")
    for info in metadata.storage_data.values():
        if info.relative_path == "__1_0.distcp":
            info.relative_path = "__7_0.distcp"  # a file beside the listed ones, not in the manifest
    with open(target / MODEL_METADATA, "wb") as f:
        pickle.dump(metadata, f)
    _relist(target, MODEL_METADATA)


def safety_worker(directory: str, marker: str) -> dict[str, Any]:
    root = Path(directory)
    out: dict[str, Any] = {}
    for kind in ("sharded", "full"):
        acc = _accelerator(full=kind == "full")
        model, _, _ = run(acc, make("mlp"), steps=3)
        acc.save_state(str(root / kind))
        out[f"{kind}_saved"] = consolidated(acc, model)
    if acc.is_main_process:
        _craft(root, marker)
    acc.wait_for_everyone()

    # A fresh model and AdamW that trained a step (so that the optimizer has state to lose).
    acc = _accelerator()
    model, optimizer, _ = run(acc, make("mlp", seed=1), steps=1)
    for name in ("payload_model", "payload_optimizer", "bytes_entry", "unlisted_shard"):
        out[name] = _attempt(acc, model, optimizer, root / name)
    out["good"] = _attempt(acc, model, optimizer, root / "sharded")  # the harness can see a change
    out["good_loaded"] = consolidated(acc, model)

    # AdamW's checkpoints into SGD with momentum, sharded and full; AdamW's into two parameter groups.
    for kind in ("sharded", "full"):
        acc = _accelerator()
        sgd_model = make("mlp", seed=2)
        sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-2, momentum=0.9)
        sgd_model, sgd = acc.prepare(sgd_model, sgd)
        run(acc, sgd_model, steps=1, optimizer=sgd)
        out[f"sgd_{kind}"] = _attempt(acc, sgd_model, sgd, root / kind)
    out["sgd_unrecorded_class"] = _attempt(acc, sgd_model, sgd, root / "unrecorded_class")
    acc = _accelerator()
    two_model = make("mlp", seed=3)
    groups = [{"params": list(two_model.net[1].parameters())},
              {"params": [p for n, p in two_model.named_parameters() if not n.startswith("net.1.")], "lr": 1e-3}]
    two_model, two = acc.prepare(two_model, torch.optim.AdamW(groups, lr=1e-2))
    run(acc, two_model, steps=1, optimizer=two)
    out["two_groups"] = _attempt(acc, two_model, two, root / "sharded")
    acc.end_training()
    return out
