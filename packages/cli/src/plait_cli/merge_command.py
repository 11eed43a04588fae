"""``plait merge-weights``: HF Accelerate's ``accelerate merge-weights``, merging a sharded FSDP checkpoint's
weights into one file (:func:`plait.utils.merge_fsdp_weights`)."""

from __future__ import annotations

import click


@click.command(name="merge-weights")
@click.argument("checkpoint_directory", type=click.Path(exists=True, file_okay=False))
@click.argument("output_path", type=click.Path(file_okay=False))
@click.option("--unsafe_serialization", "--unsafe-serialization", "unsafe_serialization", is_flag=True,
              help="Write pytorch_model.bin with torch.save instead of model.safetensors (not recommended).")
@click.option("--remove_checkpoint_dir", "--remove-checkpoint-dir", "remove_checkpoint_dir", is_flag=True,
              help="Remove CHECKPOINT_DIRECTORY after merging.")
def merge_weights(checkpoint_directory: str, output_path: str, unsafe_serialization: bool,
                  remove_checkpoint_dir: bool) -> None:
    """Merge the weights of a sharded FSDP checkpoint (SHARDED_STATE_DICT) into one file in OUTPUT_PATH:
    model.safetensors, or pytorch_model.bin with --unsafe_serialization.

    CHECKPOINT_DIRECTORY is a plait checkpoint (verified first), the folder of HF Accelerate's save_state,
    or a torch.distributed.checkpoint folder (pytorch_model_fsdp_0). The whole model is read into CPU memory.
    """
    from plait.errors import PlaitError
    from plait.utils.other import merge_fsdp_weights

    try:
        written = merge_fsdp_weights(checkpoint_directory, output_path, safe_serialization=not unsafe_serialization,
                                     remove_checkpoint_dir=remove_checkpoint_dir)
    except (PlaitError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {written}")
