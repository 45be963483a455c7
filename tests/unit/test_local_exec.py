"""`scripts/local.py exec` stops the servers it started even when its reader has gone.

`make test | head` closes the pipe early; the status lines printed while stopping then
raised BrokenPipeError and left NATS and OpenSearch running on the test ports.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_local() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_script", ROOT / "scripts" / "local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


class ClosedPipe(io.StringIO):
    """A stdout whose reader has gone after `allowed` writes."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed

    def write(self, text: str) -> int:
        if self.allowed <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.allowed -= 1
        return super().write(text)


@pytest.mark.parametrize("allowed", [0, 1, 3])
def test_exec_stops_what_it_started_when_stdout_is_gone(
    monkeypatch: pytest.MonkeyPatch, allowed: int
) -> None:
    local = _load_local()
    profile = local.PROFILES["test"]
    procs = [object(), object()]
    stopped: list[object] = []

    def start_all(wanted: list[Any], started: list[Any]) -> None:
        started.extend(wanted)

    def stop(proc: object) -> None:
        print(f"stopping {id(proc)}")  # what the real stop prints
        stopped.append(proc)
        print("stopped")

    monkeypatch.setattr(local, "start_all", start_all)
    monkeypatch.setattr(local, "stop", stop)
    monkeypatch.setattr(local, "running_pid", lambda proc: None)
    monkeypatch.setattr(
        local.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, returncode=3)
    )
    monkeypatch.setattr(local.signal, "signal", lambda *a: None)
    monkeypatch.setattr(sys, "stdout", ClosedPipe(allowed))

    code = local.cmd_exec(profile, procs, ["pytest"])

    assert code == 3
    assert stopped == list(reversed(procs))
