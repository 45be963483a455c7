"""A private single-node OpenSearch a test may stop and start (the shared one must stay up).

It runs from the same OpenSearch install as the shared node (OPENSEARCH_HOME, else the
one `make install` put under .local/cache), with its own config copy, data and ports.
As root it runs as the service user `telemetry-os`, as OpenSearch refuses root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.servers import ROOT, free_port

VERSION = "2.19.6"
SERVICE_USER = "telemetry-os"
HEAP_OPTS = "-Xms256m -Xmx512m"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def opensearch_home() -> Path:
    candidates = [
        os.environ.get("OPENSEARCH_HOME", ""),
        str(ROOT / ".local" / "cache" / f"opensearch-{VERSION}"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "opensearch").is_file():
            return Path(candidate)
    raise RuntimeError("OpenSearch install not found: run `make install` (or set OPENSEARCH_HOME)")


def java_home() -> Path:
    homes = [os.environ.get("JAVA_HOME", "")]
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        homes.extend(str(p) for p in sorted(jvm.iterdir()) if "17" in p.name or "21" in p.name)
    for home in homes:
        if home and (Path(home) / "bin" / "java").is_file():
            return Path(home)
    raise RuntimeError("no Java 17/21 found for OpenSearch (set JAVA_HOME)")


class OpenSearchNode:
    """start() / stop() / start() again on the same ports and data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.transport_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="tpipe-os-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}  # as root: the service user's uid, gid, no groups
        home = opensearch_home()
        config = self.base / "config"
        shutil.copytree(home / "config", config)
        for stale in ("opensearch.keystore",):
            (config / stale).unlink(missing_ok=True)
        logs, data, tmp = self.base / "logs", self.base / "data", self.base / "tmp"
        for folder in (logs, data, tmp):
            folder.mkdir()
        options = (home / "config" / "jvm.options").read_text()
        options = re.sub(r"(?<=[=:])logs/", f"{logs}/", options)
        options = options.replace("HeapDumpPath=data", f"HeapDumpPath={data}")
        (config / "jvm.options").write_text(options)
        env = {
            "JAVA_HOME": str(java_home()),
            "OPENSEARCH_JAVA_OPTS": HEAP_OPTS,
            "OPENSEARCH_PATH_CONF": str(config),
            "OPENSEARCH_TMPDIR": str(tmp),
        }
        settings = {
            "discovery.type": "single-node",
            "network.host": "127.0.0.1",
            "http.port": str(self.port),
            "transport.port": str(self.transport_port),
            "path.data": str(data),
            "path.logs": str(logs),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
        }
        argv = [str(home / "bin" / "opensearch"), *(f"-E{k}={v}" for k, v in settings.items())]
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chmod(self.base, 0o755)
            for parent, dirs, files in os.walk(self.base):
                os.chown(parent, entry.pw_uid, entry.pw_gid)
                for name in files:
                    os.chown(os.path.join(parent, name), entry.pw_uid, entry.pw_gid)
                del dirs  # walked anyway
            # The JVM itself becomes the user: under `runuser` it would be killed 2 s after
            # SIGTERM, shut down or not.
            self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env |= {"HOME": entry.pw_dir, "USER": SERVICE_USER, "LOGNAME": SERVICE_USER}
        self._argv = argv
        self._env = {**os.environ, **env}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the node and waits for a yellow-or-better cluster."""
        if self._proc is not None:
            return
        log = (self.base / "stdout.log").open("ab")
        self._proc = subprocess.Popen(
            self._argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
            **self._as_user,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        health = f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.base / "stdout.log").read_text()[-3000:]
                self._proc = None
                raise RuntimeError(f"opensearch exited during start:\n{tail}")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"opensearch not ready in {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stops the node (SIGTERM to its process group, then SIGKILL) and waits."""
        if self._proc is None:
            return
        group = os.getpgid(self._proc.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self._proc.wait()
        # Make sure nothing of the group lingers.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        self._proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
