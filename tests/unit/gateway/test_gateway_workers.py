"""GATEWAY_WORKERS: the supervisor says once why the workers could not listen."""

from __future__ import annotations

import logging
import subprocess

import pytest

from gateway._workers import supervise
from tests.unit.gateway.conftest import unit_config


@pytest.mark.parametrize(
    ("taken", "what"), [("GATEWAY_HTTP_PORT", "HTTP"), ("GATEWAY_GRPC_PORT", "gRPC")]
)
def test_a_port_taken_is_said_once_and_no_worker_starts(
    taken: str,
    what: str,
    taken_port: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Said by the supervisor before any worker starts (each worker said it: N times the
    same line)."""

    def start_worker(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker was started")

    monkeypatch.setattr(subprocess, "Popen", start_worker)
    ports = {"GATEWAY_HTTP_PORT": "0", "GATEWAY_GRPC_PORT": "0", taken: str(taken_port)}
    config = unit_config(GATEWAY_WORKERS="3", **ports)

    with caplog.at_level(logging.INFO):
        code = supervise(config)

    assert code == 3
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"gateway cannot start: {what} cannot listen on 127.0.0.1:{taken_port}: address"
            " already in use; another process listens there: stop it, or set"
            f" {taken} to a free port",
        )
    ]
