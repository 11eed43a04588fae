"""Each worker writes its pid to DIR/<rank>.pid, then sleeps until it is stopped."""

import os
import sys
import time
from pathlib import Path

Path(sys.argv[1], f"{os.environ['RANK']}.pid").write_text(str(os.getpid()))
time.sleep(600)
