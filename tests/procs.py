"""The pipeline's services as real processes, for end-to-end and fault tests.

Each service runs as `python -m tpipe <service>` with its settings in the
environment, its output in a log file, and is waited for on `/readyz`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from indexer.template import template_name
from tests.servers import free_port

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

WRITE_KEY = "e2e-write-key-0123456789"
READ_KEY = "e2e-read-key-0123456789"
APP_ID = "e2e-app"


class ServiceProcess:
    """One service process: start, wait until ready, terminate or kill, restart."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        *,
        http_port: int,
        log_dir: Path,
        label: str = "",
    ) -> None:
        self.name = name
        self.label = label or name
        self.env = env
        self.http_port = http_port
        self.log_file = log_dir / f"{self.label}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def base_url(self) -> str:
        """The service's HTTP base URL (health, readiness, metrics)."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, *, wait: bool = True) -> None:
        """Starts the process, and by default waits until `/readyz` answers 200."""
        if self._proc is not None and self._proc.poll() is None:
            return
        env = {**os.environ, **self.env}
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tpipe", self.name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Waits until `/readyz` says ready; fails with the log's tail when it does not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout_s} s:\n{self.log_tail()}")

    def readiness(self) -> tuple[int, str]:
        """`/readyz` now: its status and body."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def terminate(self) -> int:
        """SIGTERM, then waits for the graceful stop; returns the exit code."""
        return self._signal(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL: no chance to clean up."""
        return self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> int:
        if self._proc is None:
            return 0
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service's output."""
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        """The Prometheus text of `/metrics`."""
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=5) as resp:
            return str(resp.read().decode())


@dataclass
class Pipeline:
    """Gateway, enricher and indexer wired to one NATS and one OpenSearch."""

    nats_url: str
    opensearch_url: str
    index_prefix: str
    log_dir: Path
    gateway_grpc_port: int = field(default_factory=free_port)
    indexer_grpc_port: int = field(default_factory=free_port)
    enricher_grpc_port: int = field(default_factory=free_port)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    # Extra environment for every service, and per service name (applied last).
    env: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    replicas: list[ServiceProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        common = {
            "NATS_URL": self.nats_url,
            "OPENSEARCH_URL": self.opensearch_url,
            "LOG_LEVEL": "INFO",
            **self.env,
        }
        gateway_port, enricher_port, indexer_port = free_port(), free_port(), free_port()
        self.services["indexer"] = ServiceProcess(
            "indexer",
            {
                **common,
                "INDEXER_HTTP_PORT": str(indexer_port),
                "INDEXER_GRPC_PORT": str(self.indexer_grpc_port),
                "INDEXER_INDEX_PREFIX": self.index_prefix,
                "INDEXER_FLUSH_INTERVAL_S": "0.2",
            },
            http_port=indexer_port,
            log_dir=self.log_dir,
        )
        self.services["enricher"] = ServiceProcess(
            "enricher",
            {
                **common,
                "ENRICHER_HTTP_PORT": str(enricher_port),
                "ENRICHER_GRPC_PORT": str(self.enricher_grpc_port),
            },
            http_port=enricher_port,
            log_dir=self.log_dir,
        )
        self.services["gateway"] = ServiceProcess(
            "gateway",
            {
                **common,
                "GATEWAY_HTTP_PORT": str(gateway_port),
                "GATEWAY_GRPC_PORT": str(self.gateway_grpc_port),
                "GATEWAY_WRITE_KEYS": f"{WRITE_KEY}:{APP_ID}",
                "GATEWAY_READ_KEYS": f"{READ_KEY}:e2e-reader",
                "GATEWAY_QUERY_TARGET": f"127.0.0.1:{self.indexer_grpc_port}",
            },
            http_port=gateway_port,
            log_dir=self.log_dir,
        )
        for name, extra in self.overrides.items():
            self.services[name].env.update(extra)

    @property
    def gateway(self) -> ServiceProcess:
        """The gateway process."""
        return self.services["gateway"]

    @property
    def enricher(self) -> ServiceProcess:
        """The enricher process."""
        return self.services["enricher"]

    @property
    def indexer(self) -> ServiceProcess:
        """The indexer process."""
        return self.services["indexer"]

    def add_replica(self, name: str) -> ServiceProcess:
        """One more enricher or indexer with the same settings (and so the same durable
        consumer) on ports of its own; started with `start()` or on its own."""
        base = self.services[name]
        number = sum(1 for r in self.replicas if r.name == name) + 2
        http_port, grpc_port = free_port(), free_port()
        prefix = name.upper()
        env = {
            **base.env,
            f"{prefix}_HTTP_PORT": str(http_port),
            f"{prefix}_GRPC_PORT": str(grpc_port),
        }
        replica = ServiceProcess(
            name, env, http_port=http_port, log_dir=self.log_dir, label=f"{name}-{number}"
        )
        self.replicas.append(replica)
        return replica

    @property
    def log_files(self) -> list[Path]:
        """Every service's log file (replicas included)."""
        return [s.log_file for s in [*self.services.values(), *self.replicas]]

    def start(self) -> None:
        """Starts all three (indexer first, so the query route has its backend)."""
        everything = [*self.services.values(), *self.replicas]
        for service in everything:
            service.start(wait=False)
        for service in everything:
            service.wait_ready()

    def stop(self) -> None:
        """Stops all gracefully (gateway first: intake stops before the rest drains)."""
        for name in ("gateway", "enricher", "indexer"):
            self.services[name].terminate()
            for replica in self.replicas:
                if replica.name == name:
                    replica.terminate()


def delete_indices(opensearch_url: str, prefix: str) -> None:
    """Removes the indices and the index template an indexer made under `prefix` (and
    nothing else)."""
    for path in (
        f"/{prefix}*?expand_wildcards=all&ignore_unavailable=true&allow_no_indices=true",
        f"/_index_template/{template_name(prefix)}",
    ):
        request = urllib.request.Request(f"{opensearch_url}{path}", method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except urllib.error.HTTPError as err:
            if err.code != 404:  # no template yet
                raise
