"""HF Accelerate's configuration objects, as plain dataclasses with its names, fields and defaults.

Core never imports a backend for them: :mod:`plait.config.objects` maps each onto plait's
config keys and backend sections (``fsdp_plugin`` onto the ``fsdp:`` section, ``deepspeed_plugin``
onto ``zero:``), and the backend's own options check the values. A field a backend cannot
honour is refused there, naming the field and the backend.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from plait.process.environment import DistributedType
from plait.project import ProjectConfiguration

__all__ = [
    "AutocastKwargs",
    "ComputeEnvironment",
    "DDPCommunicationHookType",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "DummyOptim",
    "DummyScheduler",
    "DynamoBackend",
    "FullyShardedDataParallelPlugin",
    "GradScalerKwargs",
    "GradientAccumulationPlugin",
    "InitProcessGroupKwargs",
    "KwargsHandler",
    "LoggerType",
    "PrecisionType",
    "ProfileKwargs",
    "ProjectConfiguration",
    "RNGType",
    "SageMakerDistributedType",
    "TorchDynamoPlugin",
    "get_active_deepspeed_plugin",
]


class KwargsHandler:
    """A dataclass whose :meth:`to_kwargs` gives the fields set away from their defaults (Accelerate's)."""

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def to_kwargs(self) -> dict[str, Any]:
        """The fields whose value differs from the class's default."""
        default = type(self)().to_dict()
        return {key: value for key, value in self.to_dict().items() if default.get(key) != value}


class _ContainsMeta(enum.EnumMeta):
    """``"fp16" in PrecisionType`` is true for a member's value."""

    def __contains__(cls, item: object) -> bool:
        try:
            cls(item)
        except ValueError:
            return False
        return True


class BaseEnum(enum.Enum, metaclass=_ContainsMeta):
    """An enum whose ``str()`` is its value, with :meth:`list` of the values."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def list(cls) -> list[str]:
        return [str(member) for member in cls]


class DDPCommunicationHookType(BaseEnum):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"
    POWER_SGD = "power_sgd"
    BATCHED_POWER_SGD = "batched_power_sgd"


class SageMakerDistributedType(str, enum.Enum):
    """Accelerate's SageMaker kinds of run: they exist for its scripts, plait never produces them."""

    NO = "NO"
    DATA_PARALLEL = "DATA_PARALLEL"
    MODEL_PARALLEL = "MODEL_PARALLEL"


class ComputeEnvironment(str, enum.Enum):
    LOCAL_MACHINE = "LOCAL_MACHINE"
    AMAZON_SAGEMAKER = "AMAZON_SAGEMAKER"


class DynamoBackend(str, BaseEnum):
    """``torch.compile`` backends by Accelerate's names (``INDUCTOR`` is ``torch.compile(backend="inductor")``)."""

    NO = "NO"
    EAGER = "EAGER"
    AOT_EAGER = "AOT_EAGER"
    INDUCTOR = "INDUCTOR"
    AOT_TS_NVFUSER = "AOT_TS_NVFUSER"
    NVPRIMS_NVFUSER = "NVPRIMS_NVFUSER"
    CUDAGRAPHS = "CUDAGRAPHS"
    OFI = "OFI"
    FX2TRT = "FX2TRT"
    ONNXRT = "ONNXRT"
    TENSORRT = "TENSORRT"
    AOT_TORCHXLA_TRACE_ONCE = "AOT_TORCHXLA_TRACE_ONCE"
    TORCHXLA_TRACE_ONCE = "TORCHXLA_TRACE_ONCE"
    TVM = "TVM"
    HPU_BACKEND = "HPU_BACKEND"
    NEURON = "NEURON"


class LoggerType(BaseEnum):
    ALL = "all"
    AIM = "aim"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    TRACKIO = "trackio"
    COMETML = "comet_ml"
    MLFLOW = "mlflow"
    CLEARML = "clearml"
    DVCLIVE = "dvclive"
    SWANLAB = "swanlab"


class PrecisionType(str, BaseEnum):
    NO = "no"
    FP8 = "fp8"
    FP16 = "fp16"
    BF16 = "bf16"


class RNGType(BaseEnum):
    TORCH = "torch"
    CUDA = "cuda"
    MLU = "mlu"
    SDAA = "sdaa"
    MUSA = "musa"
    NPU = "npu"
    XLA = "xla"
    XPU = "xpu"
    HPU = "hpu"
    NEURON = "neuron"
    GENERATOR = "generator"


# --------------------------------------------------------------------------- kwargs handlers
@dataclass
class AutocastKwargs(KwargsHandler):
    """Arguments of ``torch.autocast`` under mixed precision."""

    enabled: bool = True
    cache_enabled: bool | None = None


@dataclass
class DistributedDataParallelKwargs(KwargsHandler):
    """Arguments of ``DistributedDataParallel``, and a communication hook (the ``ddp:`` section)."""

    dim: int = 0
    broadcast_buffers: bool = True
    bucket_cap_mb: int = 25
    find_unused_parameters: bool = False
    check_reduction: bool = False
    gradient_as_bucket_view: bool = False
    static_graph: bool = False
    comm_hook: DDPCommunicationHookType = DDPCommunicationHookType.NO
    comm_wrapper: DDPCommunicationHookType = DDPCommunicationHookType.NO
    comm_state_option: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, ignore_keys: tuple[str, ...] = ("comm_hook", "comm_wrapper", "comm_state_option")) -> dict[str, Any]:
        return {key: value for key, value in super().to_dict().items() if key not in ignore_keys}


