"""Worker of ``fsdp.py``, run on 2 processes by torchrun (gloo): one contender's training steps and memory.

    python -m torch.distributed.run --standalone --nproc-per-node=2 _fsdp_worker.py CONTENDER STEPS WARMUP OUT

The same ~50M-parameter transformer-style model (4 pre-norm blocks, width 1024),
AdamW(lr=1e-4), the same data (a seeded generator per rank), under:

- ``raw`` (and ``raw_control``, the same again): FSDP2 by hand, sharded as plait's
  fsdp backend shards it: ``fully_shard`` on each ``Block``, last block first, with
  ``reshard_after_forward=True``, then on the root with ``reshard_after_forward=False``
  (its parameters are gathered first in backward anyway), a 1-d CPU device mesh over
  the processes, default ``MixedPrecisionPolicy`` and ``OffloadPolicy``; the optimizer
  built on the sharded parameters;
- ``plait``: ``Accelerator(backend="fsdp", backend_options={"transformer_layer_cls_to_wrap": "Block"})``,
  the model and optimizer built first and prepared;
- ``ddp``: ``Accelerator(backend="ddp")``, the reference of the memory target.

After the first optimizer step each process counts the bytes it holds for training:
parameters, gradients and optimizer state (each storage once; for DTensors the local
shard). Rank 0 writes every rank's ``{"memory", "step_s", "max_rss_bytes", ...}``.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from _torchrun_report import report_and_finish

D, LAYERS, T, B = 1024, 4, 16, 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 16, d // 16).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # type: ignore[no-any-return]


def _local(tensor: Any) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # type: ignore[no-any-return]


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state this process holds (each storage once)."""
    seen: set[tuple[int, int]] = set()
    total = {"parameters": 0, "gradients": 0, "optimizer": 0}

    def add(kind: str, tensor: Any) -> None:
        storage = _local(tensor).untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total[kind] += storage.nbytes()

    for p in model.parameters():
        add("parameters", p)
        if p.grad is not None:
            add("gradients", p.grad)
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                add("optimizer", value)
    return total


def _raw_fsdp2(model: Model) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(), "offload_policy": OffloadPolicy()}
    for block in reversed(list(model.blocks)):
        fully_shard(block, reshard_after_forward=True, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def main(contender: str, steps: int, warmup: int, out: str) -> None:
    torch.set_num_threads(1)
    accelerator: Any = None
    if contender in ("raw", "raw_control"):
        torch.manual_seed(0)
        built = Model()
        parameters_total = sum(p.numel() for p in built.parameters())
        model, optimizer = _raw_fsdp2(built)
        rank = dist.get_rank()
    elif contender in ("plait", "ddp"):
        from plait import Accelerator

        options = {"transformer_layer_cls_to_wrap": "Block"} if contender == "plait" else {}
        accelerator = Accelerator(backend="fsdp" if contender == "plait" else "ddp", backend_options=options or None)
        torch.manual_seed(0)
        built = Model()
        parameters_total = sum(p.numel() for p in built.parameters())
        model, optimizer = accelerator.prepare(built, torch.optim.AdamW(built.parameters(), lr=1e-4))
        rank = accelerator.process_index
    else:
        raise ValueError(f"unknown contender {contender!r}")
    del built
    g = torch.Generator().manual_seed(rank)
    times: list[float] = []
    memory: dict[str, int] | None = None
    for i in range(warmup + steps):
        x = torch.randn(B, T, D, generator=g)
        dist.barrier()
        start = time.perf_counter()
        loss = model(x).pow(2).mean()
        if accelerator is None:
            loss.backward()
        else:
            accelerator.backward(loss)
        optimizer.step()
        dist.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if memory is None:
            memory = state_bytes(model, optimizer)
        optimizer.zero_grad()
    report = {"rank": rank, "parameters_total": parameters_total, "memory": memory, "step_s": times,
              "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    report_and_finish(report, out, accelerator)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
