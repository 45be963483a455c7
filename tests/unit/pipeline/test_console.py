"""Help read through a pipe its reader closed early (`tpipe gateway --help | head -1`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.console import print_out
from tests.servers import ROOT


class _ReaderGone:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no descriptor")


def test_a_reader_gone_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", _ReaderGone())

    assert print_out("usage: ...") is False


@pytest.mark.parametrize(
    "command",
    [
        ["tpipe", "--help"],
        ["tpipe", "gateway", "--help"],
        ["tpipe", "enricher", "--help"],
        ["tpipe", "indexer", "--help"],
        ["gateway", "--help"],
    ],
)
def test_help_into_a_closed_pipe_exits_0_without_a_traceback(command: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went before the first byte: every write fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", *command],
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"},
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)

    assert (proc.returncode, proc.stderr) == (0, "")
