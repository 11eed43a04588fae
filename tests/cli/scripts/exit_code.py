"""Rank 1 exits with the code given as the first argument; rank 0 waits for it (and is then stopped)."""

import os
import sys
import time

if os.environ.get("RANK") == "1":
    sys.exit(int(sys.argv[1]))
time.sleep(60)
