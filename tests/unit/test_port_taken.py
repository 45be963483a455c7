"""A service whose HTTP or gRPC port is taken exits 3 at once with one line naming the address
and the setting to change, whatever NATS does (here it is unreachable)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import ROOT

# Far more than a start that fails takes (under a second), far less than a hang.
EXIT_WITHIN_S = 30.0
UNREACHABLE = {
    "NATS_URL": "nats://127.0.0.1:1",
    "OPENSEARCH_URL": "http://127.0.0.1:1",
    "GATEWAY_QUERY_TARGET": "127.0.0.1:1",
}


@pytest.mark.parametrize("server", ["HTTP", "GRPC"])
@pytest.mark.parametrize("service", ["gateway", "enricher", "indexer"])
def test_a_port_taken_exits_3_with_one_line_naming_it_and_its_setting(
    service: str, server: str, taken_port: int
) -> None:
    prefix = service.upper()
    setting = f"{prefix}_{server}_PORT"
    other = f"{prefix}_{'GRPC' if server == 'HTTP' else 'HTTP'}_PORT"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        "LOG_FORMAT": "text",
        "GATEWAY_WRITE_KEYS": "unit-key-0123456789:app",
        **UNREACHABLE,
        setting: str(taken_port),
        other: "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", service],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN_S,
        check=False,
    )

    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    (line,) = errors
    what = "HTTP" if server == "HTTP" else "gRPC"
    assert f"{service} cannot start: {what} cannot listen on 127.0.0.1:{taken_port}" in line
    assert "address already in use" in line
    assert f"set {setting} to a free port" in line
    noises = ("Traceback", "never retrieved", "Failed to add port", "nats error")
    for noise in noises:
        assert noise not in proc.stderr
    # nothing else: no line as if it had run and stopped ("drained and closed", "stopped")
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [line], proc.stderr


@pytest.mark.parametrize("server", ["HTTP", "GRPC"])
def test_gateway_workers_whose_port_is_taken_exit_3_with_one_line(
    server: str, taken_port: int
) -> None:
    setting = f"GATEWAY_{server}_PORT"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        "LOG_FORMAT": "text",
        "GATEWAY_WRITE_KEYS": "unit-key-0123456789:app",
        **UNREACHABLE,
        "GATEWAY_WORKERS": "3",
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_GRPC_PORT": "0",
        setting: str(taken_port),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN_S,
        check=False,
    )

    assert proc.returncode == 3, proc.stderr  # the supervisor said 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr  # not one for each worker
    assert f"set {setting} to a free port" in errors[0]
