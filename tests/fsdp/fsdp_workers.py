"""Worker functions for the fsdp tests, run on real processes by ``plait.testing.run_processes``.

Kept in a plain module (not a test file): each worker re-imports its function from
this file. Each worker batches many checks into one launch (a launch costs seconds)
and returns plain data (numbers, strings, CPU tensors) that the tests compare.

The problem (data, models, batches) is defined here and shared by workers and tests,
so both sides build exactly the same thing. Every batch is the global batch of a
step split between the processes, so 2 processes of ``B`` are 1 process of ``2B``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait.testing import error_of

GLOBAL_BATCH = 16
STEPS = 20
D = 16

# --------------------------------------------------------------------------- #
# the problem
# --------------------------------------------------------------------------- #


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 6, 4, generator=g)
    y = torch.tanh(x.sum(dim=(1, 2), keepdim=False)).unsqueeze(1) + 0.1 * torch.randn(GLOBAL_BATCH, 1, generator=g)
    return x, y


def local_batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = global_batch(step)
    n = GLOBAL_BATCH // world
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


class Attention(nn.Module):
    def __init__(self, d: int = D, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        # No bias: a key bias gets a gradient of pure rounding noise (softmax ignores it), which Adam
        # turns into full-size steps of random sign; no two reductions would agree on it.
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """A pre-norm transformer block."""

    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, layers: int = 3, d: int = D) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        self.register_buffer("scale", torch.tensor(0.5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1)) * self.scale * 2


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                 nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyTransformer() if kind == "transformer" else MLP()


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- #
# training loops
# --------------------------------------------------------------------------- #


def run(acc: Any, model: nn.Module, steps: int = STEPS, clip: float | None = None, start: int = 0,
        optimizer: Any = None, probe: dict[str, Any] | None = None) -> tuple[Any, Any, list[float]]:
    """Train ``steps`` micro-steps with AdamW built before ``prepare``; return model, optimizer, clip norms."""
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        model, optimizer = acc.prepare(model, optimizer)
    norms = []
    for step in range(start, start + steps):
        x, y = local_batch(step, acc.process_index, acc.num_processes)
        with acc.accumulate(model):
            loss = nn.functional.mse_loss(model(x), y)
            if probe is not None and "sharded_after_forward" not in probe:
                # Parameters still DTensor shards between forward and backward were resharded after forward.
                probe["sharded_after_forward"] = [type(p).__name__ == "DTensor" for p in model.parameters()]
            acc.backward(loss)
            if probe is not None and not acc.sync_gradients and "grads_during_no_sync" not in probe:
                probe["grads_during_no_sync"] = [p.grad is None for p in model.parameters()]
            if clip is not None and acc.sync_gradients:
                norms.append(float(acc.clip_grad_norm_(model.parameters(), clip)))
            optimizer.step()
            optimizer.zero_grad()
    return model, optimizer, norms


def consolidated(acc: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on the main process ({} elsewhere), as plain CPU tensors."""
    state = acc.get_state_dict(model)
    return {k: v.detach().cpu().clone() for k, v in state.items()} if acc.is_main_process else {}


# --------------------------------------------------------------------------- #
# test_parity.py: fsdp against ddp, wrapping, options
# --------------------------------------------------------------------------- #

CASES: dict[str, dict[str, Any]] = {
    # name: model kind, fsdp options, accumulation, clip
    "plain": {"kind": "mlp", "options": {}, "accum": 1, "clip": None},
    "accumulate": {"kind": "mlp", "options": {}, "accum": 2, "clip": None},
    "clip": {"kind": "mlp", "options": {}, "accum": 1, "clip": 0.05},
    "transformer": {"kind": "transformer", "options": {"transformer_layer_cls_to_wrap": "Block"}, "accum": 1,
                    "clip": 0.5},
    "transformer_ac_grad_op": {"kind": "transformer",
                               "options": {"transformer_layer_cls_to_wrap": ["Block", "Attention"],
                                           "activation_checkpointing": True, "reshard_after_forward": False},
                               "accum": 2, "clip": None},
    "size_offload": {"kind": "transformer", "options": {"min_num_params": 2000, "offload_params": True},
                     "accum": 1, "clip": None},
    "ram_efficient": {"kind": "transformer",
                      "options": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "Block",
                                  "cpu_ram_efficient_loading": True}, "accum": 1, "clip": None},
}


