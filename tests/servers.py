"""Private NATS servers for tests that must own their broker (stop it, restart it, isolate it).

OpenSearch is shared (the test profile's, see `make test`); tests isolate themselves
there with unique index prefixes. NATS starts in milliseconds, so a test that needs
JetStream to itself gets its own server on a free port, with its store on disk so a
restart keeps the data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 15.0


def nats_server_binary() -> str:
    """The nats-server `make install` built; fails loudly when it is missing."""
    candidates = [
        os.environ.get("NATS_SERVER_BIN", ""),
        str(ROOT / ".local" / "bin" / "nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError("nats-server not found: run `make install` (or set NATS_SERVER_BIN)")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsProcess:
    """A nats-server with JetStream on loopback, stoppable and restartable on the same port."""

    def __init__(self, store_dir: Path, *, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.monitor_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = store_dir / "nats.log"

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server and waits until JetStream answers."""
        if self._proc is not None:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.store_dir / "jetstream"),
        ]
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self._log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server not ready in {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL) and waits for it to exit."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
