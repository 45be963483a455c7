"""`scripts/local.py exec` stops the servers it started even when its reader has gone.

`make test | head` closes the pipe early; the status lines printed while stopping then
raised BrokenPipeError and left NATS and OpenSearch running on the test ports.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load_local() -> ModuleType:
    return load_script("local.py", "local_script")


class ClosedPipe(io.StringIO):
    """A stdout whose reader has gone after `allowed` writes."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed

    def write(self, text: str) -> int:
        if self.allowed <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.allowed -= 1
        return super().write(text)


@pytest.mark.parametrize("allowed", [0, 1, 3])
def test_exec_stops_what_it_started_when_stdout_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, allowed: int
) -> None:
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)  # its locks, not those of a `make test`
    profile = local.PROFILES["test"]
    procs = [object(), object()]
    stopped: list[object] = []

    def start_all(wanted: list[Any], started: list[Any]) -> None:
        started.extend(wanted)

    def stop(proc: object) -> None:
        print(f"stopping {id(proc)}")  # what the real stop prints
        stopped.append(proc)
        print("stopped")

    monkeypatch.setattr(local, "start_all", start_all)
    monkeypatch.setattr(local, "stop", stop)
    monkeypatch.setattr(local, "running_pid", lambda proc: None)
    monkeypatch.setattr(local.subprocess, "Popen", lambda *a, **k: object())
    monkeypatch.setattr(local, "wait_command", lambda child: 3)
    monkeypatch.setattr(local.signal, "signal", lambda *a: None)
    monkeypatch.setattr(sys, "stdout", ClosedPipe(allowed))

    code = local.cmd_exec(profile, procs, ["pytest"])

    assert code == 3
    assert stopped == list(reversed(procs))


# Ignores SIGTERM, as a server slow to stop does: only the stop timeout's SIGKILL ends it.
# $READY is written once the trap is set: a SIGTERM sent before would end it at once.
_STUBBORN = "trap '' TERM; : > \"$READY\"; while :; do sleep 0.05; done"


@pytest.mark.parametrize(("interrupt", "code"), [("KeyboardInterrupt", 130), ("Terminated", 143)])
def test_an_interrupt_while_stopping_kills_that_server_and_stops_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, interrupt: str, code: int
) -> None:
    # A second Ctrl-C while OpenSearch stopped ended the cleanup there: NATS ran on with its
    # pid file, and later runs took it for one running before and never stopped it.
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)
    profile = local.Profile("stoptest", 1, 2, 3, 4, (5, 6), (7, 8), (9, 10))
    procs = [
        local.ManagedProcess(
            name=name,
            title=name,
            profile=profile,
            prepare=lambda name=name: local.Launch(
                argv=("sh", "-c", _STUBBORN), env={"READY": str(tmp_path / f"{name}.ready")}
            ),
            ready_url="http://127.0.0.1:1/",
            ports=(),
            endpoints=(),
            stop_timeout_s=1.0,
        )
        for name in ("nats", "opensearch")
    ]
    pids: list[int] = []

    def start_all(wanted: list[Any], started: list[Any]) -> None:
        for proc in wanted:
            pids.append(local.spawn(proc, proc.prepare()))
            started.append(proc)
            ready = tmp_path / f"{proc.name}.ready"
            deadline = time.monotonic() + 10
            while not ready.exists():  # ignoring SIGTERM from here on
                assert time.monotonic() < deadline, f"{proc.name} never set its trap"
                time.sleep(0.01)

    real_wait = local.wait_group_exit
    waits: list[int] = []

    def wait_group_exit(pgrp: int, timeout_s: float) -> bool:
        waits.append(pgrp)
        if len(waits) == 1:  # Ctrl-C (or SIGTERM) while the first stop waits
            raise KeyboardInterrupt if interrupt == "KeyboardInterrupt" else local.Terminated
        return bool(real_wait(pgrp, timeout_s))

    monkeypatch.setattr(local, "start_all", start_all)
    monkeypatch.setattr(local, "wait_group_exit", wait_group_exit)
    monkeypatch.setattr(local.signal, "signal", lambda *a: None)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        try:
            exit_code = local.cmd_exec(profile, procs, ["true"])  # the command exits 0
        except (KeyboardInterrupt, local.Terminated) as err:
            pytest.fail(f"the interrupt ended the stops: {err!r}")
        assert exit_code == code
        for pid in pids:
            assert not local.group_alive(pid)
        for proc in procs:
            assert not proc.pid_file.exists()
        assert "opensearch: interrupted, sending SIGKILL" in out.getvalue()
        assert "nats: stopped" in out.getvalue()
    finally:
        for pid in pids:
            local.signal_group(pid, signal.SIGKILL)


