"""Writes a marker file (the first argument) naming the backend it was told to run: proof that it ran."""

import os
import sys
from pathlib import Path

Path(sys.argv[1]).write_text(os.environ.get("PLAIT_BACKEND", "?") + " " + os.environ.get("PLAIT_TOY", ""))
