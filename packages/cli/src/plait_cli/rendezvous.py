"""``plait launch``'s rendezvous: after a restart every machine meets again, and each attempt's workers get a
store of their own.

torch's elastic agent gives the workers of every attempt the same TCP store (torchrun's static rendezvous
serves it on the master port, its c10d rendezvous shares the agent's), and the keys a worker writes outlive
it. After a restart, gloo's full mesh reads each peer's address from that store: a new worker that reaches
``init_process_group`` before its peer has written its own reads the dead predecessor's address and fails
(``Gloo connectFullMesh failed ... Connection refused``), a race that a loaded machine loses. Here the
launcher of machine 0 (of rendezvous rank 0 under c10d) serves each attempt's workers a new store, on a port
the operating system assigns while the store holds it, so that no two jobs can collide on it.

:func:`register` adds two backends to torch's rendezvous registry, in the launcher's process:

``plait-static`` (``--rdzv-backend static``, the default)
    torchrun's static rendezvous (fixed machine ranks; the machines meet on machine 0's main process port,
    or, on one machine without a port, on a port the system assigns) and what it lacks for restarts: every
    machine joins each attempt, and a machine whose workers are still healthy restarts them when another
    machine restarts (torch's agent does not count that restart against ``--max-restarts``).
``plait-c10d`` (``--rdzv-backend c10d``)
    torch's c10d rendezvous (elastic membership), each round's workers with a store of their own.
"""

from __future__ import annotations

import datetime
import socket
import time

from torch.distributed import PrefixStore, Store, TCPStore  # type: ignore[attr-defined]  # torch does not declare them exported
from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

from plait_cli.launch_flags import MACHINE_RANK_KEY, RENDEZVOUS_BACKENDS

STATIC = RENDEZVOUS_BACKENDS["static"]
C10D = RENDEZVOUS_BACKENDS["c10d"]
#: Where an attempt's rendezvous store names the workers' store, as ``host:port``.
_WORKER_STORE_KEY = "plait/worker_store"
_POLL_SECONDS = 0.02
_DEFAULT_TIMEOUT = 900


def register() -> None:
    """Make ``plait-static`` and ``plait-c10d`` known to torch's elastic launcher (again is harmless)."""
    rendezvous_handler_registry.register(STATIC, _create_static)
    rendezvous_handler_registry.register(C10D, _create_c10d)


def _create_static(params: RendezvousParameters) -> RendezvousHandler:
    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=-1)
    if port < 0:
        raise ValueError(f"rendezvous endpoint {params.endpoint!r} has no port: expected host:port")
    return FixedRanksRendezvous(
        host, port, params.get_as_int(MACHINE_RANK_KEY, 0) or 0, params.max_nodes, params.run_id,
        params.get_as_int("timeout", _DEFAULT_TIMEOUT) or _DEFAULT_TIMEOUT,
    )


def _create_c10d(params: RendezvousParameters) -> RendezvousHandler:
    torch_params = RendezvousParameters("c10d", params.endpoint, params.run_id, params.min_nodes, params.max_nodes,
                                        params.local_addr, **params.config)
    return FreshStoreRendezvous(rendezvous_handler_registry.create_handler(torch_params),
                                params.local_addr or socket.getfqdn())


def _serve_workers(host: str) -> TCPStore:
    """A new store for one attempt's workers; port 0: the system assigns a free one as the store binds it."""
    return TCPStore(host, 0, is_master=True, wait_for_workers=False)


