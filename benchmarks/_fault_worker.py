"""Worker of ``faults.py``: a process that saves checkpoints until it is killed, and the checks after the kill.

    python _fault_worker.py PROJECT [--saves N] [--wait-for-go]

The saver: an ``Accelerator`` with ``ProjectConfiguration(project_dir=PROJECT,
automatic_checkpoint_naming=True, total_limit=2)``, a 4 x ``Linear(512, 512)`` model (1.05M
parameters, 4.2 MB; a checkpoint is 12.6 MB with AdamW's two state tensors per parameter), AdamW
and a StepLR scheduler, prepared. Save ``n`` (n = 0, 1, 2, ...) is ``train_step(n)`` then
``save_state()``, into ``checkpoint_<n>``; after each, one line ``saved <n> <start> <end>``
(``time.time()`` around ``save_state``) on stdout. It runs until killed (or for N saves); with
``--wait-for-go`` it sets everything up, then waits for a line on stdin before its first save.

``train_step(n)`` makes the state a function of ``n`` alone: the parameters and gradients drawn
from a generator seeded with ``n``, the optimizer's state cleared, one AdamW step, one scheduler
step. Since the state is cleared and the parameters overwritten, what save ``n`` holds is what
plain PyTorch objects hold after ``n`` scheduler steps and ``train_step(n)``: :func:`expected`
computes it without plait.

``check(channel, project, reported)`` runs in a fresh process after the kill (``_common.Worker``);
``reported`` is the newest save the saver said it completed (-1 for none). It answers one dict: the
outcome of ``load_state()`` (``loaded``, ``refused``: a ``CheckpointError``, ``wrong``, ``crashed``),
the problems found, and whether the next ``save_state()`` succeeded and left the folder clean.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

WIDTH, LAYERS = 512, 4
LR, STEP_SIZE, GAMMA = 1e-3, 3, 0.9
TOTAL_LIMIT = 2


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The model, optimizer and scheduler of every process (plain PyTorch: the saver and the checker prepare them)."""
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
    return model, optimizer, scheduler