@dataclass
class GradScalerKwargs(KwargsHandler):
    """Arguments of the fp16 ``torch.amp.GradScaler``."""

    init_scale: float = 65536.0
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    enabled: bool = True


@dataclass
class InitProcessGroupKwargs(KwargsHandler):
    """Arguments of ``torch.distributed.init_process_group``: the backend and how long a collective waits.

    ``timeout=None`` is Accelerate's default: 30 minutes (10 for nccl).
    """

    backend: str | None = "nccl"
    init_method: str | None = None
    timeout: timedelta | None = None

    def __post_init__(self) -> None:
        if self.timeout is None:
            self.timeout = timedelta(seconds=600 if self.backend == "nccl" else 1800)
        elif not isinstance(self.timeout, timedelta):
            raise TypeError(
                f"InitProcessGroupKwargs(timeout={self.timeout!r}): expected a datetime.timedelta, "
                f"e.g. timedelta(seconds=60)"
            )


@dataclass
class ProfileKwargs(KwargsHandler):
    """Arguments of ``torch.profiler.profile`` for ``accelerator.profile()``; ``output_trace_dir`` gets one
    Chrome trace per process."""

    activities: list[str] | None = None
    schedule_option: dict[str, int] | None = None
    on_trace_ready: Any = None
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    with_flops: bool = False
    with_modules: bool = False
    output_trace_dir: str | None = None

    def build(self) -> Any:
        """The ``torch.profiler.profile`` these options describe."""
        import torch.profiler

        names = {"cpu": torch.profiler.ProfilerActivity.CPU, "cuda": torch.profiler.ProfilerActivity.CUDA}
        activities = None
        if self.activities is not None:
            unknown = [a for a in self.activities if a not in names]
            if unknown:
                raise ValueError(
                    f"ProfileKwargs(activities={self.activities!r}): {', '.join(map(repr, unknown))} is not an "
                    f"activity plait can profile: expected some of 'cpu', 'cuda'"
                )
            activities = [names[a] for a in self.activities]
        schedule = None
        if self.schedule_option is not None:
            schedule = torch.profiler.schedule(**self.schedule_option)
        return torch.profiler.profile(
            activities=activities, schedule=schedule, on_trace_ready=self.on_trace_ready,
            record_shapes=self.record_shapes, profile_memory=self.profile_memory, with_stack=self.with_stack,
            with_flops=self.with_flops, with_modules=self.with_modules,
        )


@dataclass
class GradientAccumulationPlugin(KwargsHandler):
    """How gradients accumulate (Accelerate's): ``num_steps`` micro-steps per optimizer step.

    :param adjust_scheduler: while accumulating, count scheduler steps the optimizer skipped.
    :param sync_with_dataloader: the last batch of the dataloader always synchronises and steps.
    :param sync_each_batch: synchronise gradients across processes on every micro-step (less memory
        for the unsynchronised gradients, more communication); the optimizer still steps every
        ``num_steps``.
    """

    num_steps: int | None = None
    adjust_scheduler: bool = True
    sync_with_dataloader: bool = True
    sync_each_batch: bool = False


@dataclass
class DataLoaderConfiguration:
    """How prepared dataloaders share batches (Accelerate's; each field as the old ``Accelerator`` argument).

    ``dispatch_batches=None`` and ``data_seed=None`` leave the config's value. plait's prepared
    dataloaders always draw a seeded order that every process shares and a checkpoint resumes;
    ``use_seedable_sampler`` is accepted for that reason, ``data_seed`` fixes the seed.
    ``use_stateful_dataloader=True`` needs no torchdata: ``load_state`` makes a prepared dataloader's next
    pass resume where the saved one stopped, as a ``StatefulDataLoader`` does (without it, call
    ``skip_first_batches``, Accelerate's protocol).
    """

    split_batches: bool = False
    dispatch_batches: bool | None = None
    even_batches: bool = True
    use_seedable_sampler: bool = False
    data_seed: int | None = None
    non_blocking: bool = False
    use_stateful_dataloader: bool = False


@dataclass
class TorchDynamoPlugin(KwargsHandler):
    """``torch.compile`` of each prepared model, after the backend wrapped it."""

    backend: DynamoBackend | str | None = None
    mode: str | None = None
    fullgraph: bool | None = None
    dynamic: bool | None = None
    options: Any = None
    disable: bool = False
    use_regional_compilation: bool | None = None

    def __post_init__(self) -> None:
        raw = "no" if self.backend is None else self.backend
        name = str(getattr(raw, "value", raw)).upper()
        if name not in DynamoBackend:
            raise ValueError(
                f"TorchDynamoPlugin(backend={raw!r}) is not a dynamo backend: expected one of "
                f"{', '.join(b.value.lower() for b in DynamoBackend)}"
            )
        self.backend = DynamoBackend(name)
        if self.mode is None:
            self.mode = "default"
        if self.fullgraph is None:
            self.fullgraph = False
        if self.use_regional_compilation is None:
            self.use_regional_compilation = False

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.__dict__)
        out["backend"] = str(getattr(self.backend, "value", self.backend)).lower()
        return out

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``torch.compile`` (the backend always named)."""
        kwargs = super().to_kwargs()
        kwargs.pop("use_regional_compilation", None)
        kwargs["backend"] = self.to_dict()["backend"]
        return kwargs


from plait.utils.backend_plugins import (  # noqa: E402  (Accelerate has them in this module too)
    DeepSpeedPlugin,
    DummyOptim,
    DummyScheduler,
    FullyShardedDataParallelPlugin,
    get_active_deepspeed_plugin,
)

