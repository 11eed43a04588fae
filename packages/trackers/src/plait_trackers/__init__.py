"""plait trackers ``tensorboard``, ``wandb`` and ``comet_ml``, each an entry point of ``plait.trackers``.

``Accelerator(log_with="tensorboard" | ["wandb", "comet_ml"] | "all", project_dir=...)``
loads them on the main process only; ``init_trackers``, ``log``, ``get_tracker`` and
``end_training`` reach them through the tracker hooks. Importing this package
imports none of torch, tensorboard, wandb or comet_ml: each tracker imports its
library when its run starts.
"""

from __future__ import annotations

from plait.tracking import Histogram, Image
from plait_trackers.comet import CometMLTracker
from plait_trackers.tensorboard import TensorBoardTracker
from plait_trackers.wandb import WandBTracker

__version__ = "0.1.0"
__all__ = ["CometMLTracker", "Histogram", "Image", "TensorBoardTracker", "WandBTracker", "__version__"]
