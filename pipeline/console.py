"""Standard output of a command whose reader may go first (`tpipe gateway --help | head -1`)."""

from __future__ import annotations

import io
import os
import sys


def print_out(text: str) -> bool:
    """Prints `text` and a newline on stdout, flushed; False when the reader had gone.

    A pipe closed early is not an error: the rest of the text is dropped, and stdout is
    pointed at /dev/null, so the interpreter's own flush at exit has nowhere to fail either.
    """
    try:
        sys.stdout.write(f"{text}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return False
    return True


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no descriptor (a test's capture)
        pass
    finally:
        os.close(devnull)