def test_a_second_exec_waits_for_the_first_instead_of_sharing_its_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The first would stop the servers it started under the second's command.
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)
    profile = local.PROFILES["test"]
    started = threading.Event()
    monkeypatch.setattr(local, "start_all", lambda wanted, into: started.set())
    monkeypatch.setattr(local, "running_pid", lambda proc: None)
    monkeypatch.setattr(local.subprocess, "Popen", lambda *a, **k: object())
    monkeypatch.setattr(local, "wait_command", lambda child: 0)
    monkeypatch.setattr(local.signal, "signal", lambda *a: None)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    second = threading.Thread(target=local.cmd_exec, args=(profile, [object()], ["pytest"]))

    with local.exec_lock(profile):  # the first exec, running its command
        second.start()
        deadline = time.monotonic() + 30
        while "to finish running its command on profile test" not in out.getvalue():
            assert time.monotonic() < deadline, "the second exec did not wait"
            time.sleep(0.01)
        assert not started.is_set()
    second.join(timeout=30)

    assert started.is_set()


def test_a_port_offset_moves_every_port_of_a_profile() -> None:
    local = _load_local()
    test = local.PROFILES["test"]
    moved = local.offset_profile(test, 100)

    assert moved.client_env() == {
        "NATS_URL": "nats://127.0.0.1:14322",
        "OPENSEARCH_URL": "http://127.0.0.1:19300",
    }
    assert [proc.ports for proc in local.managed_processes(moved)] == [
        tuple(port + 100 for port in proc.ports) for proc in local.managed_processes(test)
    ]
    assert moved.root == test.root  # the same servers' data, on other ports
    assert local.port_offset(None, {"PORT_OFFSET": "250"}) == 250
    assert local.port_offset(7, {"PORT_OFFSET": "250"}) == 7
    assert local.port_offset(None, {}) == 0
    with pytest.raises(local.InfraError, match="PORT_OFFSET must be a whole number"):
        local.port_offset(None, {"PORT_OFFSET": "ten"})
    with pytest.raises(local.InfraError, match="must be 0 or more"):
        local.offset_profile(test, -1)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        # gRPC 50051 + 20000 is no port: the port checks raised OverflowError with a traceback.
        (
            ["status"],
            {"PORT_OFFSET": "20000"},
            "gateway gRPC port of profile dev from 50051 to 70051, past 65535: at most 15482",
        ),
        (
            ["down", "--port-offset", "46236", "--profile", "test"],
            {},
            "OpenSearch transport port of profile test from 19300 to 65536",
        ),
        (["status"], {"PORT_OFFSET": "-5"}, "PORT_OFFSET must be 0 or more, not -5"),
        (["status"], {"PORT_OFFSET": "ten"}, "PORT_OFFSET must be a whole number"),
    ],
)
def test_a_port_offset_past_the_last_port_is_a_usage_error_naming_the_port(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    environ: dict[str, str],
    message: str,
) -> None:
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)
    monkeypatch.delenv("PORT_OFFSET", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)

    assert local.main(argv) == 2
    out, err = capsys.readouterr()
    assert "error: PORT_OFFSET" in err
    assert message in err
    assert out == ""
    assert local.offset_profile(local.PROFILES["test"], 46235).opensearch_transport_port == 65535


# A command that cleans up for a while when interrupted, as pytest's teardown does.
_COMMAND = """
import pathlib, signal, sys, time
marker = pathlib.Path(sys.argv[1])
def cleanup(signum, frame):
    time.sleep(float(sys.argv[2]))
    marker.write_text("cleaned")
    sys.exit(0)
signal.signal(signal.SIGINT, cleanup if sys.argv[2] != "never" else signal.SIG_IGN)
marker.write_text("ready")
while True:
    time.sleep(0.05)
"""