class FixedRanksRendezvous(RendezvousHandler):
    """Machine ``machine_rank`` of ``machines``, meeting on the store at ``host:port`` (served by machine 0).

    Attempt ``n`` (its first start, then each restart) is round ``n``: every machine adds itself to the round's
    count, the last one to arrive says so, machine 0 then serves the round's workers a new store and names it
    in the round's keys, and every machine waits for that name. A round cannot start without every machine,
    so the machines' round numbers never drift apart.
    """

    def __init__(self, host: str, port: int, machine_rank: int, machines: int, run_id: str, timeout: int) -> None:
        self._host, self._port = host, port
        self._machine_rank, self._machines = machine_rank, machines
        self._run_id = run_id
        self._timeout = timeout
        self._store: Store | None = None
        self._workers: TCPStore | None = None
        self._round = -1

    def get_backend(self) -> str:
        return STATIC

    @property
    def use_agent_store(self) -> bool:
        return True

    def _control(self) -> Store:
        if self._store is None:
            try:
                self._store = TCPStore(self._host, self._port, self._machines, self._machine_rank == 0,
                                       datetime.timedelta(seconds=self._timeout), wait_for_workers=False)
            except (RuntimeError, OSError) as exc:
                where = "serve" if self._machine_rank == 0 else "reach machine 0's launcher at"
                raise RendezvousConnectionError(
                    f"machine {self._machine_rank} could not {where} {self._host}:{self._port} ({exc}): check "
                    f"--main-process-ip and --main-process-port, and that the port is free on machine 0"
                ) from None
        return self._store

    def _key(self, round_: int, name: str) -> str:
        return f"{self._run_id}/round{round_}/{name}"

    def next_rendezvous(self) -> RendezvousInfo:
        store = self._control()
        self._round += 1
        arrived = self._key(self._round, "arrived")
        try:
            if store.add(self._key(self._round, "joined"), 1) == self._machines:
                store.set(arrived, "1")
            round_store = PrefixStore(self._key(self._round, "agents"), store)
            if self._machine_rank == 0:
                self._wait(store, arrived, "every machine to join")
                self._workers = None  # every machine stopped its workers before joining: the old store is unused
                self._workers = _serve_workers(self._host)
                round_store.set(_WORKER_STORE_KEY, f"{self._host}:{self._workers.port}")
            self._wait(round_store, _WORKER_STORE_KEY, "machine 0 to serve the workers' store")
            host, _, port = round_store.get(_WORKER_STORE_KEY).decode().rpartition(":")
        except (RuntimeError, OSError) as exc:  # the store's errors: machine 0's launcher is gone
            raise RendezvousConnectionError(
                f"machine {self._machine_rank} lost machine 0's launcher at {self._host}:{self._port} in restart "
                f"round {self._round} ({exc})"
            ) from None
        return RendezvousInfo(round_store, self._machine_rank, self._machines, RendezvousStoreInfo(host, int(port)))

    def _wait(self, store: Store, key: str, what: str) -> None:
        deadline = time.monotonic() + self._timeout
        closed = f"{self._run_id}/closed"
        while not store.check([key]):
            if self._store is not None and self._store.check([closed]):
                raise RendezvousClosedError(
                    f"machine {self._machine_rank} was waiting for {what} (round {self._round}), but another "
                    f"machine's launcher ended the job"
                )
            if time.monotonic() > deadline:
                raise RendezvousTimeoutError(
                    f"machine {self._machine_rank} waited {self._timeout} s for {what} (round {self._round}) at "
                    f"{self._host}:{self._port}: start `plait launch` on every machine, with the same "
                    f"--num-machines, or raise the wait with --rdzv-conf timeout=SECONDS"
                )
            time.sleep(_POLL_SECONDS)

    def num_nodes_waiting(self) -> int:
        """How many machines joined the next round: another machine restarted, so this one must too."""
        if self._machines == 1 or self._store is None:
            return 0
        try:
            return int(self._store.add(self._key(self._round + 1, "joined"), 0))
        except (RuntimeError, OSError) as exc:  # the store's errors: machine 0's launcher is gone
            raise RendezvousConnectionError(
                f"machine {self._machine_rank} lost machine 0's launcher at {self._host}:{self._port} ({exc}): it "
                f"ended, or its machine cannot be reached"
            ) from None

    def is_closed(self) -> bool:
        return self._store is not None and self._store.check([f"{self._run_id}/closed"])

    def set_closed(self) -> None:
        if self._store is not None:
            self._store.set(f"{self._run_id}/closed", "1")

    def get_run_id(self) -> str:
        return self._run_id

    def shutdown(self) -> bool:
        """The job is over here: machines still waiting for a round stop waiting."""
        try:
            self.set_closed()
        except (RuntimeError, OSError):  # machine 0's launcher, and its store, already left
            return False
        return True


class FreshStoreRendezvous(RendezvousHandler):
    """torch's c10d rendezvous (``inner``), whose rank 0 serves each round's workers a new store at ``host``."""

    def __init__(self, inner: RendezvousHandler, host: str) -> None:
        self._inner = inner
        self._host = host
        self._workers: TCPStore | None = None

    def get_backend(self) -> str:
        return C10D

    @property
    def use_agent_store(self) -> bool:
        return True

    def next_rendezvous(self) -> RendezvousInfo:
        info = self._inner.next_rendezvous()
        self._workers = None
        if info.rank == 0:  # the round's store is new each round: no key of an earlier round is left in it
            self._workers = _serve_workers(self._host)
            info.store.set(_WORKER_STORE_KEY, f"{self._host}:{self._workers.port}")
        host, _, port = info.store.get(_WORKER_STORE_KEY).decode().rpartition(":")
        return RendezvousInfo(info.store, info.rank, info.world_size, RendezvousStoreInfo(host, int(port)))

    def num_nodes_waiting(self) -> int:
        return self._inner.num_nodes_waiting()

    def is_closed(self) -> bool:
        return self._inner.is_closed()

    def set_closed(self) -> None:
        self._inner.set_closed()

    def get_run_id(self) -> str:
        return self._inner.get_run_id()

    def shutdown(self) -> bool:
        return self._inner.shutdown()
