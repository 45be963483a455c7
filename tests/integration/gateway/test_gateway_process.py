"""`python -m gateway` as a process: ready, takes a batch, exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.gateway.samples import SAMPLE_BATCH
from tests.servers import ROOT, NatsProcess, free_port

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 30.0


@pytest.mark.parametrize("workers", [1, 2])
def test_process_serves_and_stops_gracefully_on_sigterm(
    nats_server: NatsProcess, tmp_path: Path, workers: int
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_bytes(orjson.dumps({"write_keys": {"wk-proc": "proc-app"}, "read_keys": {}}))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        "NATS_URL": nats_server.url,
        "GATEWAY_HTTP_PORT": str(port),
        "GATEWAY_GRPC_PORT": str(free_port()),
        "GATEWAY_KEYS_FILE": str(keys),
        "GATEWAY_WORKERS": str(workers),
    }
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            env=env,
            cwd=ROOT,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Each worker logs when it turns ready (NATS connected, streams there).
        while log_path.read_text().count('"msg":"gateway ready"') < workers:
            assert proc.poll() is None, f"gateway exited during start: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"gateway not ready: {log_path.read_text()}"
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            statuses = [
                http.post(
                    "/v1/track",
                    json=SAMPLE_BATCH,
                    headers={"X-Api-Key": "wk-proc", "Connection": "close"},
                ).status_code
                for _ in range(10)
            ]
        assert set(statuses) == {202}, statuses

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers
            proc.wait()
    logs = log_path.read_text()

    assert code == 0, logs
    assert logs.count('"msg":"gateway stopped"') == workers
    assert "wk-proc" not in logs
