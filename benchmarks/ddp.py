"""Two-process CPU benchmarks: training throughput and gather latency, plait against raw DDP and HF Accelerate.

    python benchmarks/ddp.py            # about 4 minutes on 2 cores
    python benchmarks/ddp.py --quick    # a short smoke run

Every contender is the same training loop started the same way, by torchrun
(``python -m torch.distributed.run --standalone --nproc-per-node 2``) over gloo:
raw PyTorch (DistributedDataParallel + DistributedSampler), plait
(``Accelerator()``), and HF Accelerate (``Accelerator(cpu=True)`` with
``ACCELERATE_USE_CPU=1``: ``accelerate launch --cpu --num_processes 2`` starts only
one process on a CPU machine). Launches alternate between contenders and the
median is reported. Gather latency compares ``accelerator.gather`` with
``torch.distributed.all_gather_into_tensor`` in the same processes, interleaved.

Writes ``benchmarks/results/ddp.json`` and ``benchmarks/results/ddp.md``.
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
import json, os, sys, time
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

contender, steps, warmup, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
torch.manual_seed(0)
data = TensorDataset(torch.randn(64 * (steps + warmup) * 2, 256), torch.randn(64 * (steps + warmup) * 2, 1))
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                            torch.nn.Linear(512, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
if contender == "raw":
    dist.init_process_group("gloo")
    sampler = torch.utils.data.DistributedSampler(data, shuffle=True)
    loader = DataLoader(data, batch_size=64, sampler=sampler)
    model = torch.nn.parallel.DistributedDataParallel(model)
    backward = lambda loss: loss.backward()
    barrier, rank = dist.barrier, dist.get_rank()
else:
    if contender == "plait":
        from plait import Accelerator
        accelerator = Accelerator()
    else:
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=True)
    loader = DataLoader(data, batch_size=64, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    backward = accelerator.backward
    barrier, rank = accelerator.wait_for_everyone, accelerator.process_index
times = []
for i, (x, y) in enumerate(loader):
    if i == warmup:
        barrier()
        start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(x), y)
    backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    if i + 1 == warmup + steps:
        break
barrier()
elapsed = time.perf_counter() - start
if rank == 0:
    with open(out, "w") as f:
        json.dump({"steps_per_s": steps / elapsed}, f)
'''

GATHER = r'''
import json, sys, time
import torch
import torch.distributed as dist
from plait import Accelerator

repeats, out = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
accelerator = Accelerator()
results = {}
for numel in (16, 262144):
    tensor = torch.full((numel,), float(accelerator.process_index))
    out_raw = torch.empty(numel * accelerator.num_processes)
    raw_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    samples = {"raw": [], "plait": []}
    for _ in range(10):
        raw_all_gather(out_raw, tensor)
        accelerator.gather(tensor)
    for block in range(repeats):
        for name in (("raw", "plait") if block % 2 == 0 else ("plait", "raw")):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(50):
                if name == "raw":
                    # Allocating the result each call, as gather must (it returns a new tensor).
                    out_raw = torch.empty(numel * accelerator.num_processes)
                    raw_all_gather(out_raw, tensor)
                else:
                    gathered = accelerator.gather(tensor)
            samples[name].append((time.perf_counter() - start) / 50 * 1e6)
    assert torch.equal(gathered, out_raw)
    results[numel] = {name: sorted(v)[len(v) // 2] for name, v in samples.items()}
if accelerator.is_main_process:
    with open(out, "w") as f:
        json.dump(results, f)
accelerator.end_training()
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, warmup, launches, repeats = (30, 5, 1, 5) if args.quick else (150, 10, 5, 21)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "ACCELERATE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # installed packages have bytecode; so should plait
    env["OMP_NUM_THREADS"] = "1"
    throughput: dict[str, list[float]] = {"raw": [], "plait": [], "accelerate": []}
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "train.py"
        worker.write_text(WORKER)
        gather = Path(tmp) / "gather.py"
        gather.write_text(GATHER)
        for launch in range(launches):
            order = ["raw", "plait", "accelerate"]
            order = order[launch % 3:] + order[: launch % 3]
            for contender in order:
                out = Path(tmp) / f"{contender}-{launch}.json"
                extra = {"ACCELERATE_USE_CPU": "1"} if contender == "accelerate" else {}
                torchrun(worker, [contender, str(steps), str(warmup), str(out)], {**env, **extra})
                throughput[contender].append(json.loads(out.read_text())["steps_per_s"])
                print(f"{contender:10s} launch {launch}: {throughput[contender][-1]:.1f} steps/s", flush=True)
        out = Path(tmp) / "gather.json"
        torchrun(gather, [str(repeats), str(out)], env)
        gathered = json.loads(out.read_text())

    median = {name: statistics.median(values) for name, values in throughput.items()}
    rows = [
        {"measurement": "2-process training throughput (MLP 256-512-512-1, batch 64 per process, SGD)",
         "unit": "steps/s", "raw": median["raw"], "plait": median["plait"], "accelerate": median["accelerate"],
         "plait_ratio": median["plait"] / median["raw"], "accelerate_ratio": median["accelerate"] / median["raw"],
         "target": ">= 0.97x raw", "status": "PASS" if median["plait"] / median["raw"] >= 0.97 else "FAIL"},
    ]
    for numel, values in gathered.items():
        overhead = values["plait"] / values["raw"] - 1
        rows.append({
            "measurement": f"gather latency, {int(numel)} float32 per process", "unit": "us",
            "raw": values["raw"], "plait": values["plait"], "accelerate": None,
            "plait_ratio": values["plait"] / values["raw"], "accelerate_ratio": None,
            "target": "<= 10% over raw", "status": "PASS" if overhead <= 0.10 else "FAIL",
        })
    results = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cores": os.cpu_count(),
               "launches": launches, "samples": throughput, "gather": gathered, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp.json").write_text(json.dumps(results, indent=1))
    lines = [
        "# plait ddp benchmarks (2 CPU processes, gloo)", "",
        f"Generated {results['generated']} by `python benchmarks/ddp.py`{' --quick' if args.quick else ''}; "
        f"{launches} launches per contender, alternating, median shown.", "",
        "| measurement | unit | raw | plait | accelerate | plait / raw | accelerate / raw | target | plait |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        acc = "-" if r["accelerate"] is None else f"{r['accelerate']:.1f}"
        acc_ratio = "-" if r["accelerate_ratio"] is None else f"{r['accelerate_ratio']:.3f}x"
        lines.append(f"| {r['measurement']} | {r['unit']} | {r['raw']:.1f} | {r['plait']:.1f} | {acc} | "
                     f"{r['plait_ratio']:.3f}x | {acc_ratio} | {r['target']} | **{r['status']}** |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "ddp.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
