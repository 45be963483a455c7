"""`scripts/local.py` starts and stops managed processes safely: a stop is SIGTERM and then the
whole stop timeout to finish shutting down, also for a process running as another user; two
`local.py`s starting or stopping one profile take turns.

As root, OpenSearch runs as an unprivileged user. Started through `runuser`, it was killed 2 s
after `make stop` (runuser's own SIGKILL to its child), whatever its shutdown still had to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.script_modules import load_script

# Stops slowly on SIGTERM, as a JVM flushing its indices does; says who it ran as.
_SLOW_STOP = """
trap 'sleep {cleanup_s}; echo graceful > "$SHARED/stopped"; exit 0' TERM
id -un > "$SHARED/user"
while :; do sleep 0.05; done
"""


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_script("local.py", "local_script_stop")
    monkeypatch.setattr(module, "LOCAL", tmp_path / "local")
    return module


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder the service user may write too (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="local-stop-") as folder:
        os.chmod(folder, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO | stat.S_ISVTX)
        yield Path(folder)


def _profile(local: ModuleType, name: str) -> Any:
    """A profile of its own for a test, its ports never bound."""
    return local.Profile(name, 1, 2, 3, 4, (5, 6), (7, 8), (9, 10))


def _managed(local: ModuleType, profile: Any, name: str, **options: Any) -> Any:
    """A managed process with no ports or health URL of its own; `spawn` starts it."""
    return local.ManagedProcess(
        name=name,
        title=name.title(),
        profile=profile,
        prepare=lambda: None,
        ready_url="http://127.0.0.1:1/",
        ports=(),
        endpoints=(),
        **options,
    )


def _wait_started(proc: Any, shared: Path) -> None:
    """Returns once the _SLOW_STOP script `proc` runs has its TERM trap set."""
    deadline = time.monotonic() + 10
    while not (shared / "user").exists() or not (shared / "user").read_text():
        assert time.monotonic() < deadline, f"never started: {proc.log_file.read_text()}"
        time.sleep(0.05)


def _service_user(local: ModuleType) -> str | None:
    if os.geteuid() != 0:
        return None  # nobody to switch to: the process runs as ourselves
    local.ensure_service_user()
    return str(local.OPENSEARCH_USER)


def test_a_slow_stop_gets_its_whole_timeout_as_the_service_user(
    local: ModuleType, shared: Path
) -> None:
    user = _service_user(local)
    profile = _profile(local, "stoptest")
    launch = local.Launch(
        argv=("sh", "-c", _SLOW_STOP.format(cleanup_s=3)), env={"SHARED": str(shared)}, user=user
    )
    proc = _managed(local, profile, "slow", stop_timeout_s=15.0)
    pid = local.spawn(proc, launch)
    _wait_started(proc, shared)
    expected = user if user is not None else pwd.getpwuid(os.geteuid()).pw_name
    assert (shared / "user").read_text().strip() == expected
    assert local.running_pid(proc) == pid  # its own session leader, tagged as ours

    started = time.monotonic()
    local.terminate(proc, pid)

    assert (shared / "stopped").read_text().strip() == "graceful"
    assert time.monotonic() - started >= 3
    assert not local.group_alive(pid)
    assert not proc.pid_file.exists()


def test_a_stop_gets_the_graceful_stop_setting_the_process_was_started_with(
    local: ModuleType, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `INDEXER_GRACEFUL_STOP_S=60 make run`, then `make stop`: the indexer was killed after
    # 30 s, in the middle of its stop. Here the process's own stop timeout would kill it 0.5 s
    # into its 2 s clean-up; its setting gives it 8.5 s, which a loaded machine does not use up.
    monkeypatch.setattr(local, "SERVICE_STOP_OVERRUN_S", 0.5)
    profile = _profile(local, "stoptest")
    launch = local.Launch(
        argv=("sh", "-c", _SLOW_STOP.format(cleanup_s=2)),
        env={"SHARED": str(shared), "SLOW_GRACEFUL_STOP_S": "8"},
    )
    proc = _managed(local, profile, "slow", stop_timeout_s=0.5, stop_setting="SLOW_GRACEFUL_STOP_S")
    pid = local.spawn(proc, launch)
    _wait_started(proc, shared)
    monkeypatch.setenv("SLOW_GRACEFUL_STOP_S", "0")  # the stopping shell's own: not the one

    assert local.stop_timeout(proc, pid) == 8.5
    started = time.monotonic()
    local.terminate(proc, pid)

    assert (shared / "stopped").read_text().strip() == "graceful"
    assert time.monotonic() - started >= 2
    assert not local.group_alive(pid)


@pytest.mark.parametrize(
    ("started_with", "timeout_s"),
    [
        ("60", 67.0),  # its setting plus SERVICE_STOP_OVERRUN_S
        ("1", 30.0),  # never less than SERVICE_STOP_TIMEOUT_S
        (None, 30.0),  # unset: the service's default, 20 s
        ("soon", 30.0),  # refused by the service at start
        ("nan", 30.0),
    ],
)
def test_a_service_stop_waits_its_own_setting_and_overrun_never_less_than_30_s(
    local: ModuleType, monkeypatch: pytest.MonkeyPatch, started_with: str | None, timeout_s: float
) -> None:
    profile = _profile(local, "stoptest")
    proc = local.service_process(profile, "indexer")
    read: list[str] = []

    def started_value(_proc: Any, _pid: int, name: str) -> str | None:
        read.append(name)
        return started_with

    monkeypatch.setattr(local, "started_value", started_value)

    assert local.stop_timeout(proc, 12345) == timeout_s
    assert read == ["INDEXER_GRACEFUL_STOP_S"]


def test_the_reach_check_runs_as_the_service_user(
    local: ModuleType, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = _service_user(local)
    private = Path(tempfile.mkdtemp(prefix="local-stop-private-"))
    try:
        os.chmod(private, stat.S_IRWXU)  # root's alone (or ours)
        unreachable = private  # root could write it: only a probe run as the user fails
        if user is None:
            # Not root: nobody to switch to, and OpenSearch is not checked (see the launch
            # test below). The probe runs as ourselves: a folder nobody may write fails it.
            user = pwd.getpwuid(os.getuid()).pw_name
            monkeypatch.setattr(local, "switch_user", lambda name: ({}, {}))
            unreachable = private / "missing"
        executable = Path("/bin/sh")
        local.check_user_can_reach(user, executable, shared)
        with pytest.raises(local.InfraError, match=f"user {user} cannot "):
            local.check_user_can_reach(user, executable, unreachable)
    finally:
        os.rmdir(private)


@pytest.mark.parametrize("euid", [0, 1000])
def test_only_root_launches_opensearch_as_the_service_user(
    local: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int
) -> None:
    home = tmp_path / "opensearch-home"
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(local.os, "geteuid", lambda: euid)
    monkeypatch.setattr(local, "require_installed", lambda path, what: home)
    monkeypatch.setattr(local, "java_home", lambda: tmp_path / "java")
    monkeypatch.setattr(
        local, "write_opensearch_config", lambda home, config, *, data, logs: config
    )
    monkeypatch.setattr(local, "ensure_service_user", lambda: calls.append(("ensure",)))
    monkeypatch.setattr(local, "chown_tree", lambda root, user: calls.append(("chown", root, user)))
    monkeypatch.setattr(
        local,
        "check_user_can_reach",
        lambda user, executable, writable: calls.append(("reach", user, executable, writable)),
    )
    profile = _profile(local, "launchtest")

    launch = local.prepare_opensearch(profile)

    base = profile.root / "opensearch"
    if euid == 0:
        user = local.OPENSEARCH_USER
        assert launch.user == user
        assert calls == [
            ("ensure",),
            ("chown", base, user),
            ("reach", user, home / "bin" / "opensearch", base / "data"),
        ]
    else:
        # Whoever runs the script runs OpenSearch: no user made, nothing chowned or probed.
        assert launch.user is None
        assert calls == []
    assert launch.argv[0] == str(home / "bin" / "opensearch")


def test_two_ups_of_one_profile_take_turns(
    local: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each would otherwise find nothing running and start its own servers on the same ports."""
    profile = _profile(local, "locktest")
    spans: list[tuple[float, float]] = []

    def start_all(procs: list[object], started: list[object]) -> None:
        entered = time.monotonic()
        time.sleep(0.5)
        spans.append((entered, time.monotonic()))

    monkeypatch.setattr(local, "start_all", start_all)
    monkeypatch.setattr(local, "print_running", lambda procs: None)
    proc = _managed(local, profile, "x")
    ups = [threading.Thread(target=local.cmd_up, args=([proc],)) for _ in range(2)]
    for up in ups:
        up.start()
    for up in ups:
        up.join(timeout=10)

    assert len(spans) == 2
    first, second = sorted(spans)
    assert second[0] >= first[1]
    out = capsys.readouterr().out
    # The holder's pid when it has written it already, else "another scripts/local.py".
    assert re.search(
        rf"waiting for (pid {os.getpid()} \(.*\)|another scripts/local.py) to finish starting "
        "or stopping profile locktest",
        out,
    ), out
    assert (profile.run_dir / "local.lock").read_text() == ""  # no holder left behind


