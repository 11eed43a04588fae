"""Wrapping defaults: mixed-precision forward, accumulation-aware optimizers, schedulers and dataloaders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator


@hookimpl(trylast=True)
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module:
    # One process: nothing to wrap. (Mixed precision is applied by the accelerator's Precision on top.)
    return model


@hookimpl(trylast=True)
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> Any:
    from plait.optimizer import AcceleratedOptimizer

    return AcceleratedOptimizer(optimizer, accelerator.gradient_state, accelerator.precision)


@hookimpl(trylast=True)
def plait_wrap_scheduler(accelerator: Accelerator, scheduler: Any) -> Any:
    from plait.scheduler import AcceleratedScheduler

    inner = getattr(scheduler, "optimizer", None)
    optimizers = [opt for opt in accelerator._optimizers if opt is inner or getattr(opt, "optimizer", None) is inner]
    return AcceleratedScheduler(
        scheduler,
        optimizers,
        accelerator.gradient_state,
        step_with_optimizer=accelerator.step_scheduler_with_optimizer,
        split_batches=accelerator.split_batches,
        num_processes=accelerator.num_processes,
    )


@hookimpl(trylast=True)
def plait_wrap_dataloader(accelerator: Accelerator, dataloader: Any) -> Any:
    from plait.data import DataLoaderShard, ShardLayout

    place = accelerator._pm.hook.plait_batch_placer(accelerator=accelerator, dataloader=dataloader)
    layout = ShardLayout(
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        split_batches=accelerator.split_batches,
        even_batches=accelerator.even_batches,
        dispatch_batches=accelerator.config.dispatch_batches,
        share=accelerator.broadcast_object_list,
    )
    return DataLoaderShard(dataloader, accelerator.gradient_state, place, layout)


@hookimpl(trylast=True)
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module:
    return model
