"""Worker functions for ``test_several_models.py``: several models, each with its own optimizer, under ``zero``.

Run on real processes by ``plait.testing.run_processes`` (2 processes over gloo, CPU).
The same loops run under ``ddp`` and under ``zero`` at each stage; ddp is the oracle.
A GAN-like pair (two MLPs, two optimizers, alternating steps) in two orders:

* ``dcgan``: PyTorch's DCGAN order, ``zero_grad()`` before each backward, so the
  discriminator's gradients from the generator's loss are discarded; the
  discriminator's gradient norm is clipped; the generator has a scheduler.
* ``accum``: HF Accelerate's order (``zero_grad()`` after ``step()``) with gradient
  accumulation over 2 micro-steps, the discriminator zeroed after the generator's
  step; the generator is called twice in its loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait.testing import error_of

BATCH = 4
STEPS = 8
LR = 0.05
SAVE_AT = 3  # the interrupted run saves after this many batches


def gan_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 6))
    discriminator = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 1))
    return generator, discriminator


def gan_loader(accumulation: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    n = STEPS * accumulation * BATCH * 2
    real, noise = torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real, noise), batch_size=BATCH)


def params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().float() for k, v in state.items()}


def gan(backend: str, variant: str = "dcgan", options: dict[str, Any] | None = None, two_calls: bool = False,
        mode: str = "full", checkpoint: str = "") -> dict[str, Any]:
    """``mode``: ``full`` trains every batch; ``interrupt`` saves after ``SAVE_AT`` batches and stops;
    ``resume`` loads that checkpoint and trains the remaining batches."""
    from plait import Accelerator

    mse = nn.functional.mse_loss
    accumulation = 2 if variant == "accum" else 1
    accelerator = Accelerator(backend=backend, gradient_accumulation_steps=accumulation, backend_options=options)
    gen, disc = gan_models()
    opt_g = torch.optim.AdamW(gen.parameters(), lr=LR)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=LR)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=2, gamma=0.7)
    data = gan_loader(accumulation)
    if two_calls:
        gen, opt_g, data, sched_g = accelerator.prepare(gen, opt_g, data, sched_g)
        disc, opt_d = accelerator.prepare(disc, opt_d)
    else:
        gen, disc, opt_g, opt_d, data, sched_g = accelerator.prepare(gen, disc, opt_g, opt_d, data, sched_g)
    out: dict[str, Any] = {"norms": [], "lr": [], "types": [type(gen).__name__, type(disc).__name__]}
    done = 0
    if mode == "resume":
        accelerator.load_state(checkpoint)
        done = SAVE_AT
        data = accelerator.skip_first_batches(data, SAVE_AT)
    for real, noise in data:
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        with accelerator.accumulate(gen, disc):
            if variant == "dcgan":
                opt_d.zero_grad()
            loss_d = mse(disc(real), ones) + mse(disc(gen(noise).detach()), zeros)
            accelerator.backward(loss_d)
            if variant == "dcgan":
                out["norms"].append(float(accelerator.clip_grad_norm_(disc.parameters(), 0.5)))
            opt_d.step()
            if variant == "accum":
                opt_d.zero_grad()
            else:
                opt_g.zero_grad()
            fake = gen(noise)
            loss_g = mse(disc(fake), ones) if variant == "dcgan" else mse(disc(fake), ones) + mse(disc(gen(-noise)), ones)
            accelerator.backward(loss_g)  # reaches the discriminator's parameters too
            opt_g.step()
            sched_g.step()
            if variant == "accum":
                opt_g.zero_grad()
                opt_d.zero_grad()  # drop the discriminator's gradients of the generator's loss
        out["lr"].append(opt_g.param_groups[0]["lr"])
        done += 1
        if mode == "interrupt" and done == SAVE_AT:
            accelerator.save_state(checkpoint)
            break
    out["gen"] = params(accelerator.get_state_dict(gen))
    out["disc"] = params(accelerator.get_state_dict(disc))
    accelerator.free_memory()
    return out


def teacher_run(backend: str, options: dict[str, Any] | None = None, checkpoint: str = "") -> dict[str, Any]:
    """A student trained to fit the data and a frozen teacher's outputs (HF Accelerate's multiple-model guide):
    under zero the student and teacher have named configs, the teacher prepared alone after selecting its own."""
    from plait import Accelerator

    mse = nn.functional.mse_loss
    accelerator = Accelerator(backend=backend, backend_options=options)
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 13), nn.Tanh(), nn.Linear(13, 1))
    torch.manual_seed(5)
    teacher = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 1)).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(STEPS * BATCH * 2, 6, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    out: dict[str, Any] = {}
    student, optimizer, data = accelerator.prepare(student, optimizer, data)
    if backend == "zero":
        out["selected_first"] = accelerator.backend_options.selected
        accelerator.backend_options.select("teacher")
        out["selected_then"] = accelerator.backend_options.selected
        out["select_error"] = error_of(lambda: accelerator.backend_options.select("techer"))
        teacher = accelerator.prepare(teacher)
        out["teacher_type"] = type(teacher).__name__
        inner = accelerator.unwrap_model(teacher)
        out["teacher_local_numel"] = sum(int(getattr(p, "ds_tensor", p).numel()) for p in inner.parameters())
    teacher.eval()
    for xb, yb in data:
        with accelerator.accumulate(student):
            with torch.no_grad():
                target = teacher(xb)
            prediction = student(xb)
            loss = mse(prediction, yb) + mse(prediction, target)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    out["student"] = params(accelerator.get_state_dict(student))
    if backend == "zero":
        out["teacher"] = params(accelerator.get_state_dict(teacher))
        if checkpoint:
            accelerator.save_state(checkpoint)
            if accelerator.is_main_process:
                out["files"] = sorted(p.relative_to(checkpoint).as_posix() for p in Path(checkpoint).rglob("*")
                                      if p.is_file())
            accelerator.load_state(checkpoint)
            out["teacher_loaded"] = params(accelerator.get_state_dict(teacher))
            out["student_loaded"] = params(accelerator.get_state_dict(student))
    accelerator.free_memory()
    return out


def refusals() -> dict[str, Any]:
    """What one DeepSpeed engine per model cannot hold, and a loop whose numbers DeepSpeed's stage 2 would change."""
    from plait import Accelerator

    mse = nn.functional.mse_loss
    out: dict[str, Any] = {}
    accelerator = Accelerator(backend="zero", backend_options={"stage": 2})
    gen, disc = gan_models()
    both = torch.optim.AdamW(list(gen.parameters()) + list(disc.parameters()), lr=LR)
    out["one_optimizer_two_models"] = error_of(lambda: accelerator.prepare(gen, disc, both))
    halves = torch.optim.AdamW(gen[0].parameters(), lr=LR), torch.optim.AdamW(gen[2].parameters(), lr=LR)
    out["two_optimizers_one_model"] = error_of(lambda: accelerator.prepare(gen, *halves))
    # HF Accelerate's order without freezing: the generator's loss gives the discriminator gradients that torch
    # adds to its next ones; ZeRO stage 2 would keep only the next ones.
    opt_g, torch_opt_d = torch.optim.AdamW(gen.parameters(), lr=LR), torch.optim.AdamW(disc.parameters(), lr=LR)
    gen, disc, opt_g, opt_d = accelerator.prepare(gen, disc, opt_g, torch_opt_d)
    # A scheduler prepared after its optimizer goes with that optimizer's engine.
    late = accelerator.prepare(torch.optim.lr_scheduler.StepLR(torch_opt_d, step_size=1))
    out["late_scheduler"] = (type(late).__name__, late.optimizers == [opt_d])
    real, noise = torch.randn(BATCH, 6), torch.randn(BATCH, 3)

    def two_steps() -> None:
        for _ in range(2):
            accelerator.backward(mse(disc(real), torch.ones(BATCH, 1)) + mse(disc(gen(noise).detach()), torch.zeros(BATCH, 1)))
            opt_d.step()
            opt_d.zero_grad()
            accelerator.backward(mse(disc(gen(noise)), torch.ones(BATCH, 1)))
            opt_g.step()
            opt_g.zero_grad()

    out["leak"] = error_of(two_steps)
    accelerator.free_memory()
    # One model, zero_grad() before backward with accumulation: torch discards the earlier micro-step's gradients,
    # ZeRO stage 2 cannot.
    accelerator = Accelerator(backend="zero", gradient_accumulation_steps=2, backend_options={"stage": 2})
    model = nn.Linear(6, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR))

    def zero_grad_first() -> None:
        for _ in range(2):
            with accelerator.accumulate(model):
                optimizer.zero_grad()
                accelerator.backward(mse(model(real), torch.ones(BATCH, 1)))
                optimizer.step()

    out["zero_grad_first"] = error_of(zero_grad_first)
    accelerator.free_memory()
    return out


