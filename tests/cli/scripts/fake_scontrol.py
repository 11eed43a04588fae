"""A stand-in for SLURM's ``scontrol``: appends its arguments to $FAKE_SCONTROL_LOG as one JSON list a line.

``show job ID`` prints a job record saying ``Requeue=$FAKE_SCONTROL_REQUEUE`` (default 1); ``requeue ID``
succeeds, or fails as scontrol does (exit code 1, a message on stderr) when $FAKE_SCONTROL_FAIL is set.
"""

import json
import os
import sys

with open(os.environ["FAKE_SCONTROL_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
if sys.argv[1:3] == ["show", "job"]:
    requeue = os.environ.get("FAKE_SCONTROL_REQUEUE", "1")
    print(f"JobId={sys.argv[3]} JobName=train\n   JobState=RUNNING Reason=None Dependency=(null)\n"
          f"   Requeue={requeue} Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0")
elif sys.argv[1:2] == ["requeue"] and os.environ.get("FAKE_SCONTROL_FAIL"):
    print(f"scontrol: error: Requested operation is presently disabled for job {sys.argv[2]}", file=sys.stderr)
    sys.exit(1)