def test_a_restart_keeps_the_previous_log(tmp_path: Path) -> None:
    local = load_script("local.py", "local_script")
    log = tmp_path / "gateway.log"
    local.keep_previous_log(log)  # none yet: nothing to keep
    assert list(tmp_path.iterdir()) == []
    log.write_text("crashed: the reason\n")
    local.keep_previous_log(log)
    assert (tmp_path / "gateway.log.1").read_text() == "crashed: the reason\n"
    assert not log.exists()
    log.write_text("")  # an empty log does not replace the one kept
    local.keep_previous_log(log)
    assert (tmp_path / "gateway.log.1").read_text() == "crashed: the reason\n"


def test_a_crash_log_outlives_a_failed_restart_and_a_good_one(tmp_path: Path) -> None:
    # After a kill -9, a restart that failed and one that worked, the crash's log was gone:
    # only the last run's was kept.
    local = load_script("local.py", "local_script")
    log = tmp_path / "indexer.log"
    for run in ("crashed", "failed to start", "started"):
        local.keep_previous_log(log)  # as each start does, before it writes the new log
        log.write_text(f"{run}\n")
    assert (tmp_path / "indexer.log.2").read_text() == "crashed\n"
    assert (tmp_path / "indexer.log.1").read_text() == "failed to start\n"
    assert log.read_text() == "started\n"


