"""Two-process CPU benchmark of the fsdp backend against ddp: per-process training-state memory and step time.

    python benchmarks/fsdp.py            # about 5 minutes on 2 busy cores
    python benchmarks/fsdp.py --quick    # a short smoke run

The same ~50M-parameter transformer-style model (4 pre-norm blocks, width 1024)
trains with AdamW through plait's ``Accelerator``, with ``backend="ddp"``, with
``backend="fsdp"`` (each block its own ``fully_shard`` group), and with fsdp and
``reshard_after_forward=false`` (SHARD_GRAD_OP, for step time), each
launched by torchrun (``python -m torch.distributed.run --standalone
--nproc-per-node 2``) over gloo. Launches rotate between the three and the median
is reported.

Memory is the bytes of the tensors a process holds for training after an optimizer
step: parameters, gradients and optimizer state (AdamW's two moments and step),
counting each storage once and, for fsdp, the local shard of each DTensor. DDP's
gradient buckets (one more gradient-sized buffer) are not counted, which favours
ddp. The peak resident set size of each process is reported beside it.

Writes ``benchmarks/results/fsdp.json`` and ``benchmarks/results/fsdp.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import torchrun

RESULTS = Path(__file__).resolve().parent / "results"

WORKER = r'''
import json, resource, sys, time
import torch
from torch import nn

backend, steps, warmup, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
D, LAYERS, T, B = 1024, 4, 16, 4


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 16, d // 16).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.head = nn.Linear(D, D)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


from plait import Accelerator

options = {}
if backend.startswith("fsdp"):
    options = {"transformer_layer_cls_to_wrap": "Block", "reshard_after_forward": backend == "fsdp"}
accelerator = Accelerator(backend=backend.split("-")[0], backend_options=options)
torch.manual_seed(0)
model = Model()
n_params = sum(p.numel() for p in model.parameters())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
model, optimizer = accelerator.prepare(model, optimizer)


def local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes():
    seen, total = set(), {"parameters": 0, "gradients": 0, "optimizer": 0}

    def add(kind, tensor):
        tensor = local(tensor)
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total[kind] += tensor.untyped_storage().nbytes()

    for p in model.parameters():
        add("parameters", p)
        if p.grad is not None:
            add("gradients", p.grad)
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                add("optimizer", value)
    return total


g = torch.Generator().manual_seed(accelerator.process_index)
times, memory = [], None
for i in range(warmup + steps):
    x = torch.randn(B, T, D, generator=g)
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    loss = model(x).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    accelerator.wait_for_everyone()
    if i >= warmup:
        times.append(time.perf_counter() - start)
    if memory is None:
        memory = state_bytes()
    optimizer.zero_grad()
result = {"parameters_total": n_params, "memory": memory, "step_s": sorted(times)[len(times) // 2],
          "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
every = accelerator.gather_object(result)
if accelerator.is_main_process:
    with open(out, "w") as f:
        json.dump(every, f)
accelerator.end_training()
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, warmup, launches = (3, 1, 1) if args.quick else (8, 2, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "ACCELERATE_"))}
    env["OMP_NUM_THREADS"] = "1"
    # fsdp-grad-op: reshard_after_forward=false (SHARD_GRAD_OP): one all-gather per step instead of two.
    runs: dict[str, list[list[dict]]] = {"ddp": [], "fsdp": [], "fsdp-grad-op": []}
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CONFIG_HOME"] = tmp  # no user config file changes what is measured
        worker = Path(tmp) / "train.py"
        worker.write_text(WORKER)
        for launch in range(launches):
            names = list(runs)
            for backend in names[launch % 3:] + names[: launch % 3]:
                out = Path(tmp) / f"{backend}-{launch}.json"
                torchrun(worker, [backend, str(steps), str(warmup), str(out)], env)
                runs[backend].append(json.loads(out.read_text()))
                ranks = runs[backend][-1]
                print(f"{backend:12s} launch {launch}: {max(r['step_s'] for r in ranks):.3f} s/step, "
                      f"{max(sum(r['memory'].values()) for r in ranks) / 2**20:.1f} MiB state per process",
                      flush=True)

    def per_process(backend: str, kind: str | None = None) -> float:
        """The largest process's bytes (of one kind, or all), from the first launch (it is deterministic)."""
        ranks = runs[backend][0]
        return float(max(r["memory"][kind] if kind else sum(r["memory"].values()) for r in ranks))

    step = {b: statistics.median(max(r["step_s"] for r in ranks) for ranks in runs[b]) for b in runs}
    rss = {b: statistics.median(max(r["max_rss_bytes"] for r in ranks) for ranks in runs[b]) for b in runs}
    ratio = per_process("fsdp") / per_process("ddp")
    params = runs["ddp"][0][0]["parameters_total"]
    rows = [
        {"measurement": f"parameters + gradients + AdamW state per process ({params / 1e6:.1f}M parameters)",
         "unit": "MiB", "ddp": per_process("ddp") / 2**20, "fsdp": per_process("fsdp") / 2**20, "ratio": ratio,
         "target": "<= 0.55x ddp", "status": "PASS" if ratio <= 0.55 else "FAIL"},
    ]
    for kind in ("parameters", "gradients", "optimizer"):
        rows.append({"measurement": f"  of which {kind}", "unit": "MiB", "ddp": per_process("ddp", kind) / 2**20,
                     "fsdp": per_process("fsdp", kind) / 2**20,
                     "ratio": per_process("fsdp", kind) / per_process("ddp", kind), "target": "-", "status": "-"})
    rows.append({"measurement": "peak resident memory per process (whole process, incl. torch)", "unit": "MiB",
                 "ddp": rss["ddp"] / 2**20, "fsdp": rss["fsdp"] / 2**20, "ratio": rss["fsdp"] / rss["ddp"],
                 "target": "reported", "status": "-"})
    rows.append({"measurement": "step time (forward, backward, AdamW step; batch 4x16 tokens per process)",
                 "unit": "s", "ddp": step["ddp"], "fsdp": step["fsdp"], "ratio": step["fsdp"] / step["ddp"],
                 "target": "reported", "status": "-"})
    rows.append({"measurement": "step time, fsdp with reshard_after_forward=false (SHARD_GRAD_OP)",
                 "unit": "s", "ddp": step["ddp"], "fsdp": step["fsdp-grad-op"],
                 "ratio": step["fsdp-grad-op"] / step["ddp"], "target": "reported", "status": "-"})
    results = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cores": os.cpu_count(),
               "launches": launches, "steps": steps, "warmup": warmup, "runs": runs, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fsdp.json").write_text(json.dumps(results, indent=1))
    lines = [
        "# plait fsdp benchmark (2 CPU processes, gloo)", "",
        f"Generated {results['generated']} by `python benchmarks/fsdp.py`{' --quick' if args.quick else ''}; "
        f"{launches} launches per contender, rotating, {steps} timed steps after {warmup} warm-up, median shown. "
        f"{os.cpu_count()} cores shared with other work: step times are noisy.", "",
        "| measurement | unit | ddp | fsdp | fsdp / ddp | target | status |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        digits = 3 if r["unit"] == "s" else 1
        status = f"**{r['status']}**" if r["status"] in ("PASS", "FAIL") else r["status"]
        lines.append(f"| {r['measurement']} | {r['unit']} | {r['ddp']:.{digits}f} | {r['fsdp']:.{digits}f} | "
                     f"{r['ratio']:.3f}x | {r['target']} | {status} |")
    lines += ["", "Memory counts each storage once (for fsdp the local shard); DDP's gradient buckets, an extra "
              "gradient-sized buffer per process, are not counted, which favours ddp."]
    text = "\n".join(lines) + "\n"
    (RESULTS / "fsdp.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
