"""``plait launch`` under preemption: the workers' grace period after a SIGTERM, and requeueing a SLURM job.

On SIGTERM (SLURM preemption, a Kubernetes eviction, a spot instance reclaimed) torch's elastic agent sends
SIGTERM to every worker, waits for them, and SIGKILLs those still running after its shutdown timeout: the
grace period, :data:`GRACE_VARIABLE` seconds (default :data:`DEFAULT_GRACE`). After a SIGTERM the launcher
of machine 0 requeues a requeueable SLURM job (:func:`requeue`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping

GRACE_VARIABLE = "PLAIT_PREEMPTION_GRACE"
DEFAULT_GRACE = 30
#: torch's own variable for the same timeout; honoured when plait's is not set.
_TORCH_VARIABLE = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
_SCONTROL_SECONDS = 30


def grace_seconds(environ: Mapping[str, str]) -> int | None:
    """The seconds workers get between SIGTERM and SIGKILL; ``None`` when torch's own variable decides.

    :raises ValueError: when ``PLAIT_PREEMPTION_GRACE`` is not a whole number of seconds, 0 or more.
    """
    raw = environ.get(GRACE_VARIABLE)
    if raw is None or not raw.strip():
        return None if _TORCH_VARIABLE in environ else DEFAULT_GRACE
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ValueError(
            f"environment variable {GRACE_VARIABLE}={raw!r} is not valid: expected the whole number of seconds "
            f"the workers get to save and exit after a SIGTERM before they are killed (0 or more; default "
            f"{DEFAULT_GRACE}), e.g. {GRACE_VARIABLE}=120"
        )
    return seconds


def requeue(job_id: str) -> None:
    """Requeue SLURM job ``job_id`` with ``scontrol requeue`` if ``scontrol show job`` says ``Requeue=1``.

    Says on stderr what was done or why not; never raises, so that the launcher's exit code stays its own.
    """
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        _say(f"SLURM job {job_id} was not requeued: scontrol is not on PATH")
        return
    shown = _scontrol(scontrol, "show", "job", job_id)
    if shown is None:
        return
    if "Requeue=1" not in shown.split():
        _say(f"SLURM job {job_id} was not requeued: it is not requeueable (scontrol show job {job_id} does not say "
             f"Requeue=1); submit it with `sbatch --requeue` to have it requeued after a preemption")
        return
    if _scontrol(scontrol, "requeue", job_id) is not None:
        _say(f"requeued SLURM job {job_id} (scontrol requeue {job_id})")


def _scontrol(scontrol: str, *args: str) -> str | None:
    command = f"scontrol {' '.join(args)}"
    try:
        done = subprocess.run([scontrol, *args], capture_output=True, text=True, timeout=_SCONTROL_SECONDS,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _say(f"{command} failed ({exc}); the job was not requeued: requeue it yourself")
        return None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        _say(f"{command} failed with exit code {done.returncode}{': ' + detail if detail else ''}; the job was not "
             f"requeued: requeue it yourself")
        return None
    return done.stdout


def _say(message: str) -> None:
    print(f"plait launch: {message}", file=sys.stderr, flush=True)
