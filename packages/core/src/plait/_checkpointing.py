"""The checkpoint methods of ``Accelerator``: atomic, verified ``save_state``/``load_state``, and exports."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plait import checkpoint
from plait._process import ProcessInfo
from plait.errors import CheckpointError
from plait.random import get_rng_states, set_rng_states
from plait.serialization import atomic_write, save_model_files

if TYPE_CHECKING:
    from plait.project import ProjectConfiguration
    from plait.state import GradientState

_KINDS = ("models", "optimizers", "schedulers", "dataloaders", "custom_objects")


def _name(stem: str, index: int, suffix: str = "pt") -> str:
    return f"{stem}.{suffix}" if index == 0 else f"{stem}_{index}.{suffix}"


class CheckpointingMixin(ProcessInfo):
    """``save_state``, ``load_state``, ``save_model``, ``save``, ``get_state_dict``, ``register_for_checkpointing``."""

    _pm: Any
    _models: list[Any]
    _optimizers: list[Any]
    _schedulers: list[Any]
    _dataloaders: list[Any]
    _custom_objects: list[Any]
    gradient_state: GradientState
    project_configuration: ProjectConfiguration
    precision: Any
    backend: str

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Save and restore these objects (anything with ``state_dict``/``load_state_dict``) with the state."""
        bad = [type(o).__qualname__ for o in objects if not (hasattr(o, "state_dict") and hasattr(o, "load_state_dict"))]
        if bad:
            raise TypeError(
                f"register_for_checkpointing got {', '.join(bad)}: every object needs state_dict() and "
                f"load_state_dict() methods"
            )
        self._custom_objects.extend(objects)

    def get_state_dict(self, model: torch.nn.Module, unwrap: bool = True) -> dict[str, Any]:
        """The model's full state dict (gathered from shards by sharded backends), unwrapped key names."""
        return self._pm.hook.plait_get_state_dict(accelerator=self, model=model, unwrap=unwrap)

    # ------------------------------------------------------------------ save_state
    def _checkpoint_folder(self) -> Path:
        if self.project_configuration.project_dir is None:
            raise ValueError(
                "automatic checkpoint naming needs a project directory: Accelerator(project_dir=...) or "
                "ProjectConfiguration(project_dir=...)"
            )
        return Path(self.project_configuration.project_dir) / "checkpoints"

    def save_state(self, output_dir: str | os.PathLike[str] | None = None, safe_serialization: bool = True,
                   overwrite: bool = False, **save_model_func_kwargs: Any) -> str:
        """Save models, optimizers, schedulers, the scaler, RNG states, dataloader positions and
        registered objects into ``output_dir``, which is complete or absent.

        With ``ProjectConfiguration(automatic_checkpoint_naming=True)`` the directory is
        ``<project_dir>/checkpoints/checkpoint_<iteration>`` and older ones beyond
        ``total_limit`` are removed after the new one is complete.

        :param overwrite: replace an existing checkpoint (refused otherwise).
        :return: the checkpoint directory.
        """
        if not safe_serialization:
            warnings.warn("save_state always writes model weights as safetensors", stacklevel=2)
        automatic = self.project_configuration.automatic_checkpoint_naming
        if automatic:
            output_dir = self._checkpoint_folder() / f"checkpoint_{self.project_configuration.iteration}"
        elif output_dir is None:
            raise ValueError(
                "save_state() needs output_dir, or ProjectConfiguration(automatic_checkpoint_naming=True) "
                "with a project_dir"
            )
        final = Path(output_dir).absolute()
        if final.exists() and not overwrite:
            raise CheckpointError(
                f"checkpoint directory {final} already exists: pass overwrite=True to replace it, or save elsewhere"
            )
        token = self.broadcast_object_list([uuid.uuid4().hex[:12]])[0]  # type: ignore[attr-defined]
        temporary = checkpoint.temporary_path(final, token)
        if self.is_main_process:
            checkpoint.remove_stale_temporaries(final)
            temporary.mkdir(parents=True)
        self.wait_for_everyone()  # type: ignore[attr-defined]
        writer = checkpoint.CheckpointWriter(temporary)
        try:
            self._write_state(writer)
            files = writer.files()
        except BaseException:
            writer.close()
            if self.is_main_process:
                import shutil

                shutil.rmtree(temporary, ignore_errors=True)
            raise
        every_file: dict[str, Any] = {}
        for part in self._pm.hook.plait_gather_object(accelerator=self, obj=files):
            every_file.update(part)
        if self.is_main_process:
            checkpoint.write_manifest(temporary, every_file, self._manifest_metadata())
            checkpoint.commit(temporary, final, overwrite)
        self.wait_for_everyone()  # type: ignore[attr-defined]
        if automatic:
            self.project_configuration.iteration += 1
            limit = self.project_configuration.total_limit
            if limit is not None and self.is_main_process:
                checkpoint.rotate(final.parent, limit)
        self._pm.hook.plait_checkpoint_saved(accelerator=self, directory=str(final))
        return str(final)

    def _write_state(self, writer: checkpoint.CheckpointWriter) -> None:
        hook = self._pm.hook
        for i, model in enumerate(self._models):
            hook.plait_save_model(accelerator=self, model=model, writer=writer, index=i)
        for i, optimizer in enumerate(self._optimizers):
            hook.plait_save_optimizer(accelerator=self, optimizer=optimizer, writer=writer, index=i)
        if self.is_main_process:
            for i, scheduler in enumerate(self._schedulers):
                writer.torch_save(_name("scheduler", i), scheduler.state_dict())
            for i, dataloader in enumerate(self._dataloaders):
                if hasattr(dataloader, "state_dict"):
                    writer.torch_save(_name("dataloader", i), dataloader.state_dict())
            for i, obj in enumerate(self._custom_objects):
                writer.torch_save(f"custom_checkpoint_{i}.pt", obj.state_dict())
            scaler_state = self.precision.state_dict()
            if scaler_state is not None:
                writer.torch_save("scaler.pt", scaler_state)
        writer.torch_save(f"random_states_{self.process_index}.pt", get_rng_states())

    def _manifest_metadata(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "num_processes": self.num_processes,
            "iteration": self.project_configuration.iteration,
            "step": self.gradient_state.step,
            **{kind: len(getattr(self, f"_{kind}")) for kind in _KINDS},
        }

    # ------------------------------------------------------------------ load_state
    def load_state(self, input_dir: str | os.PathLike[str] | None = None, strict: bool = True,
                   **load_model_func_kwargs: Any) -> str:
        """Restore everything :meth:`save_state` saved, after verifying the manifest and every checksum.

        With no ``input_dir``, the newest complete checkpoint of
        ``<project_dir>/checkpoints`` is loaded, and the checkpoint counter continues
        after it so that the next save does not collide.

        :return: the directory loaded.
        """
        if input_dir is None:
            folder = self._checkpoint_folder()
            found = checkpoint.automatic_checkpoints(folder)
            if not found:
                raise CheckpointError(f"no complete checkpoint in {folder} to load; nothing was loaded")
            input_dir = found[-1][1]
        directory = Path(input_dir).absolute()
        manifest = checkpoint.verify(directory)
        metadata = manifest.get("metadata", {})
        for kind in _KINDS:
            saved, prepared = metadata.get(kind, 0), len(getattr(self, f"_{kind}"))
            if saved != prepared:
                raise CheckpointError(
                    f"checkpoint {directory} holds {saved} {kind} but this accelerator has {prepared} "
                    f"prepared or registered: prepare the same objects as the run that saved it; nothing was loaded"
                )
        # Read every small state first: a failure here leaves everything untouched.
        load = self._load_file
        schedulers = [load(directory, _name("scheduler", i)) for i in range(len(self._schedulers))]
        dataloaders = [
            load(directory, _name("dataloader", i)) if hasattr(d, "load_state_dict") else None
            for i, d in enumerate(self._dataloaders)
        ]
        customs = [load(directory, f"custom_checkpoint_{i}.pt") for i in range(len(self._custom_objects))]
        scaler = load(directory, "scaler.pt") if (directory / "scaler.pt").is_file() else None
        rng_file = f"random_states_{self.process_index}.pt"
        rng = load(directory, rng_file) if (directory / rng_file).is_file() else None

        hook = self._pm.hook
        for i, model in enumerate(self._models):
            hook.plait_load_model(accelerator=self, model=model, directory=str(directory), index=i, strict=strict)
        for i, optimizer in enumerate(self._optimizers):
            hook.plait_load_optimizer(accelerator=self, optimizer=optimizer, directory=str(directory), index=i)
        for scheduler, state in zip(self._schedulers, schedulers):
            scheduler.load_state_dict(state)
        for dataloader, state in zip(self._dataloaders, dataloaders):
            if state is not None:
                dataloader.load_state_dict(state)
        for obj, state in zip(self._custom_objects, customs):
            obj.load_state_dict(state)
        if scaler is not None:
            self.precision.load_state_dict(scaler)
        self.gradient_state.step = int(metadata.get("step", 0))
        if self.project_configuration.automatic_checkpoint_naming:
            self.project_configuration.iteration = int(metadata.get("iteration", 0)) + 1
        if rng is not None:
            set_rng_states(rng)
        else:
            warnings.warn(
                f"checkpoint {directory} has no RNG state for process {self.process_index} "
                f"(saved by {metadata.get('num_processes')} processes): random streams start afresh",
                stacklevel=2,
            )
        return str(directory)

    @staticmethod
    def _load_file(directory: Path, name: str) -> Any:
        path = directory / name
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {directory} has no file {name!r}; nothing was loaded") from None
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint file {path} could not be loaded safely ({type(exc).__name__}: {exc}); nothing was loaded"
            ) from None

    # ------------------------------------------------------------------ exports
    def save_model(self, model: torch.nn.Module, save_directory: str | os.PathLike[str],
                   max_shard_size: int | str = "10GB", safe_serialization: bool = True) -> None:
        """Write the unwrapped model's weights as safetensors (sharded above ``max_shard_size``, with an index JSON)."""
        state = self.get_state_dict(model)
        if self.is_main_process:
            save_model_files(state, Path(save_directory), max_shard_size, safe_serialization)
        self.wait_for_everyone()  # type: ignore[attr-defined]

    def save(self, obj: Any, f: str | os.PathLike[str], safe_serialization: bool = False) -> None:
        """Save ``obj`` once (main process), atomically: ``torch.save``, or safetensors for a dict of tensors."""
        if not self.is_main_process:
            return
        if safe_serialization:
            from safetensors.torch import save_file

            atomic_write(Path(f), lambda path: save_file(obj, str(path), metadata={"format": "pt"}))
        else:
            atomic_write(Path(f), lambda path: torch.save(obj, path))