def test_the_logs_kept_are_the_last_few_runs_newest_first(tmp_path: Path) -> None:
    local = load_script("local.py", "local_script")
    log = tmp_path / "nats.log"
    runs = 12
    for run in range(1, runs + 1):
        local.keep_previous_log(log)
        log.write_text(f"run {run}\n")
    kept = sorted(path.name for path in tmp_path.iterdir() if path.name != "nats.log")
    assert 3 <= len(kept) < runs - 1  # a few, not every one
    assert kept == sorted(f"nats.log.{number}" for number in range(1, len(kept) + 1))
    for number in range(1, len(kept) + 1):  # .1 the run before the last, and so on
        assert (tmp_path / f"nats.log.{number}").read_text() == f"run {runs - number}\n"
    assert len(kept) == local.KEPT_LOGS


def test_spawn_moves_the_last_log_aside(tmp_path: Path) -> None:
    local = load_script("local.py", "local_script")
    profile = SimpleNamespace(run_dir=tmp_path / "run", logs_dir=tmp_path / "logs", port_offset=0)
    proc = SimpleNamespace(
        profile=profile,
        log_file=tmp_path / "logs" / "x.log",
        pid_file=tmp_path / "run" / "x.pid",
        owner_tag="test",
    )
    profile.logs_dir.mkdir()
    proc.log_file.write_text("the last run's end\n")
    pid = local.spawn(proc, local.Launch(argv=("sh", "-c", "echo new run")))
    # A child that ended before spawn returned is reaped by its Popen's finaliser.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    assert (tmp_path / "logs" / "x.log.1").read_text() == "the last run's end\n"
    assert proc.log_file.read_text() == "new run\n"


def test_a_pid_file_that_cannot_be_written_leaves_no_child_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Untracked, it would hold its ports with nothing to stop it by.
    local = load_script("local.py", "local_script")
    profile = SimpleNamespace(run_dir=tmp_path / "run", logs_dir=tmp_path / "logs", port_offset=0)
    proc = SimpleNamespace(
        profile=profile,
        log_file=tmp_path / "logs" / "x.log",
        pid_file=tmp_path / "run" / "x.pid",
        owner_tag="test",
    )
    proc.pid_file.mkdir(parents=True)  # where the pid file goes, nothing can be written
    children: list[Any] = []
    real_popen = local.subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        children.append(real_popen(*args, **kwargs))
        return children[-1]

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    try:
        with pytest.raises(IsADirectoryError):
            local.spawn(proc, local.Launch(argv=("sleep", "60")))
        (child,) = children
        deadline = time.monotonic() + 5
        while child.poll() is None:
            assert time.monotonic() < deadline, "the child runs on without its pid file"
            time.sleep(0.05)
        assert [p.name for p in proc.pid_file.parent.iterdir()] == ["x.pid"]  # no temporary
    finally:
        for child in children:
            child.kill()
            child.wait()