def parity_worker() -> dict[str, Any]:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from plait import Accelerator

    out: dict[str, Any] = {}
    from plait_fsdp import meta_device_unless_main
    cases = {k: CASES[k] for k in os.environ.get("FSDP_CASES", ",".join(CASES)).split(",")}
    for name, case in cases.items():
        result: dict[str, Any] = {}
        ddp = Accelerator(backend="ddp", gradient_accumulation_steps=case["accum"])
        model, _, result["ddp_norms"] = run(ddp, make(case["kind"]), clip=case["clip"])
        result["ddp"] = params(ddp.unwrap_model(model))

        fsdp = Accelerator(backend="fsdp", gradient_accumulation_steps=case["accum"], backend_options=case["options"])
        with meta_device_unless_main(fsdp):
            original = make(case["kind"])
        result["meta_on_this_rank"] = any(p.is_meta for p in original.parameters())
        before = [id(p) for p in original.parameters()]
        optimizer = torch.optim.AdamW(original.parameters(), lr=1e-2, weight_decay=0.01)
        model, optimizer = fsdp.prepare(original, optimizer)
        result["same_object"] = model is original and fsdp.unwrap_model(model) is original
        result["sharded_groups"] = sorted(n or "<root>" for n, m in model.named_modules() if isinstance(m, FSDPModule))
        result["params_are_dtensors"] = all(isinstance(p, DTensor) for p in model.parameters())
        new = list(model.parameters())
        bound = [p for g in optimizer.param_groups for p in g["params"]]
        result["optimizer_rebound"] = len(bound) == len(new) and all(a is b for a, b in zip(bound, new))
        result["parameters_replaced"] = all(id(p) not in before for p in new)
        result["param_device"] = str(new[0].to_local().device)
        probe: dict[str, Any] = {}
        calls: list[int] = []
        if case["kind"] == "transformer":  # activation checkpointing runs a layer's forward again in backward
            # (a pre-hook: recomputation stops early, after the last tensor backward needs, so a
            # post-hook on the whole MLP would not see it)
            model.blocks[0].mlp[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        model, optimizer, result["fsdp_norms"] = run(fsdp, model, clip=case["clip"], optimizer=optimizer, probe=probe)
        result["grads_during_no_sync"] = probe.get("grads_during_no_sync")
        result["sharded_after_forward"] = probe["sharded_after_forward"]
        result["block_linear_forward_calls"] = len(calls)
        result["fsdp"] = consolidated(fsdp, model)
        result["buffer_scale"] = float(model.scale) if hasattr(model, "scale") else None
        out[name] = result

    # Bad input: a layer class the model does not have (raised before any collective, on every process).
    acc = Accelerator(backend="fsdp", backend_options={"transformer_layer_cls_to_wrap": "GPT2Block"})
    out["missing_class_error"] = error_of(lambda: acc.prepare(make("transformer")))

    # Bad input on one process only (meta weights without cpu_ram_efficient_loading): every process raises.
    acc = Accelerator(backend="fsdp")
    with torch.device("meta") if acc.process_index == 1 else torch.device("cpu"):
        half_meta = make("mlp")
    out["meta_without_option_error"] = error_of(lambda: acc.prepare(half_meta))

    # mixed_precision bf16: MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32); parameters stay fp32.
    acc = Accelerator(backend="fsdp", mixed_precision="bf16", backend_options={"transformer_layer_cls_to_wrap": "Block"})
    seen: list[torch.dtype] = []
    model = make("transformer")
    # The weight a layer computes with: FSDP's all-gathered copy (bf16), not the fp32 shard.
    model.blocks[0].mlp[0].register_forward_pre_hook(lambda m, i: seen.append(m.weight.dtype))
    model, _, _ = run(acc, model, steps=8)
    out["bf16"] = {"stored": str(next(model.parameters()).dtype), "compute": str(seen[0]),
                   "weights": consolidated(acc, model)}
    ddp = Accelerator(backend="ddp")
    model, _, _ = run(ddp, make("transformer"), steps=8)
    out["bf16"]["ddp_fp32"] = params(ddp.unwrap_model(model))

    # mixed_precision fp16: a loss scaler that agrees across shards on when to skip a step.
    fp16: dict[str, Any] = {}
    for backend, options in (("ddp", {}), ("fsdp", {"transformer_layer_cls_to_wrap": "Block"})):
        acc = Accelerator(backend=backend, mixed_precision="fp16", backend_options=options)
        model, _, norms = run(acc, make("transformer"), steps=8, clip=1.0)
        fp16[backend] = consolidated(acc, model) if backend == "fsdp" else params(acc.unwrap_model(model))
        fp16[f"{backend}_scale"] = acc.scaler.get_scale()
        fp16[f"{backend}_scaler"] = type(acc.scaler).__name__
        fp16[f"{backend}_finite_norms"] = sum(n == n and n != float("inf") for n in norms)
    out["fp16"] = fp16
    ddp.end_training()
    return out


# --------------------------------------------------------------------------- #
# test_checkpoint.py: sharded and full state, exact resume, resharding
# --------------------------------------------------------------------------- #


def _fsdp(options: dict[str, Any] | None = None) -> Any:
    from plait import Accelerator

    return Accelerator(backend="fsdp", backend_options={"transformer_layer_cls_to_wrap": "Block", **(options or {})})


def checkpoint_worker(directory: str) -> dict[str, Any]:
    import json

    root = Path(directory)
    out: dict[str, Any] = {}

    # The uninterrupted run: 20 steps.
    acc = _fsdp()
    model, _, _ = run(acc, make("transformer"), steps=STEPS)
    out["uninterrupted"] = consolidated(acc, model)

    # Interrupted at 10 (sharded state), then resumed in fresh objects for the other 10.
    for kind, options in (("sharded", {}), ("full", {"state_dict_type": "FULL_STATE_DICT"})):
        acc = _fsdp(options)
        model, optimizer, _ = run(acc, make("transformer"), steps=10)
        saved = acc.save_state(str(root / kind))
        out[f"{kind}_at_10"] = consolidated(acc, model)
        acc = _fsdp(options)
        fresh = make("transformer", seed=1)
        optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.01)
        model, optimizer = acc.prepare(fresh, optimizer)
        acc.load_state(saved)
        out[f"{kind}_loaded"] = consolidated(acc, model)
        model, _, _ = run(acc, model, steps=10, start=10, optimizer=optimizer)
        out[f"{kind}_resumed"] = consolidated(acc, model)
        out[f"{kind}_files"] = sorted(json.loads((root / kind / "plait_checkpoint.json").read_text())["files"])

    # Exports: save_model writes consolidated, unwrapped safetensors.
    acc.save_model(model, str(root / "export"))
    out["export_expected"] = consolidated(acc, model)

    # Bad input: a model whose shapes differ from the checkpoint's names the first mismatching key.
    acc = _fsdp()
    wider = TinyTransformer(d=32)
    acc.prepare(wider, torch.optim.AdamW(wider.parameters(), lr=1e-2))
    out["shape_error"] = error_of(lambda: acc.load_state(str(root / "sharded")))
    acc.end_training()
    return out


def load_in_one_process(directory: str, steps: int) -> dict[str, Any]:
    """Load a checkpoint saved by 2 processes into this one process and continue ``steps`` steps."""
    acc = _fsdp()
    fresh = make("transformer", seed=1)
    optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.01)
    model, optimizer = acc.prepare(fresh, optimizer)
    acc.load_state(directory)
    loaded = consolidated(acc, model)
    model, _, _ = run(acc, model, steps=steps, start=10, optimizer=optimizer)
    return {"loaded": loaded, "resumed": consolidated(acc, model), "num_processes": acc.num_processes}
