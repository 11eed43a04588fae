"""Prepared dataloaders in one process: length, batches on the device, end-of-dataloader, shuffling
under set_seed, and skip_first_batches on prepared and plain loaders."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset

import plait
from plait import Accelerator

# --------------------------------------------------------------------------- dataloaders


def test_prepared_dataloader_length_batches_and_end_of_dataloader():
    accelerator = Accelerator()
    dataset = [{"x": torch.tensor([float(i)]), "y": i} for i in range(10)]
    loader = accelerator.prepare(DataLoader(dataset, batch_size=3))

    assert len(loader) == 4
    seen, ends = [], []
    for batch in loader:
        assert set(batch) == {"x", "y"}
        assert batch["x"].device == accelerator.device and batch["y"].device == accelerator.device
        seen.append(batch["y"].tolist())
        ends.append(accelerator.gradient_state.end_of_dataloader)

    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert ends == [False, False, False, True]
    assert accelerator.gradient_state.end_of_dataloader is False  # after the loop


def test_prepared_dataloader_with_drop_last():
    accelerator = Accelerator()
    loader = accelerator.prepare(DataLoader(list(range(10)), batch_size=3, drop_last=True))
    ends = []
    batches = []
    for batch in loader:
        batches.append(batch.tolist())
        ends.append(accelerator.gradient_state.end_of_dataloader)
    assert len(loader) == 3
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert ends == [False, False, True]


class Counting(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


def test_prepared_iterable_dataloader_marks_its_last_batch():
    accelerator = Accelerator()
    loader = accelerator.prepare(DataLoader(Counting(7), batch_size=3))

    observed = [(batch.tolist(), accelerator.gradient_state.end_of_dataloader) for batch in loader]

    assert observed == [([0, 1, 2], False), ([3, 4, 5], False), ([6], True)]


def test_shuffled_dataloader_order_is_reproducible_with_set_seed():
    def one_epoch():
        plait.set_seed(1234)
        accelerator = Accelerator()
        loader = accelerator.prepare(DataLoader(list(range(12)), batch_size=4, shuffle=True))
        return [b.tolist() for b in loader]

    first, second = one_epoch(), one_epoch()
    order = [i for batch in first for i in batch]
    assert first == second
    assert sorted(order) == list(range(12))
    assert order != list(range(12))  # really shuffled


def test_skip_first_batches_on_a_prepared_loader():
    accelerator = Accelerator()
    loader = accelerator.prepare(DataLoader(list(range(10)), batch_size=3))

    skipped = accelerator.skip_first_batches(loader, num_batches=2)

    assert len(skipped) == 2
    observed = [(b.tolist(), accelerator.gradient_state.end_of_dataloader) for b in skipped]
    assert observed == [([6, 7, 8], False), ([9], True)]
    # The loader itself still gives whole epochs.
    assert [b.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_skip_first_batches_on_a_shuffled_prepared_loader_continues_the_same_epoch():
    plait.set_seed(7)
    accelerator = Accelerator()
    loader = accelerator.prepare(DataLoader(list(range(12)), batch_size=3, shuffle=True))
    loader.set_epoch(0)
    full = [b.tolist() for b in loader]

    loader.set_epoch(0)
    resumed = [b.tolist() for b in accelerator.skip_first_batches(loader, 3)]

    assert resumed == full[3:]
    assert len(resumed) == 1


def test_skip_first_batches_on_a_plain_dataloader():
    accelerator = Accelerator()
    loader = DataLoader(list(range(10)), batch_size=3)

    skipped = accelerator.skip_first_batches(loader, 2)

    assert isinstance(skipped, DataLoader)
    assert len(skipped) == 2
    assert [b.tolist() for b in skipped] == [[6, 7, 8], [9]]
    assert [b.tolist() for b in skipped] == [[6, 7, 8], [9]]  # every pass skips
    assert [b.tolist() for b in accelerator.skip_first_batches(loader, 0)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert list(accelerator.skip_first_batches(loader, 5)) == []
    assert [b.tolist() for b in plait.skip_first_batches(loader, 3)] == [[9]]


def test_batches_on_a_cpu_only_machine_are_yielded_as_the_dataloader_made_them():
    # No accelerator exists here, so no tensor can be anywhere but the CPU: nothing runs per batch.
    assert not torch.cuda.is_available()
    accelerator = Accelerator(cpu=True)
    rows = [torch.full((2,), float(i)) for i in range(4)]
    loader = accelerator.prepare(DataLoader(rows, batch_size=2, collate_fn=lambda batch: batch))

    assert loader.place is None
    batches = list(loader)
    assert len(batches) == 2
    assert all(got is row for got, row in zip(batches[0] + batches[1], rows))


def test_cpu_batches_are_checked_and_moved_when_an_accelerator_exists(monkeypatch):
    # With an accelerator, a batch may hold tensors off the CPU: each batch is checked, and only
    # one that is not all on the CPU is moved (here a structure send_to_device rebuilds).
    from plait.data import placement

    monkeypatch.setattr(placement, "only_cpu_tensors", lambda: False)
    moved = []

    class Boxed:
        def __init__(self, tensor: torch.Tensor) -> None:
            self.tensor = tensor

        def to(self, device: torch.device, non_blocking: bool = False) -> Boxed:
            moved.append(device)
            return Boxed(self.tensor.to(device))

    accelerator = Accelerator(cpu=True)
    rows = [torch.ones(2), torch.zeros(2)]
    plain = accelerator.prepare(DataLoader(rows, batch_size=2))
    boxed = accelerator.prepare(DataLoader(rows, batch_size=2, collate_fn=lambda r: [Boxed(torch.stack(r))]))

    assert plain.place is not None
    assert torch.equal(next(iter(plain)), torch.stack(rows)) and moved == []
    batch = next(iter(boxed))
    assert moved == [torch.device("cpu")] and torch.equal(batch[0].tensor, torch.stack(rows))