@pytest.mark.parametrize("command", ["down", "status"])
def test_a_file_of_another_user_is_an_error_naming_it_its_owner_and_what_to_do(
    local: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    # `sudo make run`, then `make stop` as oneself: the lock file is root's.
    profile = local.PROFILES["dev"]
    lock = profile.run_dir / "local.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    owner = local.user_name(lock.stat().st_uid)

    def refused(profile: object) -> None:
        raise PermissionError(13, "Permission denied", str(lock))

    monkeypatch.setattr(local, "profile_lock", refused)
    monkeypatch.setattr(local, "cmd_status", lambda profile, procs: refused(profile))
    monkeypatch.setattr(local.os, "geteuid", lambda: 54321)

    assert local.main([command]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {lock}: Permission denied: {lock} belongs to {owner}, ")
    assert f"this runs as {local.user_name(54321)}" in err
    target = {"down": "stop", "status": "status"}[command]
    again = f"sudo make {target}" if owner == "root" else f"make {target} as {owner}"
    assert f"Run this one as {owner} too (`{again}`)" in err
    assert "Traceback" not in err


def test_a_full_disk_is_an_error_naming_the_path(
    local: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = local.LOCAL / "dev" / "logs" / "nats.log"

    def full(procs: object) -> None:
        raise OSError(28, "No space left on device", str(log))

    monkeypatch.setattr(local, "cmd_up", full)
    assert local.main(["up"]) == 1
    assert capsys.readouterr().err == (
        f"error: {log}: No space left on device: the disk (or your quota) is full; free some "
        "space and run it again\n"
    )


def test_stop_stops_what_runs_on_after_the_process_it_started_has_exited(
    local: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A gateway supervisor that crashed leaves its workers holding the ports; `stop` said
    # "stale pid file removed" and left them running.
    profile = _profile(local, "groupstop")
    proc = dataclasses.replace(
        _managed(local, profile, "gateway", stop_timeout_s=10.0), endpoints=("here",)
    )
    worker_pid = tmp_path / "worker.pid"
    script = f'sleep 60 & echo $! > "{worker_pid}"; exit 0'  # the leader exits at once
    pid = local.spawn(proc, local.Launch(argv=("sh", "-c", script)))
    try:
        deadline = time.monotonic() + 10
        # Exited: a zombie, or gone once reaped (subprocess reaps Popen objects it dropped).
        while not worker_pid.exists() or getattr(local.proc_stat(pid), "state", "Z") != "Z":
            assert time.monotonic() < deadline, "the leader did not exit"
            time.sleep(0.05)
        assert local.group_alive(pid)
        assert local.running_pid(proc) == pid
        assert "1 of its processes run on" in local.status_line(proc)[0]

        local.stop(proc)

        assert not local.group_alive(pid)
        assert not proc.pid_file.exists()
        out = capsys.readouterr().out
        assert f"gateway: stopping (pid {pid} has exited; 1 of its processes run on)" in out
        assert "gateway: stopped" in out
    finally:
        local.signal_group(pid, local.signal.SIGKILL)


def test_a_group_without_our_tag_is_not_ours(local: ModuleType, tmp_path: Path) -> None:
    profile = _profile(local, "groupstop")
    proc = _managed(local, profile, "gateway")
    proc.pid_file.parent.mkdir(parents=True)
    proc.pid_file.write_text(f"{os.getpgrp()}\n")  # a live group: this test's, without the tag
    assert local.running_pid(proc) is None


def test_a_profile_running_with_another_port_offset_is_refused_naming_that_offset(
    local: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # `PORT_OFFSET=1000 make run`, then `make status`: it probed the ports without the offset,
    # where another checkout's servers may answer as ready.
    base = _profile(local, "offsettest")
    moved = dataclasses.replace(base, port_offset=1000)  # as offset_profile records it
    running = dataclasses.replace(
        _managed(local, moved, "nats", ready_timeout_s=0.5), endpoints=("here",)
    )
    pid = local.spawn(running, local.Launch(argv=("sleep", "60")))
    try:
        unshifted = dataclasses.replace(running, profile=base)
        again = " PROFILE=offsettest PORT_OFFSET=1000"
        for command in (
            lambda: local.cmd_status(base, [unshifted]),
            lambda: local.cmd_up([unshifted]),
        ):
            with pytest.raises(local.UsageError) as caught:
                command()
            assert str(caught.value) == (
                f"profile offsettest runs with PORT_OFFSET=1000 (nats, pid {pid}), not 0: give "
                f"the make command the same (`make status{again}`), or stop it first "
                f"(`make stop{again}`)"
            )
        capsys.readouterr()
        # Not refused; not ready either (nothing answers its ready_url).
        assert local.cmd_status(moved, [running]) == local.EXIT_NOT_READY
        assert f"nats        running  pid {pid}" in capsys.readouterr().out
        local.stop(unshifted)  # stop goes by the pid file, whatever the offset
        assert not local.group_alive(pid)
    finally:
        local.signal_group(pid, local.signal.SIGKILL)


def test_opensearch_runs_on_the_java_checked_and_its_own_home_whatever_the_shell_sets(
    local: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bin/opensearch-env takes OPENSEARCH_JAVA_HOME before JAVA_HOME and OPENSEARCH_HOME as
    # given; the JVM reads JAVA_TOOL_OPTIONS and the like.
    home, java = tmp_path / "opensearch-home", tmp_path / "java-17"
    monkeypatch.setattr(local.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(local, "require_installed", lambda path, what: home)
    monkeypatch.setattr(local, "java_home", lambda: java)
    monkeypatch.setattr(
        local, "write_opensearch_config", lambda home, config, *, data, logs: config
    )
    shell = {
        "OPENSEARCH_JAVA_HOME": "/opt/java-24",
        "OPENSEARCH_HOME": "/opt/opensearch-1.3",
        "JAVA_TOOL_OPTIONS": "-Xmx64m",
        "_JAVA_OPTIONS": "-Xmx64m",
        "JDK_JAVA_OPTIONS": "-Xmx64m",
        "TELEMETRY_KEPT": "yes",
    }
    for key, value in shell.items():
        monkeypatch.setenv(key, value)
    profile = _profile(local, "envtest")
    proc = _managed(local, profile, "opensearch")
    seen = tmp_path / "env"

    launch = local.prepare_opensearch(profile)
    pid = local.spawn(proc, dataclasses.replace(launch, argv=("sh", "-c", f"env > {seen}")))
    local.wait_group_exit(pid, 10)

    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["OPENSEARCH_JAVA_HOME"] == str(java)
    assert env["JAVA_HOME"] == str(java)
    for key in ("OPENSEARCH_HOME", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"):
        assert key not in env
    assert env["TELEMETRY_KEPT"] == "yes"
    assert env["OPENSEARCH_JAVA_OPTS"] == local.OPENSEARCH_HEAP_OPTS


def test_as_root_under_umask_077_the_folders_to_opensearch_let_its_user_through(
    local: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made 0700, .local, .local/cache and .local/<profile> stopped the service user; the error
    # blamed the checkout's parents.
    cache = local.LOCAL / "cache"
    home = cache / "opensearch-home"
    monkeypatch.setattr(local.os, "geteuid", lambda: 0)
    monkeypatch.setattr(local, "CACHE", cache)
    monkeypatch.setattr(local, "require_installed", lambda path, what: home)
    monkeypatch.setattr(local, "java_home", lambda: tmp_path / "java")
    monkeypatch.setattr(
        local, "write_opensearch_config", lambda home, config, *, data, logs: config
    )
    monkeypatch.setattr(local, "ensure_service_user", lambda: None)
    monkeypatch.setattr(local, "chown_tree", lambda root, user: None)
    monkeypatch.setattr(local, "check_user_can_reach", lambda user, executable, writable: None)
    profile = _profile(local, "umasktest")
    previous = os.umask(0o077)
    try:
        (home / "bin").mkdir(parents=True)  # as `make install` made them
        local.prepare_opensearch(profile)
    finally:
        os.umask(previous)

    for folder in (local.LOCAL, cache, profile.root):
        assert folder.stat().st_mode & 0o777 == 0o755, folder
    assert (profile.root / "opensearch").stat().st_mode & 0o777 == 0o700  # chowned instead


def test_the_reach_check_names_the_first_folder_that_stops_the_user(
    local: ModuleType, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = _service_user(local)
    closed = shared / "checkout"
    executable = closed / "inner" / "opensearch"
    executable.parent.mkdir(parents=True)
    executable.write_text("")
    executable.chmod(0o755)
    mode = 0o700  # root's alone
    if user is None:  # not root: a folder closed to its owner too stops the probe
        user = pwd.getpwuid(os.getuid()).pw_name
        monkeypatch.setattr(local, "switch_user", lambda name: ({}, {}))
        mode = 0o000
    closed.chmod(mode)
    try:
        with pytest.raises(local.InfraError) as caught:
            local.check_user_can_reach(user, executable, shared)
    finally:
        closed.chmod(0o700)
    owner = local.user_name(os.getuid())
    assert str(caught.value).startswith(
        f"user {user} cannot pass through {closed} (mode {mode:04o}, owner {owner}): "
    )
    assert f"`chmod o+x {closed}`" in str(caught.value)