# `local.py exec` with no servers to start, around that command.
_DRIVER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("local_script", sys.argv[1])
local = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = local
spec.loader.exec_module(local)
local.EXEC_CLEANUP_TIMEOUT_S = float(sys.argv[2])
sys.exit(local.cmd_exec(local.PROFILES["test"], [], [sys.executable, *sys.argv[3:]]))
"""


def _interrupt_exec(
    tmp_path: Path, sig: int, *, cleanup: str, grace_s: float = 30.0
) -> tuple[int, str, str]:
    """Runs the driver, sends `sig` once the command runs; its exit code, the marker, output."""
    command, driver, marker = tmp_path / "command.py", tmp_path / "driver.py", tmp_path / "m"
    command.write_text(_COMMAND)
    driver.write_text(_DRIVER)
    argv = [sys.executable, str(driver), str(ROOT / "scripts" / "local.py"), str(grace_s)]
    # In a session of its own, without a terminal: the signal reaches the driver alone.
    proc = subprocess.Popen(
        [*argv, str(command), str(marker), cleanup],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, marker.read_text(), out


def test_ctrl_c_gives_the_command_time_to_clean_up(tmp_path: Path) -> None:
    # subprocess.run would kill the command 0.25 s after Ctrl-C, in the middle of pytest's
    # teardown, leaving the private servers the tests had started running.
    code, marker, out = _interrupt_exec(tmp_path, signal.SIGINT, cleanup="1.5")
    assert marker == "cleaned"
    assert code == 130
    assert "to clean up" in out


def test_sigterm_is_passed_on_as_an_interrupt(tmp_path: Path) -> None:
    code, marker, _ = _interrupt_exec(tmp_path, signal.SIGTERM, cleanup="0.5")
    assert marker == "cleaned"
    assert code == 143


def test_a_command_that_does_not_end_is_killed_after_the_grace(tmp_path: Path) -> None:
    code, marker, out = _interrupt_exec(tmp_path, signal.SIGINT, cleanup="never", grace_s=1.0)
    assert marker == "ready"
    assert code == 130
    assert "killing it" in out


# `local.py exec` stopped by SIGTERM while it starts the servers (a CI timeout).
_STARTING_DRIVER = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("local_script", sys.argv[1])
local = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = local
spec.loader.exec_module(local)
local.LOCAL = pathlib.Path(sys.argv[2])
def start_all(procs, started):
    pathlib.Path(sys.argv[3]).write_text("starting")
    time.sleep(60)
local.start_all = start_all
sys.exit(local.main(["exec", "--profile", "test", "--only", "nats", "--", "true"]))
"""


def test_sigterm_while_starting_exits_143_with_one_line(tmp_path: Path) -> None:
    driver, marker = tmp_path / "driver.py", tmp_path / "starting"
    driver.write_text(_STARTING_DRIVER)
    argv = [sys.executable, str(driver), str(ROOT / "scripts" / "local.py"), str(tmp_path)]
    proc = subprocess.Popen(
        [*argv, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "exec did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err == "terminated\n"


def test_loopback_never_goes_through_a_proxy(tmp_path: Path) -> None:
    # A CI machine that reaches the registries through a proxy: the command `exec` runs (the
    # tests) and the services it starts must still reach the servers on loopback directly.
    script = tmp_path / "proxied.py"
    script.write_text(
        "import os, urllib.request\n"
        "assert urllib.request.proxy_bypass('127.0.0.1'), 'urllib would use the proxy'\n"
        "assert urllib.request.proxy_bypass('localhost')\n"
        "print(os.environ['NO_PROXY'])\n"
    )
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {
        "PATH": "/usr/bin:/bin",
        "HTTP_PROXY": "http://proxy.invalid:3128",
        "HTTPS_PROXY": "http://proxy.invalid:3128",
        "NO_PROXY": "registry.internal",
    }
    done = subprocess.run(
        [sys.executable, str(driver), str(ROOT / "scripts" / "local.py"), "5", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registry.internal,127.0.0.1,localhost,::1" in done.stdout
