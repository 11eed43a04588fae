"""Worker of ``zero.py``, run on 2 processes by torchrun (gloo): one contender's ZeRO training steps and memory.

    python -m torch.distributed.run --standalone --nproc-per-node=2 _zero_worker.py KIND OPTIONS STEPS WARMUP OUT

The same model (twelve Linear(2048, 2048), ReLU between, ~50M fp32 parameters),
AdamW(lr=1e-4), batches of 8 per process, MSE loss, under:

- ``raw``: ``deepspeed.initialize`` by hand, with the DeepSpeed config plait's zero
  backend builds for the same ``zero:`` OPTIONS (JSON: stage, offload devices), a
  DistributedSampler (no shuffling) and ``engine.backward`` / ``engine.step``;
- ``plait``: ``Accelerator(backend="zero", backend_options=OPTIONS)`` (with
  ``zero3_init``, the model built inside ``plait_zero.zero3_init(accelerator)``);
- ``ddp``: ``Accelerator(backend="ddp")``, the reference.

Each process counts what it holds: model parameters (ZeRO-3: its partition), gradients
(after the first backward: the parameters' ``.grad`` and ZeRO's gradient partitions
and buffers, each storage once), fp32 master weights (ZeRO's copy of its partition)
and optimizer state, and its peak RSS. Rank 0 writes every rank's report, with the
DeepSpeed config the engine was given.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from _torchrun_report import report_and_finish

WIDTH, LAYERS, BATCH = 2048, 12, 8


def ds_config(options: dict[str, Any], world: int) -> dict[str, Any]:
    """What plait_zero builds (``ds_config.build_config``) for these options, a batch of 8, no mixed precision."""
    zero: dict[str, Any] = {"stage": options.get("stage", 2)}
    for kind in ("optimizer", "param"):
        device = options.get(f"offload_{kind}_device")
        if device not in (None, "none"):
            zero[f"offload_{kind}"] = {"device": device, "pin_memory": False}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1, "train_batch_size": BATCH * world,
        "fp16": {"enabled": False}, "bf16": {"enabled": False}, "gradient_clipping": 0.0,
        "zero_optimization": zero, "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1,
    }
    if "offload_optimizer" in zero:
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def _layers() -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def nbytes(tensors: Iterable[Any]) -> tuple[int, str]:
    """Bytes of distinct storages among ``tensors`` (non-tensors and empty ones skipped), and their devices."""
    seen: set[int] = set()
    total, where = 0, set()
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
        where.add(t.device.type)
    return total, ",".join(sorted(where)) or "-"


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    return [value]


def _state(optimizer: Any) -> list[Any]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor) and v.dim()]


def gradients(module: torch.nn.Module, engine: Any) -> tuple[int, str]:
    found: list[Any] = [p.grad for p in module.parameters()]
    zopt = getattr(engine, "optimizer", None) if engine is not None else None
    for name in ("averaged_gradients", "grad_partitions_flat_buffer", "grads_in_partition"):
        found += _flatten(getattr(zopt, name, None))
    return nbytes(found)


def held(module: torch.nn.Module, engine: Any, optimizer: Any) -> dict[str, Any]:
    if engine is None:  # ddp
        inner = getattr(optimizer, "optimizer", optimizer)
        params, master, state = nbytes(module.parameters()), (0, "-"), nbytes(_state(inner))
    else:
        zopt = engine.optimizer
        if engine.zero_optimization_stage() == 3:
            params = nbytes(getattr(p, "ds_tensor", p) for p in module.parameters())
            master = nbytes(zopt.fp32_partitioned_groups_flat)
        else:
            params = nbytes(module.parameters())
            master = nbytes(zopt.single_partition_of_fp32_groups)
        state = nbytes(_state(zopt.optimizer))
    return {"params_bytes": params[0], "params_on": params[1], "master_bytes": master[0], "master_on": master[1],
            "optimizer_state_bytes": state[0], "optimizer_state_on": state[1]}


def main(kind: str, options: dict[str, Any], steps: int, warmup: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = int(os.environ["WORLD_SIZE"])
    n = BATCH * world * (steps + warmup)
    data = TensorDataset(torch.randn(n, WIDTH), torch.randn(n, WIDTH))
    accelerator: Any = None
    config: dict[str, Any] | None = None
    build: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if kind == "raw":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        dist.init_process_group("gloo")
        deepspeed.init_distributed(dist_backend="gloo", dist_init_required=False)
        config = ds_config(options, world)
        if options.get("zero3_init"):
            build = deepspeed.zero.Init(config_dict_or_path=config)
    else:
        from plait import Accelerator

        accelerator = Accelerator(backend="zero" if kind == "plait" else "ddp", backend_options=options or None)
        if options.get("zero3_init"):
            import plait_zero

            build = plait_zero.zero3_init(accelerator)  # each layer is partitioned as soon as it is built
    with build:
        model: Any = _layers()
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    optimizer: Any = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine: Any = None
    if kind == "raw":
        loader: Any = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, shuffle=False))
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                                       dist_init_required=False)
        model, module = engine, engine.module
    else:
        loader = DataLoader(data, batch_size=BATCH)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        module = getattr(model, "module", model)
        if kind == "plait":
            engine, config = model, dict(model.config)
    times: list[float] = []
    grads: tuple[int, str] = (0, "-")
    for i, (x, y) in enumerate(loader):
        dist.barrier()
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if accelerator is None:
            engine.backward(loss)
            if i == 0:
                grads = gradients(module, engine)
            engine.step()
        else:
            accelerator.backward(loss)
            if i == 0:
                grads = gradients(module, engine)
            optimizer.step()
            optimizer.zero_grad()
        dist.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    report = {"rank": dist.get_rank(), "numel": numel, "step_s": times, "grads_bytes": grads[0], "grads_on": grads[1],
              **held(module, engine, optimizer if engine is None else None),
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ds_config": config}
    report_and_finish(report, out, accelerator)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
