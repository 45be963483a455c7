"""`python -m gateway` as a process: ready, takes a batch, exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.gateway.samples import SAMPLE_BATCH
from tests.integration.observability.observability_support import sample
from tests.servers import ROOT, NatsProcess, free_port

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 30.0


class GatewayProcess:
    """`python -m gateway` with `workers` workers, its log (stderr) in `tmp_path`."""

    def __init__(self, nats_server: NatsProcess, tmp_path: Path, workers: int) -> None:
        keys = tmp_path / "keys.json"
        keys.write_bytes(orjson.dumps({"write_keys": {"wk-proc": "proc-app"}, "read_keys": {}}))
        self.port = free_port()
        self.workers = workers
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
            "NATS_URL": nats_server.url,
            "GATEWAY_HTTP_PORT": str(self.port),
            "GATEWAY_GRPC_PORT": str(free_port()),
            "GATEWAY_KEYS_FILE": str(keys),
            "GATEWAY_WORKERS": str(workers),
            "TMPDIR": str(tmp_path),
        }
        self.log_path = tmp_path / "gateway.log"
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                env=env,
                cwd=ROOT,
                stderr=log_file,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Each worker logs when it turns ready (NATS connected, streams there).
        while self.logs().count('"msg":"gateway ready"') < self.workers:
            assert self.proc.poll() is None, f"gateway exited during start: {self.logs()}"
            assert time.monotonic() < deadline, f"gateway not ready: {self.logs()}"
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the supervisor and its workers
            self.proc.wait()


def _batch(size: int) -> list[dict[str, object]]:
    return [{**SAMPLE_BATCH[0], "event_id": str(uuid.uuid4())} for _ in range(size)]


@pytest.mark.parametrize("workers", [1, 2])
def test_process_serves_and_stops_gracefully_on_sigterm(
    nats_server: NatsProcess, tmp_path: Path, workers: int
) -> None:
    gateway = GatewayProcess(nats_server, tmp_path, workers)
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}") as http:
            statuses = [
                http.post(
                    "/v1/track",
                    json=SAMPLE_BATCH,
                    headers={"X-Api-Key": "wk-proc", "Connection": "close"},
                ).status_code
                for _ in range(10)
            ]
        assert set(statuses) == {202}, statuses
        code = gateway.stop()
    finally:
        gateway.kill()
    logs = gateway.logs()

    assert code == 0, logs
    assert logs.count('"msg":"gateway stopped"') == workers
    assert "wk-proc" not in logs


def test_metrics_of_several_workers_add_up_whichever_answers(
    nats_server: NatsProcess, tmp_path: Path
) -> None:
    gateway = GatewayProcess(nats_server, tmp_path, workers=2)
    requests, size = 24, 3
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}") as http:
            for _ in range(requests):  # a new connection each: the kernel spreads them
                answer = http.post(
                    "/v1/track",
                    json=_batch(size),
                    headers={"X-Api-Key": "wk-proc", "Connection": "close"},
                )
                assert answer.status_code == 202, answer.text
            scrapes = [http.get("/metrics", headers={"Connection": "close"}).text for _ in range(8)]
        for text in scrapes:
            assert sample(text, "gateway_events_total", outcome="accepted") == requests * size
            assert (
                sample(text, "gateway_http_requests_total", route="/v1/track", status="202")
                == requests
            )
            assert sample(text, "gateway_publish_seconds_count", outcome="acked") == requests
            assert sample(text, "gateway_requests_in_flight") == 0
        code = gateway.stop()
    finally:
        gateway.kill()

    assert code == 0, gateway.logs()
    assert not list(tmp_path.glob("gateway-metrics-*")), "the shared metrics folder is left"