def train_step(n: int, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
    """Put the state of save ``n`` in place: parameters and gradients from seed ``n``, a fresh AdamW step, a
    scheduler step (the learning rate is the one thing that depends on the saves before)."""
    generator = torch.Generator().manual_seed(n)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
            parameter.grad = torch.randn(parameter.shape, generator=generator)
    optimizer.state.clear()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def snapshot(model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Copies of the three state dicts, as they are now."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
    }


def expected(n: int) -> dict[str, Any]:
    """What save ``n`` holds, computed with plain PyTorch objects (no plait)."""
    model, optimizer, scheduler = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": the earlier steps only count
        for _ in range(n):
            scheduler.step()
    train_step(n, model, optimizer, scheduler)
    return snapshot(model, optimizer, scheduler)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and bool(a == b)


def differences(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The parts of ``got`` that are not exactly ``want`` (model tensors by name, optimizer and scheduler entries)."""
    found = [f"model {k}" for k in sorted(set(want["model"]) | set(got["model"]))
             if not _same(want["model"].get(k), got["model"].get(k))]
    for part in ("optimizer", "scheduler"):
        found += [f"{part} {k}" for k in sorted(set(want[part]) | set(got[part]), key=str)
                  if not _same(want[part].get(k), got[part].get(k))]
    return found


def _number(path: str | Path) -> int:
    name = Path(path).name
    return int(name.split("_")[-1]) if name.startswith("checkpoint_") else -1


def _complete(folder: Path) -> list[int]:
    """The visible ``checkpoint_<n>`` with a manifest (read here, not through plait)."""
    return sorted(_number(p) for p in folder.glob("checkpoint_*") if (p / "plait_checkpoint.json").is_file())


def check(channel: Any, project: str, reported_text: str) -> None:
    """After the kill: load, compare, save once more, compare again; answer one dict (see the module's docstring)."""
    from plait import Accelerator, ProjectConfiguration
    from plait.errors import CheckpointError

    reported = int(reported_text)
    folder = Path(project) / "checkpoints"
    visible = _complete(folder)
    answer: dict[str, Any] = {"outcome": "crashed", "loaded": None, "problems": [], "others_wrong": [],
                              "next_save": "not tried", "visible": visible}
    problems: list[str] = answer["problems"]
    phase = "load"
    try:
        accelerator = Accelerator(cpu=True, project_config=ProjectConfiguration(
            project_dir=project, automatic_checkpoint_naming=True, total_limit=TOTAL_LIMIT))
        torch.manual_seed(12345)  # another start than any save's
        model, optimizer, scheduler = accelerator.prepare(*build())
        try:
            started = time.perf_counter()
            loaded = _number(accelerator.load_state())
            answer["load_s"] = round(time.perf_counter() - started, 4)
        except CheckpointError as exc:
            answer.update(outcome="refused", reason=str(exc))
            channel.send(answer)
            return
        answer["loaded"] = loaded
        wrong = differences(expected(loaded), snapshot(model, optimizer, scheduler))
        if wrong:
            problems.append(f"checkpoint_{loaded} does not hold save {loaded}'s state: {', '.join(wrong[:5])}")
        if not visible or loaded != visible[-1]:
            problems.append(f"load_state() loaded checkpoint_{loaded}, the newest complete one is {visible[-1:]}")
        if loaded < reported:
            problems.append(f"save {reported} had completed before the kill, but checkpoint_{loaded} was loaded")
        if loaded > reported + 1:
            problems.append(f"checkpoint_{loaded} was loaded, but save {reported + 1} was the one in progress")
        answer["outcome"] = "wrong" if problems else "loaded"
        phase = "others"
        for other in visible[:-1]:  # every other visible checkpoint holds its own save's state too
            accelerator.load_state(folder / f"checkpoint_{other}")
            wrong = differences(expected(other), snapshot(model, optimizer, scheduler))
            if wrong:
                answer["others_wrong"].append(f"checkpoint_{other}: {', '.join(wrong[:5])}")
        phase = "next save"
        answer["next_save"] = _next_save(accelerator, model, optimizer, scheduler, folder, loaded)
    except Exception as exc:  # a crash is an outcome to count, with its reason
        reason = f"{type(exc).__name__}: {exc}"
        if phase == "load":
            answer["reason"] = reason
        elif phase == "others":
            answer["others_wrong"].append(f"loading another visible checkpoint raised {reason}")
        else:
            answer["next_save"] = reason
    channel.send(answer)


def _next_save(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, folder: Path, loaded: int) -> str:
    """The run resumed from ``loaded`` saves once more: ``"ok"``, or what went wrong."""
    accelerator.load_state(folder / f"checkpoint_{loaded}")  # back to the newest, as a resumed run would be
    train_step(loaded + 1, model, optimizer, scheduler)
    saved = _number(accelerator.save_state())
    if saved != loaded + 1:
        return f"save_state() after loading checkpoint_{loaded} wrote checkpoint_{saved}"
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    kept = _complete(folder)
    if leftovers or kept != [loaded, loaded + 1]:
        return f"after the next save the folder holds {kept} and leftovers {leftovers}"
    again = _number(accelerator.load_state())
    wrong = differences(expected(loaded + 1), snapshot(model, optimizer, scheduler))
    if again != loaded + 1 or wrong:
        return f"the next save, checkpoint_{saved}, loads back as checkpoint_{again} with {wrong[:5]} wrong"
    return "ok"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project")
    parser.add_argument("--saves", type=int, default=None, help="stop after this many saves (default: never)")
    parser.add_argument("--wait-for-go", action="store_true", help="once set up, wait for a line on stdin to start")
    args = parser.parse_args(argv)
    from plait import Accelerator, ProjectConfiguration

    accelerator = Accelerator(cpu=True, project_config=ProjectConfiguration(
        project_dir=args.project, automatic_checkpoint_naming=True, total_limit=TOTAL_LIMIT))
    model, optimizer, scheduler = accelerator.prepare(*build())
    if args.wait_for_go:
        sys.stdin.readline()
    n = 0
    while args.saves is None or n < args.saves:
        train_step(n, model, optimizer, scheduler)
        start = time.time()
        path = accelerator.save_state()
        end = time.time()
        if _number(path) != n:
            raise RuntimeError(f"save {n} went to {path}, expected checkpoint_{n}")
        print(f"saved {n} {start:.6f} {end:.6f}", flush=True)
        n += 1
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1:])
