"""Hangs named: which processes a timed-out wait was waiting for, and where the others were.

gloo's timeout names no process ("Timed out waiting 1800000ms for recv operation to complete"),
and torch's flight recorder, which would, records NCCL only. So a process whose collective
timed out appends one line to the process group's store (the TCPStore every process already
shares, reached through ``ProcessGroup.get_group_store()``), ``<time> <rank> <how> <operation>``,
waits a few seconds for the other processes' lines, and raises
:class:`~plait.errors.CollectiveTimeoutError`: the processes that gave up elsewhere, with their
operation, and those that wrote nothing, being in no collective at all.

A process whose peer gave up first often sees gloo's "Connection closed by peer" instead of its
own timeout (the peer's timeout closes their connection): that counts as the same hang.
Nothing here runs unless a wait has already failed: the happy path has no store access.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

from plait.errors import CollectiveTimeoutError, PlaitError

#: torch's timeouts: gloo's "Timed out waiting 3000ms", NCCL's watchdog "collective operation timeout ... before
#: timing out", the store's "Socket Timeout" / "wait timeout after". Narrow on purpose: a RuntimeError of the
#: user's own from backward that merely mentions a timeout is not a hang of the process group.
_TIMEOUT = re.compile(r"timed out|timing out|operation timeout|socket timeout|timeout after", re.IGNORECASE)
#: gloo's error when the process at the other end of a connection gave up (timed out) or died.
_CLOSED = re.compile(r"connection (closed|reset) by peer", re.IGNORECASE)
#: The store key every process appends its report to (one line each; older hangs' lines are ignored by time).
REPORTS_KEY = "plait/timeouts"
#: The most seconds a process waits for the others' reports (less when the group's timeout is shorter).
MAX_GRACE_SECONDS = 10.0
#: How long before a process's own timeout another's report may have been written and still be about this hang.
_CLOCK_SLACK_SECONDS = 1.0
_POLL_SECONDS = 0.05
_TIMED_OUT, _CLOSED_CONNECTION = "timed out", "lost its connection to another process"


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is torch.distributed giving up a wait for other processes: a timeout, or a connection
    the other end closed (it timed out first, or died). plait's own errors are not."""
    if not isinstance(error, RuntimeError) or isinstance(error, PlaitError):
        return False
    text = str(error)
    return bool(_TIMEOUT.search(text) or _CLOSED.search(text))


def _group_store() -> tuple[Any, float]:
    """The default group's store and the group's timeout in seconds (the store's: ``init_process_group`` sets it)."""
    import torch.distributed as dist

    group = dist.group.WORLD
    if group is None:
        raise RuntimeError("the default process group is gone")
    store: Any = group.get_group_store()  # torch types it without its timeout
    return store, float(store.timeout.total_seconds())


#: One report: (host, how it gave up, operation, detail).
Report = tuple[str, str, str, str]


def _read_reports(store: Any, rank: int, world_size: int, since: float) -> dict[int, Report]:
    """The latest report of each other rank written after ``since`` (a ``time.time()``)."""
    reports: dict[int, Report] = {}
    for line in bytes(store.get(REPORTS_KEY)).decode("utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        head = fields[0].split(" ")
        if len(fields) != 5 or len(head) != 2 or not head[1].isdigit():
            continue
        try:
            written = float(head[0])
        except ValueError:
            continue
        other = int(head[1])
        if written >= since and other != rank and other < world_size:
            reports[other] = (fields[1], fields[2], fields[3], fields[4])
    return reports


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def timeout_error(
    error: BaseException, operation: str, detail: str, rank: int, world_size: int
) -> CollectiveTimeoutError:
    """Report ``operation``'s failed wait on ``rank`` to the store, wait for the other ranks' reports (at most
    :data:`MAX_GRACE_SECONDS`, less when every other rank reported), and return the error that names them.

    :param error: torch's error (:func:`is_timeout`), which becomes the ``__cause__``.
    :param operation: what this rank was waiting in (``"barrier #7"``: plait's 7th collective on this rank).
    :param detail: where this rank's dataloaders stand (``"dataloader 0: 3 batches yielded in epoch 0"``), or ``""``.
    """
    now = time.time()
    how = _TIMED_OUT if _TIMEOUT.search(str(error)) else _CLOSED_CONNECTION
    mine: Report = (socket.gethostname(), how, _one_line(operation), _one_line(detail))
    timeout: float | None = None
    reports: dict[int, Report] = {}
    unreadable = ""
    try:
        store, timeout = _group_store()
        store.append(REPORTS_KEY, f"{now:.3f} {rank}\t" + "\t".join(mine) + "\n")
        deadline = time.monotonic() + min(MAX_GRACE_SECONDS, timeout)
        since = now - timeout - _CLOCK_SLACK_SECONDS
        while True:
            reports = _read_reports(store, rank, world_size, since)
            if len(reports) >= world_size - 1 or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_SECONDS)
    except Exception as store_error:  # the store's host may be the process that died
        unreadable = f" (the other processes' reports could not be read from the process group's store: {store_error})"
    missing = [] if unreadable else [r for r in range(world_size) if r != rank and r not in reports]
    message = describe(mine, rank, timeout, reports, missing) + unreadable
    named = CollectiveTimeoutError(message, rank, mine[2], {r: report[2] for r, report in reports.items()}, missing)
    named.__cause__ = error
    return named


def _where(report: Report, host: str) -> str:
    other_host, _, operation, detail = report
    on = f" on {other_host}" if other_host != host else ""
    return f"{operation}{on}" + (f" [{detail}]" if detail else "")


def describe(mine: Report, rank: int, timeout: float | None, reports: dict[int, Report], missing: list[int]) -> str:
    """The message of :func:`timeout_error`: this rank's operation, the others' reports, the ranks missing, what to do."""
    host, how, operation, _ = mine
    after = f" after {timeout:g} s (the process group's timeout)" if timeout is not None and how == _TIMED_OUT else ""
    parts = [f"rank {rank} {how} in {_where(mine, host)}{after} waiting for the other processes"]
    differ = False
    for other, report in sorted(reports.items()):
        same = report[2] == operation
        differ = differ or not same
        parts.append(f"rank {other} {report[1]} {'too, ' if same else ''}in {_where(report, host)}")
    one = len(missing) == 1
    if missing:
        parts.append(
            f"{ranks(missing)} did not arrive: {'it is' if one else 'they are'} not waiting in any collective — "
            f"{'it' if one else 'they'} may be hung or busy, or have died"
        )
    advice = []
    if differ:
        advice.append(
            "the processes were in different collectives (or the same ones in a different order): make every process "
            "call the same collectives in the same order (PLAIT_DEBUG=1 compares them before each one)"
        )
    if missing:
        advice.append(
            f"find what {ranks(missing)} {'is' if one else 'are'} doing (its traceback or log; py-spy dump --pid shows "
            f"a live process's stack); if the work before this point legitimately takes longer, raise the timeout "
            f"(InitProcessGroupKwargs(timeout=timedelta(...)) or process_group_timeout in the config)"
        )
    return "; ".join(parts) + ("." if not advice else ". To fix: " + "; ".join(advice) + ".")


def ranks(numbers: list[int]) -> str:
    """``"rank 3"``, ``"ranks 1-4, 7"``."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and spans[-1][-1] == number - 1:
            spans[-1] = [spans[-1][0], number]
        else:
            spans.append([number])
    return ("rank " if len(numbers) == 1 else "ranks ") + ", ".join("-".join(map(str, span)) for span in spans)
