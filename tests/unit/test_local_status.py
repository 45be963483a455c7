"""`scripts/local.py` waits for, and `status` reports, each process's readiness check (a
service's /readyz), and says what it last answered.

An indexer whose /healthz was fine but whose /readyz said `index template not installed yet:
opensearch not reachable` made `up` fail with "did not become healthy" and nothing of the
reason.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.script_modules import load_script
from tpipe.errors import EXIT_UNAVAILABLE

NOT_READY_REASON = "index template not installed yet: opensearch not reachable"


class _Service(http.server.BaseHTTPRequestHandler):
    """A service that is alive (/healthz 200) and answers /readyz as `readyz` says."""

    readyz: tuple[int, dict[str, object]] = (
        503,
        {"status": "not ready", "reason": NOT_READY_REASON},
    )

    def do_GET(self) -> None:
        status, body = (200, {"status": "ok"}) if self.path == "/healthz" else self.readyz
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_script("local.py", "local_script_status")
    monkeypatch.setattr(module, "LOCAL", tmp_path / "local")
    return module


@dataclasses.dataclass
class FakeService:
    """The fake service's port, and how its /readyz is to answer from now on."""

    port: int
    handler: type[_Service]

    def readyz_answers(self, status: int, body: dict[str, object]) -> None:
        self.handler.readyz = (status, body)


@pytest.fixture
def service() -> Iterator[FakeService]:
    handler = type("Service", (_Service,), {})  # its own `readyz`, for this test alone
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield FakeService(port=server.server_port, handler=handler)
    server.shutdown()
    server.server_close()


def _indexer(local: ModuleType, http_port: int) -> Any:
    """The indexer of a profile of its own, its HTTP port the fake service's; no other port
    of the profile is bound."""
    profile = local.Profile("statustest", 1, 2, 3, 4, (5, 6), (7, 8), (http_port, 10))
    return local.service_process(profile, "indexer")


def test_a_service_not_ready_in_time_is_reported_with_what_its_readyz_said(
    local: ModuleType, service: FakeService
) -> None:
    proc = dataclasses.replace(_indexer(local, service.port), ready_timeout_s=0.5)
    proc.log_file.parent.mkdir(parents=True)
    proc.log_file.write_text("indexer not ready\n")

    with pytest.raises(local.InfraError) as caught:
        local.wait_ready(proc, os.getpgrp())  # a group that is alive: this one

    message = str(caught.value)
    readyz = f"http://127.0.0.1:{service.port}/readyz"
    assert message.startswith(
        f"Indexer did not become ready in 0 s; its readiness check ({readyz}) last answered "
        f"503: {NOT_READY_REASON}; last log lines (",
    ), message
    assert "    indexer not ready" in message
    assert "health" not in message


def test_a_readiness_check_that_does_not_answer_is_named_with_why(local: ModuleType) -> None:
    answer = local.probe("http://127.0.0.1:1/readyz")  # nothing listens on port 1
    assert not answer.ready
    assert answer.said == "got no answer (Connection refused)"


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (
            503,
            {"status": "not ready", "reason": "nats not connected"},
            "answered 503: nats not connected",
        ),
        (
            503,
            {"status": "unavailable", "error": "JetStream not enabled"},
            "answered 503: JetStream not enabled",
        ),
        (
            408,
            {"cluster_name": "telemetry-dev", "status": "red", "timed_out": True},
            "answered 408: status red",
        ),
    ],
)
def test_a_not_ready_answer_is_quoted_by_its_reason(
    local: ModuleType,
    service: FakeService,
    status: int,
    body: dict[str, object],
    said: str,
) -> None:
    service.readyz_answers(status, body)
    answer = local.probe(f"http://127.0.0.1:{service.port}/readyz")
    assert (answer.ready, answer.word, answer.said) == (False, "not ready", said)


@pytest.fixture
def running(local: ModuleType, service: FakeService) -> Iterator[Any]:
    """The indexer running (a tagged `sleep`, its pid file written as `up` writes it), its
    readiness check the fake service's /readyz."""
    proc = _indexer(local, service.port)
    pid = local.spawn(proc, local.Launch(argv=("sleep", "60")))
    try:
        yield proc
    finally:
        local.signal_group(pid, local.signal.SIGKILL)
        local.wait_group_exit(pid, 10.0)


def test_status_shows_readiness_and_why_a_process_is_not_ready(
    running: Any, local: ModuleType, service: FakeService
) -> None:
    line, ready = local.status_line(running)
    assert " readiness not ready " in line
    assert line.endswith(f"; readiness check answered 503: {NOT_READY_REASON}")
    assert not ready

    service.readyz_answers(200, {"status": "ready", "reason": ""})
    line, ready = local.status_line(running)
    assert " readiness ready " in line
    assert line.endswith(f"http://127.0.0.1:{service.port}")
    assert ready


def test_status_exits_0_only_when_every_process_runs_and_is_ready(
    running: Any, local: ModuleType, service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    # It printed `enricher    stopped` and exited 0: a script could not tell.
    profile = running.profile
    enricher = local.service_process(profile, "enricher")  # no pid file: stopped

    service.readyz_answers(200, {"status": "ready", "reason": ""})
    assert local.cmd_status(profile, [running]) == 0
    assert local.cmd_status(profile, [running, enricher]) == 3
    out = capsys.readouterr().out
    assert "  enricher    stopped\n" in out
    assert out.count(" readiness ready ") == 2  # the lines are printed all the same

    service.readyz_answers(503, {"status": "not ready", "reason": NOT_READY_REASON})
    assert local.cmd_status(profile, [running]) == 3
    assert f"readiness check answered 503: {NOT_READY_REASON}" in capsys.readouterr().out


def test_status_exits_as_tpipe_status_does_when_a_part_is_down(local: ModuleType) -> None:
    assert local.EXIT_NOT_READY == EXIT_UNAVAILABLE
