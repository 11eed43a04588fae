"""Process helpers in one process: print, the on_* decorators, wait_for_everyone,
main_process_first, split_between_processes.

``PretendProcess`` places the one process at another rank of a pretend job, so that
what each helper does on a process other than the main one is observable too.
"""

from __future__ import annotations

import pytest
import torch

import plait
from plait import Accelerator
from plait.collectives import Collectives
from plait.process import ProcessEnvironment


class RecordingCollectives(Collectives):
    """One process's collectives, whose barriers are recorded in ``events``."""

    def __init__(self, environment, device, events: list[str]) -> None:
        super().__init__(environment, device)
        self.events = events

    def barrier(self) -> None:
        self.events.append("barrier")
        super().barrier()


class Recorder:
    """A plugin recording barriers (its collectives) and shutdowns (around the built-in one, which still runs)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    @plait.hookimpl
    def plait_collectives(self, environment, device):
        return RecordingCollectives(environment, device, self.events)

    @plait.hookimpl(wrapper=True)
    def plait_shutdown(self, accelerator):
        self.events.append("shutdown")
        return (yield)


class PretendProcess:
    """A plugin placing this (only) process at ``rank`` of ``world_size``: the decorators and
    ``split_between_processes`` then act as they do on that rank of a real job."""

    def __init__(self, rank: int, world_size: int, events: list[str] | None = None) -> None:
        self.environment = ProcessEnvironment(
            rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size
        )
        self.events = events if events is not None else []

    @plait.hookimpl
    def plait_process_environment(self, config):
        return self.environment

    @plait.hookimpl
    def plait_collectives(self, environment, device):
        # A pretend job has no process group: one process's collectives, barriers recorded.
        return RecordingCollectives(environment, device, self.events)


# --------------------------------------------------------------------------- processes


def test_print_only_on_the_local_main_process(capsys):
    Accelerator().print("loss", 0.5, sep="=")
    assert capsys.readouterr().out == "loss=0.5\n"

    Accelerator(plugins=[PretendProcess(rank=1, world_size=2)]).print("loss", 0.5)
    assert capsys.readouterr().out == ""


def test_process_decorators_run_on_the_single_process():
    accelerator = Accelerator()
    calls = []

    @accelerator.on_main_process
    def main(x):
        calls.append("main")
        return x + 1

    @accelerator.on_local_main_process
    def local_main(x):
        calls.append("local_main")
        return x + 2

    @accelerator.on_last_process
    def last(x):
        calls.append("last")
        return x + 3

    @accelerator.on_process(process_index=0)
    def process_zero(x):
        calls.append("process_zero")
        return x + 4

    @accelerator.on_local_process(local_process_index=0)
    def local_zero(x):
        calls.append("local_zero")
        return x + 5

    def plain(x, *, y):
        calls.append("plain")
        return x * y

    assert (main(1), local_main(1), last(1), process_zero(1), local_zero(1)) == (2, 3, 4, 5, 6)
    assert accelerator.on_process(plain, process_index=0)(3, y=4) == 12
    assert accelerator.on_main_process()(plain)(2, y=5) == 10
    assert calls == ["main", "local_main", "last", "process_zero", "local_zero", "plain", "plain"]
    assert main.__name__ == "main"


def test_process_decorators_on_another_rank_do_not_run():
    accelerator = Accelerator(plugins=[PretendProcess(rank=1, world_size=2)])
    calls = []

    @accelerator.on_main_process
    def main():
        calls.append("main")
        return "main"

    @accelerator.on_local_main_process
    def local_main():
        calls.append("local_main")
        return "local_main"

    @accelerator.on_last_process
    def last():
        calls.append("last")
        return "last"

    @accelerator.on_process(process_index=0)
    def process_zero():
        calls.append("process_zero")
        return "process_zero"

    @accelerator.on_process(process_index=1)
    def process_one():
        calls.append("process_one")
        return "process_one"

    results = [main(), local_main(), last(), process_zero(), process_one()]

    assert results == [None, None, "last", None, "process_one"]
    assert calls == ["last", "process_one"]


def test_on_process_needs_an_index():
    accelerator = Accelerator()
    with pytest.raises(ValueError, match="process_index"):
        accelerator.on_process(lambda: None)


def test_on_process_for_another_index_runs_when_not_distributed_like_hf():
    accelerator = Accelerator()

    @accelerator.on_process(process_index=1)
    def process_one():
        return "ran"

    assert process_one() == "ran"


def test_wait_for_everyone_and_main_process_first_on_the_main_process():
    events: list[str] = []
    accelerator = Accelerator(plugins=[Recorder(events)])

    assert accelerator.wait_for_everyone() is None
    assert events == ["barrier"]
    events.clear()
    with accelerator.main_process_first():
        events.append("body")
    with accelerator.local_main_process_first():
        events.append("local body")
    assert events == ["body", "barrier", "local body", "barrier"]


def test_main_process_first_on_another_rank_waits_before_the_body():
    events: list[str] = []
    accelerator = Accelerator(plugins=[PretendProcess(rank=1, world_size=2, events=events)])

    with accelerator.main_process_first():
        events.append("body")
    with accelerator.local_main_process_first():
        events.append("local body")

    assert events == ["barrier", "body", "barrier", "local body"]


def test_split_between_processes_in_one_process_gives_everything():
    accelerator = Accelerator()
    prompts = ["a", "b", "c"]
    with accelerator.split_between_processes(prompts) as share:
        assert share == ["a", "b", "c"]
    with accelerator.split_between_processes(torch.arange(5), apply_padding=True) as share:
        assert share.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "rank, world_size, padding, expected",
    [
        (0, 2, False, ["A", "B"]),
        (1, 2, False, ["C"]),
        (1, 2, True, ["C", "C"]),
        (1, 3, True, ["C", "D"]),  # padded with the input's last element
        (2, 3, False, ["D"]),
    ],
)
def test_split_between_processes_on_each_rank(rank, world_size, padding, expected):
    accelerator = Accelerator(plugins=[PretendProcess(rank=rank, world_size=world_size)])
    inputs = ["A", "B", "C"] if world_size == 2 else ["A", "B", "C", "D"]
    with accelerator.split_between_processes(inputs, apply_padding=padding) as share:
        assert share == expected
