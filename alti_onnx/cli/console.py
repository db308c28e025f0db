"""The ``alti-onnx`` console script. Ctrl-C is one line and exit code 130 from the first instant:
the handler is installed before anything heavy is imported, and it ends the process at once
(every file the commands write is safe to cut short: see ``corpus_output``)."""

from __future__ import annotations

import os
import signal
import sys

#: The exit code of a process ended by SIGINT, as shells report it (128 + 2).
INTERRUPTED = 130


def _interrupted(signum: int, frame: object) -> None:
    os.write(2, b"error: interrupted\n")
    os._exit(INTERRUPTED)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted)
    from .app import run

    sys.exit(run())
