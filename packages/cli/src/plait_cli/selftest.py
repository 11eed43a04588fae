"""``plait test``: a short real training run across the configured processes that checks the numbers.

Every process trains a small model through ``Accelerator`` (sharded data,
accumulation, the configured backend and precision) and, beside it, the same model
with plain PyTorch on the whole global batch. After the run the two must agree:
N processes with batch b give the parameters of one process with batch N*b.
Run as a module by ``plait launch``: ``python -m plait_cli.selftest --result FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click

from plait_cli.launch import LaunchRequest, execute, make_plan

STEPS = 6
BATCH = 4  # per process and micro-step
FEATURES = 8


def train_and_compare() -> dict[str, Any]:
    """Train with plait and with plain PyTorch; return what rank 0 reports."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from plait import Accelerator

    accelerator = Accelerator()
    n, k = accelerator.num_processes, accelerator.gradient_accumulation_steps
    generator = torch.Generator().manual_seed(0)
    samples = STEPS * k * BATCH * n
    inputs = torch.randn(samples, FEATURES, generator=generator)
    targets = inputs @ torch.randn(FEATURES, 1, generator=generator) + 0.1 * torch.randn(samples, 1, generator=generator)

    def make_model() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    reference = make_model()
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(STEPS):  # one optimizer step over the whole global batch of n*k*BATCH samples
        rows = slice(step * n * k * BATCH, (step + 1) * n * k * BATCH)
        reference_optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(inputs[rows]), targets[rows]).backward()
        reference_optimizer.step()

    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Sharded like HF Accelerate: micro-step i of process r reads batch i*n + r, so the global batch of
    # each optimizer step is the same n*k*BATCH consecutive rows as the reference's.
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=BATCH, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()

    gathered = accelerator.gather(torch.tensor([accelerator.process_index], device=accelerator.device))
    state = accelerator.get_state_dict(model)
    expected = reference.state_dict()
    difference = max(
        (state[name].detach().float().cpu() - expected[name]).abs().max().item() for name in expected
    ) if state else 0.0
    return {
        "processes": n,
        "backend": accelerator.backend,
        "mixed_precision": accelerator.mixed_precision,
        "accumulation": k,
        "device": str(accelerator.device),
        "max_difference": difference,
        "gather_ok": gathered.cpu().tolist() == list(range(n)),
        "is_main": accelerator.is_main_process,
    }


def _worker() -> None:
    parser = argparse.ArgumentParser(description="plait test's worker")
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    report = train_and_compare()
    if report.pop("is_main"):
        Path(args.result).write_text(json.dumps(report), encoding="utf-8")


def _tolerance(mixed_precision: str) -> float:
    return 1e-5 if mixed_precision == "no" else 2e-2


@click.command()
@click.option("--num-processes", type=int, default=None, help="Processes to run (default: the config's).")
@click.option("--backend", default=None, help="Backend to test (default: the config's).")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default=None)
@click.option("--gradient-accumulation-steps", type=int, default=None)
@click.option("--cpu", is_flag=True, default=None, help="Run on CPU even if GPUs are present.")
@click.option("--config-file", type=click.Path(dir_okay=False), default=None)
@click.pass_obj
def test(state: Any, /, config_file: str | None, **flags: Any) -> None:
    """Train a small model on the configured processes and check the numbers against plain PyTorch.

    N processes with batch b must end with the parameters of one process with batch N*b
    (within 1e-5 in fp32). Prints PASS or FAIL; the exit code is 0 only on PASS.
    """
    with tempfile.TemporaryDirectory(prefix="plait-test-") as directory:
        result = Path(directory) / "result.json"
        request = LaunchRequest(
            script="plait_cli.selftest",
            script_args=("--result", str(result)),
            module=True,
            flags={key: value for key, value in flags.items() if value is not None},
            config_file=config_file,
        )
        plan = make_plan(request, state.pm, os.environ)
        click.echo(f"plait test: {plan.config.num_processes} process(es), backend {plan.config.backend}, "
                   f"mixed precision {plan.config.mixed_precision}, "
                   f"{plan.config.gradient_accumulation_steps} accumulation step(s)")
        code = execute(plan, state.pm)
        if code != 0 or not result.is_file():
            raise click.ClickException(f"FAIL: the training run exited with code {code}")
        report = json.loads(result.read_text(encoding="utf-8"))
    tolerance = _tolerance(report["mixed_precision"])
    passed = report["max_difference"] <= tolerance and report["gather_ok"]
    summary = (
        f"{report['processes']} process(es) on {report['device']} after {STEPS} steps: the parameters differ from "
        f"one process with the whole batch by at most {report['max_difference']:.2e} (tolerance {tolerance:.0e}); "
        f"gather {'ok' if report['gather_ok'] else 'WRONG'}"
    )
    if not passed:
        raise click.ClickException(f"FAIL: {summary}")
    click.echo(f"PASS: {summary}")


if __name__ == "__main__":
    _worker()
