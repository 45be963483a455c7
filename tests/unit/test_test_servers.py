"""The test helpers' nats-server: one that never gets ready is stopped, not left running
(the fixture that started it never reaches its teardown). A stand-in binary that ignores
its arguments and never answers plays the server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import servers


def test_a_server_that_never_gets_ready_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("NATS_SERVER_BIN", str(fake))
    monkeypatch.setattr(servers, "READY_TIMEOUT_S", 0.5)
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recording(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(servers.subprocess, "Popen", recording)
    nats = servers.NatsProcess(tmp_path / "store")

    try:
        with pytest.raises(RuntimeError, match="not ready"):
            nats.start()
        (process,) = started
        assert process.poll() is not None  # it has exited
        assert not nats.running
    finally:
        for process in started:
            process.kill()
            process.wait()
