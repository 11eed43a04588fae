"""The Accelerator's checkpointer: atomic, verified ``save_state``/``load_state``, rotation, and exports."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plait.checkpoint.hook_handles import RemovableHandle
from plait.checkpoint.hook_handles import register as _register
from plait.checkpoint.hook_handles import unlisted as _unlisted
from plait.errors import CheckpointError
from plait.random import get_rng_states

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.checkpoint.writer import CheckpointWriter
    from plait.resume import ResumePoint

# The checkpoint modules (directory, writer, exports) are imported by the methods that use them, so
# that an Accelerator which never saves does not import them.

_KINDS = ("models", "optimizers", "schedulers", "dataloaders", "custom_objects")


def _uncompiled(model: Any) -> Any:
    """The module ``torch.compile`` wrapped (the backend's own wrapper), so that no ``_orig_mod.`` enters the
    files: backends save and load what they wrapped."""
    return getattr(model, "_orig_mod", model)


class Checkpointer:
    """``save_state``, ``load_state``, ``save_model``, ``save``, ``get_state_dict``, ``register_for_checkpointing``.

    What it saves is the accelerator's: its prepared objects (``accelerator.prepared``), the
    objects registered here, the precision's scaler, every RNG and the accumulation step. Models
    and optimizers are written by their backend (the ``plait_save_*`` / ``plait_load_*`` hooks).
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self._saved_models: list[int] = []
        #: Objects saved with the state besides the prepared ones (``register_for_checkpointing``).
        self.custom_objects: list[Any] = []
        #: ``register_save_state_pre_hook`` / ``register_load_state_pre_hook`` hooks, by handle id.
        self.save_hooks: dict[int, Callable[..., None]] = {}
        self.load_hooks: dict[int, Callable[..., None]] = {}

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Save and restore these objects (anything with ``state_dict``/``load_state_dict``) with the state."""
        bad = [f"item {i} ({type(o).__qualname__})" for i, o in enumerate(objects)
               if not (hasattr(o, "state_dict") and hasattr(o, "load_state_dict"))]
        if bad:
            raise ValueError(
                f"register_for_checkpointing got {', '.join(bad)} without state_dict() and load_state_dict(): "
                f"every object needs both methods to be saved and restored"
            )
        self.custom_objects.extend(objects)

    def register_save_state_pre_hook(self, hook: Callable[[list[Any], list[Any], str], None]) -> RemovableHandle:
        """Call ``hook(models, weights, output_dir)`` in ``save_state`` before the models are written.

        ``models`` are the prepared models, ``weights`` their state dicts on the main process (empty
        elsewhere); a model whose state dict the hook removes from ``weights`` is not written by
        ``save_state`` (the hook saved it its own way into ``output_dir``, which is part of the checkpoint).
        :return: a handle whose ``remove()`` unregisters the hook.
        """
        return _register(self.save_hooks, hook)

    def register_load_state_pre_hook(self, hook: Callable[[list[Any], str], None]) -> RemovableHandle:
        """Call ``hook(models, input_dir)`` in ``load_state`` before the models are loaded; a model the hook
        removes from ``models`` is not loaded by ``load_state``. :return: a handle whose ``remove()``
        unregisters it."""
        return _register(self.load_hooks, hook)

    def _run_save_hooks(self, output_dir: Path) -> list[int]:
        """Run the save pre-hooks; return the indices of the models ``save_state`` still writes."""
        accelerator = self.accelerator
        models = list(accelerator.prepared.models)
        if not self.save_hooks:
            return list(range(len(models)))
        weights = [self.get_state_dict(model, unwrap=False) for model in models]
        if not accelerator.process.is_main_process:
            weights = []
        originals = [id(w) for w in weights]
        for hook in list(self.save_hooks.values()):
            hook(models, weights, str(output_dir))
        kept = [i for i, key in enumerate(originals) if any(id(w) == key for w in weights)]
        return list(accelerator.collectives.broadcast_object_list([kept])[0])

    def get_state_dict(self, model: torch.nn.Module, unwrap: bool = True) -> dict[str, Any]:
        """The model's full state dict (gathered from shards by sharded backends), unwrapped key names."""
        return self.accelerator.hooks.get_state_dict(self.accelerator, _uncompiled(model), unwrap)

    def _counts(self) -> dict[str, int]:
        prepared = self.accelerator.prepared
        return {
            "models": len(prepared.models), "optimizers": len(prepared.optimizers),
            "schedulers": len(prepared.schedulers), "dataloaders": len(prepared.dataloaders),
            "custom_objects": len(self.custom_objects),
        }

    # ------------------------------------------------------------------ save_state
    def _checkpoint_folder(self) -> Path:
        project = self.accelerator.project_configuration
        if project.project_dir is None:
            raise ValueError(
                "automatic checkpoint naming needs a project directory: Accelerator(project_dir=...) or "
                "ProjectConfiguration(project_dir=...)"
            )
        return Path(project.project_dir) / "checkpoints"

    def save_state(self, /, output_dir: str | os.PathLike[str] | None = None, safe_serialization: bool = True,
                   overwrite: bool = False, **save_model_func_kwargs: Any) -> str:
        """Save models, optimizers, schedulers, the scaler, RNG states, dataloader positions and
        registered objects into ``output_dir``, which is complete or absent.

        With ``ProjectConfiguration(automatic_checkpoint_naming=True)`` the directory is
        ``<project_dir>/checkpoints/checkpoint_<iteration>`` and older ones beyond
        ``total_limit`` are removed after the new one is complete.

        :param overwrite: replace an existing checkpoint (refused otherwise).
        :return: the checkpoint directory.
        """
        accelerator = self.accelerator
        process, collectives, project = accelerator.process, accelerator.collectives, accelerator.project_configuration
        if not safe_serialization:
            warnings.warn("save_state always writes model weights as safetensors", stacklevel=2)
        automatic = project.automatic_checkpoint_naming
        if automatic:
            output_dir = self._checkpoint_folder() / f"checkpoint_{project.iteration}"
        elif output_dir is None:
            raise ValueError(
                "save_state() needs output_dir, or ProjectConfiguration(automatic_checkpoint_naming=True) "
                "with a project_dir"
            )
        final = Path(output_dir).absolute()
        # An empty directory (made by the user, as HF Accelerate's users do) is written into.
        empty = final.is_dir() and not any(final.iterdir())
        if final.exists() and not overwrite and not empty:
            raise CheckpointError(
                f"checkpoint directory {final} already exists and is not empty: pass overwrite=True to replace it, "
                f"or save elsewhere"
            )
        overwrite = overwrite or empty
        from plait.checkpoint import directory as checkpoint_directory
        from plait.checkpoint.writer import CheckpointWriter

        token = collectives.broadcast_object_list([uuid.uuid4().hex[:12]])[0]
        temporary = checkpoint_directory.temporary_path(final, token)
        if process.is_main_process:
            checkpoint_directory.remove_stale_temporaries(final)
            temporary.mkdir(parents=True)
        collectives.barrier()
        writer = CheckpointWriter(temporary)
        with checkpoint_directory.removed_on_failure(temporary, final, process.is_main_process):
            try:
                saved_models = self._run_save_hooks(temporary)
                self._write_state(writer, saved_models)
                files = writer.files()
            finally:
                writer.close()
        every_file: dict[str, Any] = {}
        for part in collectives.gather_objects(files):
            every_file.update(part)
        if process.is_main_process and self.save_hooks:
            every_file.update(_unlisted(temporary, every_file))  # what the save hooks wrote themselves
        if process.is_main_process:
            with checkpoint_directory.removed_on_failure(temporary, final, True):
                checkpoint_directory.write_manifest(temporary, every_file, self._manifest_metadata())
            checkpoint_directory.commit(temporary, final, overwrite)
        collectives.barrier()
        if automatic:
            project.iteration += 1
            if project.total_limit is not None and process.is_main_process:
                checkpoint_directory.rotate(final.parent, project.total_limit)
        accelerator.hooks.checkpoint_saved(accelerator, str(final))
        return str(final)

    def _write_state(self, writer: CheckpointWriter, saved_models: list[int]) -> None:
        from plait.checkpoint.default_state import class_name
        from plait.checkpoint.loading import state_file
        from plait.checkpoint.safe_values import encode_state

        accelerator = self.accelerator
        hooks, prepared = accelerator.hooks, accelerator.prepared
        self._saved_models = saved_models
        for i, model in enumerate(prepared.models):
            if i in saved_models:
                hooks.save_model(accelerator, _uncompiled(model), writer, i)
        for i, optimizer in enumerate(prepared.optimizers):
            hooks.save_optimizer(accelerator, optimizer, writer, i)
        if accelerator.process.is_main_process:
            # Each state is stored so that torch.load(weights_only=True) reads it back, or refused now.
            for i, scheduler in enumerate(prepared.schedulers):
                state = encode_state(scheduler.state_dict(), f"scheduler {i} ({class_name(scheduler)})")
                writer.torch_save(state_file("scheduler", i), state)
            for i, dataloader in enumerate(prepared.dataloaders):
                if hasattr(dataloader, "state_dict"):
                    state = encode_state(dataloader.state_dict(), f"dataloader {i} ({class_name(dataloader)})")
                    writer.torch_save(state_file("dataloader", i), state)
            for i, obj in enumerate(self.custom_objects):
                state = encode_state(obj.state_dict(), f"registered object {i} ({class_name(obj)})")
                writer.torch_save(f"custom_checkpoint_{i}.pt", state)
            scaler_state = accelerator.precision.state_dict()
            if scaler_state is not None:
                writer.torch_save("scaler.pt", scaler_state)
        writer.torch_save(f"random_states_{accelerator.process.process_index}.pt", get_rng_states())

    def _manifest_metadata(self) -> dict[str, Any]:
        from plait.checkpoint.default_state import class_name

        accelerator = self.accelerator
        prepared = accelerator.prepared
        return {
            "backend": accelerator.backend,
            "num_processes": accelerator.process.num_processes,
            "iteration": accelerator.project_configuration.iteration,
            "step": accelerator.gradient_state.step,
            **self._counts(),
            "saved_models": self._saved_models,
            # Checked when loading: a state is refused by another class than the one that saved it.
            "optimizer_classes": [class_name(o) for o in prepared.optimizers],
            "scheduler_classes": [class_name(s) for s in prepared.schedulers],
            "custom_object_classes": [class_name(o) for o in self.custom_objects],
        }

    # ------------------------------------------------------------------ load_state
    def resume(self) -> ResumePoint:
        """Load the newest complete automatic checkpoint if there is one (a first start just starts), make
        the prepared dataloaders continue after the batches it had consumed, and save-and-exit (code 143)
        on SIGTERM after the step in progress. :return: where to continue (``.epoch``); see :mod:`plait.resume`."""
        from plait.resume import resume

        return resume(self.accelerator)

    def load_state(self, /, input_dir: str | os.PathLike[str] | None = None, strict: bool = True,
                   **load_model_func_kwargs: Any) -> str:
        """Restore everything :meth:`save_state` saved, all or nothing.

        The manifest and every checksum are verified, and every state is read and checked against
        its target (counts, world size, classes, keys and shapes) before anything in memory changes:
        a checkpoint that does not fit is a :class:`~plait.errors.CheckpointError` and nothing was loaded.
        Only the files the manifest lists are read. With no ``input_dir``, the newest complete
        checkpoint of ``<project_dir>/checkpoints`` is loaded, and the checkpoint counter continues
        after it so that the next save does not collide.

        :return: the directory loaded.
        """
        from plait.checkpoint import directory as checkpoint_directory
        from plait.checkpoint import loading

        accelerator = self.accelerator
        prepared, hooks = accelerator.prepared, accelerator.hooks
        if input_dir is None:
            folder = self._checkpoint_folder()
            found = checkpoint_directory.automatic_checkpoints(folder)
            if not found:
                raise CheckpointError(f"no complete checkpoint in {folder} to load; nothing was loaded")
            input_dir = found[-1][1]
        # Every process checks everything before any loads; all refuse when one does (the others would wait in collectives).
        checkpoint, states, loaded = loading.agreed(accelerator, lambda: self._check_everything(input_dir, strict))
        for i, model in loaded:
            hooks.load_model(accelerator, model, checkpoint, i, strict)
        for i, optimizer in enumerate(prepared.optimizers):
            hooks.load_optimizer(accelerator, optimizer, checkpoint, i)
        loading.apply_states(accelerator, checkpoint, states, self.custom_objects)
        return str(checkpoint.directory)

    def _check_everything(self, input_dir: str | os.PathLike[str], strict: bool) -> tuple[Any, Any, list[tuple[int, Any]]]:
        """Verify the checkpoint and check every state against its target, changing nothing: the reader, the
        small states read and the models to load."""
        from plait.checkpoint import directory as checkpoint_directory
        from plait.checkpoint import loading

        accelerator = self.accelerator
        prepared, hooks = accelerator.prepared, accelerator.hooks
        checkpoint = checkpoint_directory.open_checkpoint(input_dir)
        for kind, prepared_count in self._counts().items():
            saved = checkpoint.metadata.get(kind, 0)
            if saved != prepared_count:
                raise CheckpointError(
                    f"checkpoint {checkpoint.directory} holds {saved} {kind} but this accelerator has {prepared_count} "
                    f"prepared or registered: prepare the same objects as the run that saved it; nothing was loaded"
                )
        states = loading.read_states(accelerator, checkpoint, self.custom_objects)
        models = list(prepared.models)
        for hook in list(self.load_hooks.values()):
            hook(models, str(checkpoint.directory))
        saved_models = loading.saved_models(checkpoint, len(models))
        loaded = [(i, _uncompiled(model)) for i, model in enumerate(prepared.models)
                  if any(m is model for m in models) and i in saved_models]
        for i, model in loaded:
            hooks.check_model(accelerator, model, checkpoint, i, strict)
        for i, optimizer in enumerate(prepared.optimizers):
            hooks.check_optimizer(accelerator, optimizer, checkpoint, i)
        return checkpoint, states, loaded

    # ------------------------------------------------------------------ exports
    def save_model(self, model: torch.nn.Module, save_directory: str | os.PathLike[str],
                   max_shard_size: int | str = "10GB", safe_serialization: bool = True) -> None:
        """Write the unwrapped model's weights as safetensors (sharded above ``max_shard_size``, with an index JSON)."""
        from plait.checkpoint.exports import save_model_files

        state = self.get_state_dict(model)
        if self.accelerator.process.is_main_process:
            save_model_files(state, Path(save_directory), max_shard_size, safe_serialization)
        self.accelerator.collectives.barrier()

    def save(self, obj: Any, f: str | os.PathLike[str], safe_serialization: bool = False) -> None:
        """Save ``obj`` once (main process), atomically: ``torch.save``, or safetensors for a dict of tensors."""
        if not self.accelerator.process.is_main_process:
            return
        from plait.atomic_files import atomic_write

        if safe_serialization:
            from safetensors.torch import save_file

            atomic_write(Path(f), lambda path: save_file(obj, str(path), metadata={"format": "pt"}))
        else:
            atomic_write(Path(f), lambda path: torch.save(obj, path))
