"""plait.utils.memory: find_executable_batch_size retries exactly as HF Accelerate does, on real OOM errors."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from plait.utils import clear_device_cache, find_executable_batch_size, release_memory, should_reduce_batch_size

#: HF Accelerate's sequence from 128: each failure multiplies by 0.9, rounded down (int(b * 0.9)).
ACCELERATE_FROM_128 = [128, 115, 103, 92, 82, 73, 65, 58, 52, 46, 41, 36, 32, 28, 25, 22, 19, 17, 15, 13, 11, 9, 8,
                       7, 6, 5, 4, 3, 2, 1]


def real_cpu_oom() -> None:
    """A real allocation failure of torch's CPU allocator (2**62 bytes can never be allocated)."""
    torch.empty(2**62, dtype=torch.uint8)


def test_the_cpu_allocator_s_real_failure_is_recognised():
    with pytest.raises(RuntimeError) as info:
        real_cpu_oom()
    assert should_reduce_batch_size(info.value)
    assert should_reduce_batch_size(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert should_reduce_batch_size(torch.OutOfMemoryError("any message: the type says it"))
    assert should_reduce_batch_size(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear"))
    assert not should_reduce_batch_size(RuntimeError("shape mismatch"))
    assert not should_reduce_batch_size(ValueError("CUDA out of memory."))  # not a RuntimeError
    assert not should_reduce_batch_size(RuntimeError("CUDA out of memory.", "two args"))


@pytest.mark.parametrize("error", ["cpu", "cuda"])
def test_lands_on_the_largest_size_that_fits_trying_accelerate_s_sizes(error: str):
    tried: list[int] = []
    fits = 40

    @find_executable_batch_size(starting_batch_size=128)
    def train(batch_size: int, scale: float, offset: float = 0.0) -> float:
        tried.append(batch_size)
        if batch_size > fits:
            if error == "cpu":
                real_cpu_oom()
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch_size} GiB")
        return float(torch.ones(batch_size).sum()) * scale + offset

    assert train(2.0, offset=1.0) == 36 * 2.0 + 1.0  # 36 is the largest of Accelerate's sizes under 41
    assert tried == ACCELERATE_FROM_128[: ACCELERATE_FROM_128.index(36) + 1]
    # The size that worked is kept: the next call starts there.
    tried.clear()
    assert train(1.0) == 36.0
    assert tried == [36]


def test_reaching_zero_is_a_clear_runtime_error_after_every_size():
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=128)
    def never_fits(batch_size: int) -> None:
        tried.append(batch_size)
        real_cpu_oom()

    with pytest.raises(RuntimeError, match=r"^No executable batch size found, reached zero\.$"):
        never_fits()
    assert tried == ACCELERATE_FROM_128


def test_other_errors_pass_through_at_once():
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=8)
    def broken(batch_size: int) -> None:
        tried.append(batch_size)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        broken()
    assert tried == [8]


def test_reduce_batch_size_fn_replaces_the_rule_also_through_the_decorator_factory():
    sizes = iter([10, 3])
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=16, reduce_batch_size_fn=lambda: next(sizes))
    def train(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return batch_size

    assert train() == 3 and tried == [16, 10, 3]

    @find_executable_batch_size(starting_batch_size=16, reduce_batch_size_fn=lambda: 16)
    def stuck(batch_size: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    with pytest.raises(ValueError, match="returned 16 after batch size 16 ran out of memory: expected a smaller"):
        stuck()


def test_the_plain_decorator_starts_at_128():
    tried: list[int] = []

    def train(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 100:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return batch_size

    assert find_executable_batch_size(train)() == 92
    assert tried == [128, 115, 103, 92]


def test_passing_the_batch_size_is_a_type_error_naming_the_right_call():
    @find_executable_batch_size(starting_batch_size=4)
    def train(batch_size: int, model: str) -> None:
        raise AssertionError("not called")

    with pytest.raises(TypeError, match=r"passes itself as the first argument: call train\(model='m'\)"):
        train(32, "m")
    with pytest.raises(TypeError, match=r"with its batch size \(32\), .* call train\(model='m'\)"):
        train("m", batch_size=32)


def test_bad_arguments_name_the_value():
    with pytest.raises(TypeError, match=r"starting_batch_size='8' is not valid"):
        find_executable_batch_size(lambda b: b, starting_batch_size="8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="starting_batch_size=0 is not valid"):
        find_executable_batch_size(lambda b: b, starting_batch_size=0)
    with pytest.raises(TypeError, match="takes no positional argument"):
        find_executable_batch_size(lambda: None)


def test_release_memory_drops_the_references_and_clear_device_cache_runs_here():
    tensor = torch.ones(1000)
    ref = weakref.ref(tensor)
    (tensor,) = release_memory(tensor)
    gc.collect()
    assert tensor is None and ref() is None
    assert release_memory() == []
    clear_device_cache()
    clear_device_cache(garbage_collection=True)


def test_the_sizes_tried_are_those_of_accelerate_s_own_decorator_where_it_is_installed():
    accelerate_memory = pytest.importorskip("accelerate.utils.memory")
    sequences = []
    for decorate in (find_executable_batch_size, accelerate_memory.find_executable_batch_size):
        tried: list[int] = []

        def never_fits(batch_size: int, tried: list[int] = tried) -> None:
            tried.append(batch_size)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

        with pytest.raises(RuntimeError, match=r"No executable batch size found, reached zero\."):
            decorate(never_fits, starting_batch_size=20)()
        sequences.append(tried)
    assert sequences[0] == sequences[1] == [20, 18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
