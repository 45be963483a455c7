"""Private NATS servers for tests that must own their broker (stop it, restart it, isolate it).

OpenSearch is shared (the test profile's, see `make test`); tests isolate themselves
there with unique index prefixes. NATS starts in milliseconds, so a test that needs
JetStream to itself gets its own server on a free port, with its store on disk so a
restart keeps the data.

A fake QueryService runs in-process, on a loopback port of its own (`serving_query`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from telemetry.v1 import query_service_pb2_grpc

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


# Every port handed out in this run: nothing holds one until its server binds it, seconds
# later maybe, and the kernel may offer it again meanwhile (two servers on one port).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now, and not handed out before in this run."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@contextlib.asynccontextmanager
async def serving_query(
    servicer: query_service_pb2_grpc.QueryServiceServicer,
) -> AsyncIterator[int]:
    """`servicer` answering QueryService calls on a free loopback port, which it yields."""
    server = grpc.aio.server()
    query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


class NatsProcess:
    """A nats-server with JetStream on loopback, stoppable and restartable on the same port."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        cluster: ClusterSpec | None = None,
        node_index: int = 0,
    ) -> None:
        self.store_dir = store_dir
        self.node_index = node_index
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.cluster = cluster
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = store_dir / "nats.log"

    @property
    def server_name(self) -> str:
        """The node's name in a cluster (what `/jsz` calls leaders and replicas)."""
        return f"node-{self.node_index}"

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    def monitor(self, path: str) -> dict[str, Any]:
        """One JSON answer of the monitoring port (`/jsz`, `/varz`, ...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def _argv(self) -> list[str]:
        if self.cluster is None:
            return [
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
        config = self.store_dir / "nats.conf"
        config.write_text(self.cluster.config(self))
        return [nats_server_binary(), "-c", str(config)]

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running server's process id."""
        if self._proc is None:
            raise RuntimeError("nats-server is not running")
        return self._proc.pid

    def start(self) -> None:
        """Starts the server and waits until JetStream answers."""
        if self._proc is not None:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = self._argv()
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"nats-server exited: {self._log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()  # the caller's fixture never gets to its teardown
        raise RuntimeError(f"nats-server not ready in {READY_TIMEOUT_S} s")

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to flush or say goodbye to its routes."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None

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


CLUSTER_NAME = "tpipe"
CLUSTER_READY_TIMEOUT_S = 30.0


class ClusterSpec:
    """The routes of a JetStream cluster on loopback: one cluster port per node."""

    def __init__(self, size: int) -> None:
        self.cluster_ports = [free_port() for _ in range(size)]

    def config(self, node: NatsProcess) -> str:
        """The nats-server configuration of `node` (one of the cluster's nodes)."""
        own = self.cluster_ports[node.node_index]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        return f"""\
server_name: {node.server_name}
listen: 127.0.0.1:{node.port}
http: 127.0.0.1:{node.monitor_port}
jetstream {{
  store_dir: "{node.store_dir / "jetstream"}"
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{own}
  routes: [{routes}]
}}
"""


class NatsCluster:
    """Three (or more) nats-servers forming one JetStream cluster on loopback.

    Each node has its own client, monitoring and cluster ports and its own store; every
    node lists every cluster port as a route, so any two that run find each other.
    """

    def __init__(self, root: Path, *, size: int = 3) -> None:
        self.spec = ClusterSpec(size)
        self.nodes = [
            NatsProcess(root / f"node-{i}", cluster=self.spec, node_index=i) for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated, as NATS_URL takes them."""
        return ",".join(self.urls)

    def start(self) -> None:
        """Starts every node, then waits until the JetStream meta group has a leader; stops
        them all if that fails (the caller's fixture never gets to its teardown)."""
        try:
            for node in self.nodes:
                node.start()
            self.wait_meta_leader()
        except BaseException:
            self.stop()
            raise

    def wait_meta_leader(self) -> str:
        """Waits until every running node knows the meta leader; returns its name."""
        deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            leaders: set[str] = set()
            try:
                for node in self.nodes:
                    if node.running:
                        meta = node.monitor("/jsz").get("meta_cluster")
                        leaders.add(str(meta.get("leader", "")) if isinstance(meta, dict) else "")
            except OSError:
                leaders = {""}
            if len(leaders) == 1 and "" not in leaders:
                return leaders.pop()
            time.sleep(0.2)
        raise RuntimeError(f"JetStream cluster has no meta leader in {CLUSTER_READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stops every node."""
        for node in self.nodes:
            node.stop()
