"""Reading what a launcher told this process: torchrun's variables, or SLURM's under ``srun``.

No torch import here: the default backend is chosen from these values before any
plugin is loaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping

from plait.process.environment import ProcessEnvironment

_DEFAULT_PORT = "29500"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,9],cpu1"`` gives ``"gpu03"``."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} is not a node list: expected e.g. 'node[01-04]' or 'a,b'")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def _tasks_per_node(value: str, node_id: int) -> int:
    """This node's task count from SLURM's per-node counts: ``"4"``, or ``"4(x2),2"`` when nodes differ."""
    counts: list[int] = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise ValueError(f"tasks per node {value!r} is not a SLURM task count: expected e.g. '4' or '4(x2),2'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[min(node_id, len(counts) - 1)]


def detect(environ: Mapping[str, str]) -> ProcessEnvironment:
    """This process's rank and world from torchrun's variables, else SLURM's, else one process."""
    try:
        if "RANK" in environ and "WORLD_SIZE" in environ:
            world = int(environ["WORLD_SIZE"])
            local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
            return ProcessEnvironment(
                rank=int(environ["RANK"]),
                world_size=world,
                local_rank=int(environ.get("LOCAL_RANK", 0)),
                local_world_size=local_world,
            )
        if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
            return ProcessEnvironment(
                rank=int(environ["SLURM_PROCID"]),
                world_size=int(environ["SLURM_NTASKS"]),
                local_rank=int(environ.get("SLURM_LOCALID", 0)),
                local_world_size=_tasks_per_node(
                    environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1"),
                    int(environ.get("SLURM_NODEID", 0)),
                ),
            )
    except ValueError as exc:
        raise ValueError(f"the launcher's environment variables are not valid: {exc}") from None
    return ProcessEnvironment()


def export_for_torch(environ: MutableMapping[str, str] = os.environ) -> None:
    """Under SLURM without torchrun, set the variables ``init_process_group(init_method="env://")`` reads."""
    if "RANK" in environ or "SLURM_PROCID" not in environ:
        return
    env = detect(environ)
    environ["RANK"] = str(env.rank)
    environ["WORLD_SIZE"] = str(env.world_size)
    environ["LOCAL_RANK"] = str(env.local_rank)
    environ["LOCAL_WORLD_SIZE"] = str(env.local_world_size)
    if "MASTER_ADDR" not in environ:
        environ["MASTER_ADDR"] = first_host(environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    environ.setdefault("MASTER_PORT", _DEFAULT_PORT)


def slurm_machines(environ: Mapping[str, str]) -> dict[str, str | int] | None:
    """Under ``srun plait launch`` (one task per node), the machines of the job step: ``num_machines``,
    ``machine_rank``, ``main_process_ip`` (the step's first node) and ``main_process_port`` (``MASTER_PORT``,
    else 29500 plus the job id modulo 1000, the same on every node). ``None`` outside an ``srun`` step.

    :raises ValueError: if ``srun`` started more than one task per node (each would launch its own workers).
    """
    nodes = environ.get("SLURM_STEP_NUM_NODES")
    if nodes is None or "SLURM_NODEID" not in environ:
        return None
    tasks = environ.get("SLURM_STEP_NUM_TASKS", nodes)
    if tasks != nodes:
        raise ValueError(
            f"srun started SLURM_STEP_NUM_TASKS={tasks} tasks on SLURM_STEP_NUM_NODES={nodes} nodes: "
            f"`plait launch` starts the workers of its node itself, so run it once per node "
            f"(`srun --ntasks-per-node=1 plait launch ...`), or run `srun python train.py` without plait launch"
        )
    port = environ.get("MASTER_PORT") or str(int(_DEFAULT_PORT) + int(environ.get("SLURM_JOB_ID", "0") or 0) % 1000)
    return {
        "num_machines": int(nodes),
        "machine_rank": int(environ["SLURM_NODEID"]),
        "main_process_ip": first_host(environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "127.0.0.1")),
        "main_process_port": int(port),
    }