def several_worker(root: str) -> dict[str, Any]:
    """Every run of the first launch: parity with ddp, one prepare call or two, the teacher, the refusals, and
    the uninterrupted and interrupted runs the second launch resumes."""
    out: dict[str, Any] = {}
    for variant in ("dcgan", "accum"):
        out[f"ddp/{variant}"] = gan("ddp", variant)
        for stage in (1, 2, 3):
            out[f"zero{stage}/{variant}"] = gan("zero", variant, {"stage": stage})
    out["zero2/dcgan/two-calls"] = gan("zero", "dcgan", {"stage": 2}, two_calls=True)
    out["ddp/teacher"] = teacher_run("ddp")
    out["zero/teacher3"] = teacher_run("zero", {"plugins": {"student": {"stage": 2}, "teacher": {"stage": 3}}},
                                       checkpoint=str(Path(root) / "teacher"))
    out["zero/teacher1"] = teacher_run("zero", {"plugins": {"student": {"stage": 1}, "teacher": {"stage": 1}}})
    out["refusals"] = refusals()
    for stage in (2, 3):
        out[f"zero{stage}/interrupt"] = gan("zero", "dcgan", {"stage": stage}, mode="interrupt",
                                            checkpoint=str(Path(root) / f"gan{stage}"))
    return out


def resume_worker(root: str) -> dict[str, Any]:
    return {f"zero{stage}/resume": gan("zero", "dcgan", {"stage": stage}, mode="resume",
                                       checkpoint=str(Path(root) / f"gan{stage}")) for stage in (2, 3)}
