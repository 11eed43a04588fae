"""The workers' lines as ``plait launch`` shows them when a job has several processes: each prefixed with its
global rank (``[rank1]: loss 0.25``).

torch's agent does the prefixing when it tees (``--tee``): the workers write to files that the agent's threads
read back, line by line, onto the launcher's stdout and stderr with the prefix template's text. So that those
lines come as they are printed, the workers' Python runs unbuffered. Without ``--log-dir`` the files go to a
temporary folder removed with the job (torch would leave its own behind in ``/tmp``). A worker's uncaught
exception is already prefixed by torch itself (``torch.distributed`` installs an excepthook that writes
``[rankN]: `` before each line), the same text as plait's: the launcher's streams drop the repetition.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from types import TracebackType
from typing import Any, TextIO

#: Each worker line's prefix (torch's template: ``${rank}`` is the global rank), as torch's excepthook writes it.
RANK_PREFIX = "[rank${rank}]: "
_TEMPLATE_VARIABLE = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"
_TWICE = re.compile(r"^(\[rank\d+\]: )\1", re.MULTILINE)


class _OnceStream:
    """The launcher's stdout or stderr, writing a line prefixed twice with the same rank (plait's prefix before
    torch's excepthook's) with the prefix once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(_TWICE.sub(r"\1", text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class WorkerOutput:
    """Around one run of torch's agent with torchrun's ``arguments``: when they tee, the rank prefix, unbuffered
    workers, a temporary log folder when none is given, and the launcher's streams that print each prefix once.

    ``with WorkerOutput(arguments) as arguments:`` gives the arguments to run (with ``--log-dir`` added when
    needed); :meth:`close` undoes everything, also before an ``os._exit``.
    """

    def __init__(self, arguments: list[str]) -> None:
        self.arguments = arguments
        self.tees = "--tee" in arguments
        self.logs: str | None = None
        self._streams: tuple[TextIO, TextIO] | None = None

    def __enter__(self) -> list[str]:
        if not self.tees:
            return self.arguments
        os.environ.setdefault(_TEMPLATE_VARIABLE, RANK_PREFIX)
        os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the workers inherit the launcher's environment
        arguments = self.arguments
        if "--log-dir" not in arguments:
            self.logs = tempfile.mkdtemp(prefix="plait-launch-logs-")
            arguments = ["--log-dir", self.logs, *arguments]
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _OnceStream(sys.stdout), _OnceStream(sys.stderr)
        return arguments

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None
        if self.logs is not None:
            shutil.rmtree(self.logs, ignore_errors=True)
            self.logs = None
