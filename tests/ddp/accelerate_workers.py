"""Workers of test_accelerate_objects.py: HF Accelerate's objects and methods on 2 real processes (gloo).

Each worker batches its checks into one launch and returns plain data the test compares.
"""

from __future__ import annotations

from typing import Any

import torch
from ddp_workers import Branchy, make_data, make_model, params
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def objects_worker() -> dict[str, Any]:
    from plait import Accelerator
    from plait.utils import (
        DataLoaderConfiguration,
        DDPCommunicationHookType,
        DistributedDataParallelKwargs,
        GradientAccumulationPlugin,
    )

    out: dict[str, Any] = {}
    # DataLoaderConfiguration(split_batches=True): each rank gets half of every batch of 4.
    loader = DataLoader(list(range(16)), batch_size=4)
    split = Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True)).prepare(loader)
    out["split"] = [b.tolist() for b in split]
    out["split_old"] = [b.tolist() for b in Accelerator(split_batches=True).prepare(loader)]
    uneven = Accelerator(dataloader_config=DataLoaderConfiguration(even_batches=False))
    out["uneven"] = [b.tolist() for b in uneven.prepare(DataLoader(list(range(10)), batch_size=3))]
    # DistributedDataParallelKwargs reaches the DDP module; with the unused branch, training works.
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True,
                                                                            bucket_cap_mb=5)])
    model = accelerator.prepare(Branchy())
    out["find_unused"] = bool(model.find_unused_parameters)
    optimizer = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = make_data(8)
    accelerator.backward(nn.functional.mse_loss(model(x[:4]), y[:4]))
    optimizer.step()
    out["branchy_used"] = params(accelerator.unwrap_model(model))["used.0.weight"]
    # PowerSGD through DDPCommunicationHookType: the model trains and stays identical across ranks.
    hook = DistributedDataParallelKwargs(comm_hook=DDPCommunicationHookType.POWER_SGD,
                                         comm_state_option={"matrix_approximation_rank": 1, "start_powerSGD_iter": 2})
    accelerator = Accelerator(kwargs_handlers=[hook])
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = accelerator.prepare(model, optimizer)
    losses = []
    for step in range(6):
        rows = slice(8 * step + 4 * accelerator.process_index, 8 * step + 4 * accelerator.process_index + 4)
        x, y = make_data(48)
        loss = nn.functional.mse_loss(model(x[rows]), y[rows])
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(accelerator.reduce(loss.detach(), "mean")))
    out["powersgd_losses"] = losses
    out["powersgd_params"] = params(accelerator.unwrap_model(model))
    # sync_each_batch: gradients are all-reduced on the micro-step that does not step.
    for each in (False, True):
        plugin = GradientAccumulationPlugin(num_steps=2, sync_each_batch=each)
        accelerator = Accelerator(gradient_accumulation_plugin=plugin)
        model = accelerator.prepare(make_model())
        x, y = make_data(8)
        rows = slice(4 * accelerator.process_index, 4 * accelerator.process_index + 4)
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(x[rows]), y[rows]))
        out[f"grad_after_micro_step_{each}"] = next(model.parameters()).grad.clone()
    # trigger_sync_in_backward inside no_sync: the gradients are all-reduced anyway.
    accelerator = Accelerator()
    model = accelerator.prepare(make_model())
    x, y = make_data(8)
    rows = slice(4 * accelerator.process_index, 4 * accelerator.process_index + 4)
    with accelerator.no_sync(model), accelerator.trigger_sync_in_backward(model):
        accelerator.backward(nn.functional.mse_loss(model(x[rows]), y[rows]))
    out["grad_triggered"] = next(model.parameters()).grad.clone()
    # set_trigger on rank 1 is seen by rank 0, once.
    accelerator = Accelerator()
    seen = [accelerator.check_trigger()]
    if accelerator.process_index == 1:
        accelerator.set_trigger()
    seen += [accelerator.check_trigger(), accelerator.check_trigger()]
    out["triggers"] = seen
    return out


def join_worker() -> dict[str, Any]:
    """Uneven inputs: rank 0 has 3 batches, rank 1 has 5; join_uneven_inputs lets both finish."""
    from plait import Accelerator

    accelerator = Accelerator()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    batches = 3 if accelerator.process_index == 0 else 5
    x, y = make_data(40)
    with accelerator.join_uneven_inputs([model], even_batches=False):  # even_batches=False enables Join
        for step in range(batches):
            rows = slice(8 * step + 4 * accelerator.process_index, 8 * step + 4 * accelerator.process_index + 4)
            accelerator.backward(nn.functional.mse_loss(model(x[rows]), y[rows]))
            optimizer.step()
            optimizer.zero_grad()
    # A prepared loader of 14 samples in global batches of 6: uneven only while even_batches=False.
    data = TensorDataset(torch.arange(14.0), torch.arange(14.0).unsqueeze(1).repeat(1, 4))
    loader = accelerator.prepare(DataLoader(data, batch_size=3))
    seen = []
    with accelerator.join_uneven_inputs([model], even_batches=False):
        for index, features in loader:
            seen.append(index.tolist())
            accelerator.backward(model(features / 14).pow(2).mean())
            optimizer.step()
            optimizer.zero_grad()
    after = [b[0].tolist() for b in loader]
    return {"params": params(accelerator.unwrap_model(model)), "batches": seen, "after": after}
