"""Several gateway processes sharing the HTTP and gRPC ports (SO_REUSEPORT).

`GATEWAY_WORKERS=N` makes `python -m gateway` a small supervisor: it starts N worker
processes with `GATEWAY_REUSE_PORT=true`, passes SIGTERM/SIGINT on to them, and exits
when they have all stopped (non-zero when one stopped on its own: with its exit code, 3
when it could not listen). A port the workers could not listen on is found before any
starts, and said once rather than by every worker. The kernel spreads connections over the
workers. The workers share a metrics folder of the supervisor's (PROMETHEUS_MULTIPROC_DIR,
removed when they stop), so /metrics on the shared port reports the whole gateway,
whichever worker answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from gateway._metrics import MULTIPROC_DIR_ENV
from gateway.config import GatewayConfig
from pipeline import service
from pipeline.errors import ListenError
from pipeline.listen import bind_shared, cannot_listen, check_bindable

log = logging.getLogger(__name__)

WORKER_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1
WORKER_STOP_TIMEOUT_S = 60.0


def _stop_with_parent() -> None:
    """In a worker, before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(config: GatewayConfig) -> int:
    """Runs GATEWAY_WORKERS gateway processes sharing the ports until a signal stops them;
    none when a port cannot be listened on (EXIT_CANNOT_START, after one line saying why)."""
    try:
        _check_ports(config)
    except ListenError as err:
        return service.cannot_start("gateway", err)
    shared_metrics = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        return _supervise(config.workers, shared_metrics)
    finally:
        shutil.rmtree(shared_metrics, ignore_errors=True)


def _check_ports(config: GatewayConfig) -> None:
    """Raises the ListenError each worker would stop on, binding the HTTP and the gRPC port
    as a worker binds them (SO_REUSEPORT), then letting them go. A port taken after this
    check still stops each worker with a line of its own."""
    host, http_port, grpc_port = config.host, config.http_port, config.grpc_port
    try:
        bind_shared(host, http_port).close()
    except OSError as err:
        raise cannot_listen(
            "HTTP",
            host,
            http_port,
            err,
            host_setting="GATEWAY_HOST",
            port_setting="GATEWAY_HTTP_PORT",
        ) from err
    try:
        check_bindable(host, grpc_port, reuse_port=True)
    except OSError as err:
        raise cannot_listen(
            "gRPC",
            host,
            grpc_port,
            err,
            host_setting="GATEWAY_HOST",
            port_setting="GATEWAY_GRPC_PORT",
        ) from err


def _supervise(workers: int, shared_metrics: str) -> int:
    env = {
        **os.environ,
        "GATEWAY_WORKERS": "1",
        "GATEWAY_REUSE_PORT": "true",
        MULTIPROC_DIR_ENV: shared_metrics,
    }
    procs = [
        subprocess.Popen(  # the supervisor is single-threaded here, so preexec_fn is safe
            [sys.executable, "-m", "gateway"], env=env, preexec_fn=_stop_with_parent
        )
        for _ in range(workers)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("gateway supervisor started %d workers", workers)
    failed: subprocess.Popen[bytes] | None = None  # the first worker that stopped on its own
    while any(proc.poll() is None for proc in procs):
        if not stopping and (ended := [proc for proc in procs if proc.poll() is not None]):
            # A worker stopped on its own: stop the rest and let the process manager restart us.
            failed = ended[0]
            forward(signal.SIGTERM, None)
        time.sleep(WORKER_POLL_S)
    codes = [proc.wait(timeout=WORKER_STOP_TIMEOUT_S) for proc in procs]
    log.info("gateway workers stopped", extra={"exit_codes": codes})
    if not stopping:  # all of them stopped on their own between two looks: the first failed
        failed = next((proc for proc in procs if proc.returncode != 0), procs[0])
    if failed is not None:
        # With its code (3: it could not listen), as one gateway process would exit; 1 for a
        # worker ended by a signal.
        return failed.returncode if failed.returncode > 0 else 1
    return 1 if any(codes) else 0
