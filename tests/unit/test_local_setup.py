"""`scripts/local.py`'s set-up on a fresh machine: nats-server is built with any Go (one too
old to fetch toolchains by itself, like Debian 12's 1.19, downloads the one nats-server needs
first; a stand-in `go` records what it is asked), and a damaged OpenSearch download is not
handed out again by Maven's cache."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import shutil
import stat
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]

_FAKE_GO = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  "env GOVERSION") echo "{version}" ;;
  "env GOARCH") echo amd64 ;;
  "mod download -json "*) echo '{answer}' ;;
esac
"""


def _load_local() -> ModuleType:
    return load_script("local.py", "local_script_setup")


def _fake_go(tmp_path: Path, version: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A `go` alone on PATH answering as `version`; a toolchain folder as the module cache
    has it; the log of the calls."""
    toolchain = tmp_path / "toolchain"
    (toolchain / "bin").mkdir(parents=True)
    (toolchain / "pkg" / "tool" / "linux_amd64").mkdir(parents=True)
    for program in (toolchain / "bin" / "go", toolchain / "pkg/tool/linux_amd64/compile"):
        program.write_text("")
        program.chmod(0o444)  # as unzipped from a module: not executable
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    answer = json.dumps({"Path": "golang.org/toolchain", "Dir": str(toolchain)})
    go = bin_dir / "go"
    go.write_text(_FAKE_GO.format(log=log, version=version, answer=answer))
    go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    return toolchain, log


@pytest.mark.parametrize("version", ["go1.19.8", "go1.20rc1"])
def test_an_old_go_fetches_the_toolchain_nats_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    local = _load_local()
    toolchain, log = _fake_go(tmp_path, version, monkeypatch)

    go = local.find_go()

    assert go == str(toolchain / "bin" / "go")
    module = f"golang.org/toolchain@v0.0.1-{local.GO_TOOLCHAIN}.linux-amd64"
    assert f"mod download -json {module}" in log.read_text().splitlines()
    for program in (toolchain / "bin" / "go", toolchain / "pkg/tool/linux_amd64/compile"):
        assert program.stat().st_mode & stat.S_IXUSR


def test_a_go_that_fetches_toolchains_itself_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _load_local()
    _, log = _fake_go(tmp_path, "go1.21.0", monkeypatch)

    assert local.find_go() == str(tmp_path / "bin" / "go")
    assert "mod download" not in log.read_text()


def test_a_damaged_opensearch_zip_is_dropped_from_mavens_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _load_local()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(local, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(local, "opensearch_home", lambda: tmp_path / "cache" / "opensearch")
    monkeypatch.setattr(local, "java_home", lambda: Path("/usr"))
    monkeypatch.setattr(local.shutil, "which", lambda name, **_: f"/usr/bin/{name}")
    cached = local.maven_cached_opensearch()
    assert cached.is_relative_to(tmp_path / "home" / ".m2" / "repository" / "org" / "opensearch")
    seen: list[list[str]] = []

    def maven(argv: list[str], **_: object) -> None:
        # What a half-finished download leaves: Maven copies it from its cache every time.
        seen.append([str(arg) for arg in argv])
        cached.mkdir(parents=True)
        output = next(a for a in seen[-1] if a.startswith("-DoutputDirectory="))
        folder = Path(output.split("=", 1)[1])
        folder.mkdir(parents=True)
        (folder / f"opensearch-{local.OPENSEARCH_VERSION}.zip").write_bytes(b"PK\x03\x04 cut")

    monkeypatch.setattr(local, "run", maven)

    with pytest.raises(local.InfraError, match=r"damaged .*run the command again"):
        local.install_opensearch()
    assert not cached.exists()
    assert not (tmp_path / "cache" / "opensearch").exists()
    assert "--strict-checksums" in seen[0]


class _Health(http.server.BaseHTTPRequestHandler):
    """OpenSearch's cluster health as a node with one red index answers it."""

    def do_GET(self) -> None:
        if "wait_for_status" in self.path:
            status, body = 408, {"status": "red", "timed_out": True}
        else:
            indices = {"telemetry-2026-01-02": {"status": "red"}, "telemetry-2026-01-03": {}}
            status, body = 200, {"status": "red", "indices": indices}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_a_node_that_stays_red_is_reported_with_its_red_indices_and_what_to_do() -> None:
    local = _load_local()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        profile = dataclasses.replace(local.PROFILES["test"], opensearch_port=server.server_port)
        proc = dataclasses.replace(local.opensearch_process(profile), ready_timeout_s=0.3)
        with pytest.raises(local.InfraError) as caught:
            local.wait_ready(proc, os.getpgrp())  # a group that is alive: this one
    finally:
        server.shutdown()
        server.server_close()
    message = str(caught.value)
    assert message.startswith("OpenSearch did not become ready in 0 s. ")
    assert "cluster stays red: a shard of telemetry-2026-01-02 has no copy assigned" in message
    assert "telemetry-2026-01-03" not in message
    assert "rm -rf .local/test/opensearch/data" in message


@pytest.fixture
def keys_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, Path]:
    """local.py with the dev profile's keys file under tmp_path."""
    local = load_script("local.py", "local_script")
    path = tmp_path / "dev" / "keys.json"
    monkeypatch.setattr(local, "keys_file", lambda profile: path)
    return local, path


def test_dev_keys_are_made_once_private_and_whole(keys_at: tuple[ModuleType, Path]) -> None:
    local, path = keys_at
    first = local.dev_keys(local.PROFILES["dev"])
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temporary left
    (write_key,) = first["write_keys"]
    assert write_key.startswith("wk_")
    assert local.dev_keys(local.PROFILES["dev"]) == first  # kept, not made again


def test_dev_keys_cut_off_while_written_leave_no_file(
    keys_at: tuple[ModuleType, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    local, path = keys_at
    real_fdopen = os.fdopen

    def cut_off(fd: int, mode: str) -> object:
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(local.os, "fdopen", cut_off)
    with pytest.raises(KeyboardInterrupt):
        local.dev_keys(local.PROFILES["dev"])
    assert list(path.parent.iterdir()) == []
    monkeypatch.setattr(local.os, "fdopen", real_fdopen)
    assert local.dev_keys(local.PROFILES["dev"])["write_keys"]  # the next run makes them


# The shell's own printf: the tests leave nothing else on PATH.
_FAKE_JAVA = """#!/bin/sh
printf '%s\\n' >&2 \\
  'Property settings:' \\
  '    file.encoding = UTF-8' \\
  '    java.home = {home}' \\
  '    java.specification.version = {spec}' \\
  '    java.version = {major}.0.1' \\
  '' \\
  'openjdk version "{major}.0.1" 2025-01-21'
"""


def _fake_java(program: Path, home: Path, major: int) -> None:
    """`program` answering as the Java `major` installed at `home` (which gets a bin/java)."""
    for java in (program, home / "bin" / "java"):
        java.parent.mkdir(parents=True, exist_ok=True)
        spec = f"1.{major}" if major < 9 else str(major)
        java.write_text(_FAKE_JAVA.format(home=home, spec=spec, major=major))
        java.chmod(0o755)


@pytest.fixture
def no_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """local.py with no Java but those a test makes: none on PATH, in JAVA_HOME or the JVM
    folder."""
    local = _load_local()
    (tmp_path / "path").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(local, "JVM_DIR", tmp_path / "jvm", raising=False)
    return local


def test_a_java_shim_on_path_is_asked_for_its_home(no_java: ModuleType, tmp_path: Path) -> None:
    # An asdf or jenv shim: <shims>/../bin/java is no Java; the shim knows which one it runs.
    real = tmp_path / "installs" / "java" / "17.0.2"
    _fake_java(tmp_path / "path" / "java", real, 17)

    assert no_java.java_home() == real


def test_without_a_java_in_range_the_javas_found_are_listed(
    no_java: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jdk24, jdk11, jdk8 = tmp_path / "jdk-24", tmp_path / "jvm" / "jdk-11", tmp_path / "jvm" / "j8"
    _fake_java(jdk24 / "bin" / "java", jdk24, 24)
    _fake_java(jdk11 / "bin" / "java", jdk11, 11)
    _fake_java(jdk8 / "bin" / "java", jdk8, 8)
    monkeypatch.setenv("JAVA_HOME", str(jdk24))

    with pytest.raises(no_java.InfraError) as caught:
        no_java.java_home()
    message = str(caught.value)
    assert message.startswith(
        f"no Java 17 to 23 found, only Java 24 ({jdk24}), Java 8 ({jdk8}), Java 11 ({jdk11}): "
        "OpenSearch 2.19.6 runs on Java 17 to 23"
    )
    assert "install openjdk-17-jre-headless, or set JAVA_HOME" in message
    _fake_java(jdk11 / "bin" / "java", tmp_path / "jvm" / "jdk-21", 21)  # one in range
    assert no_java.java_home() == tmp_path / "jvm" / "jdk-21"


def _settings_by_service() -> dict[str, set[str]]:
    """The variables each service reads, as its config declares them."""
    from enricher.config import Config as EnricherConfig
    from gateway.config import GatewayConfig
    from indexer.config import Config as IndexerConfig
    from pipeline.config import describe

    configs = {"gateway": GatewayConfig, "enricher": EnricherConfig, "indexer": IndexerConfig}
    return {service: {name for name, _, _ in describe(c)} for service, c in configs.items()}


def _declared_settings() -> set[str]:
    """Every variable the services read, as their configs declare them."""
    return set().union(*_settings_by_service().values())


def test_a_setting_applies_to_the_services_whose_config_reads_it() -> None:
    # OPENSEARCH_TIMEOUT_S=5 make run, the gateway running: it was warned of as a setting
    # the gateway "does not get", though only the indexer reads it.
    local = _load_local()
    by_service = _settings_by_service()
    assert set(by_service) == set(local.SERVICES)

    for name in sorted(_declared_settings()):
        readers = {service for service, names in by_service.items() if name in names}
        applies = {service for service in local.SERVICES if local.setting_applies(name, service)}
        assert applies == readers, name
    assert set(local.SETTING_READERS) <= _declared_settings()
    assert local.setting_applies("OPENSEARCH_TIMEOUT_S", "gateway") is False


def test_every_address_a_service_listens_on_is_loopback_whatever_the_shell_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # README: everything binds to 127.0.0.1. GATEWAY_HOST=0.0.0.0 in the shell put the dev
    # services, with the dev keys, on every interface.
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)
    hosts = sorted(name for name in _declared_settings() if name.endswith("_HOST"))
    assert "GATEWAY_HOST" in hosts
    assert "INDEXER_GRPC_HOST" in hosts
    for name in hosts:
        monkeypatch.setenv(name, "0.0.0.0")
    monkeypatch.setenv("ENRICHER_FUTURE_HOST", "0.0.0.0")  # one a later version may read
    for profile in (local.PROFILES["dev"], local.PROFILES["test"]):
        for service in local.SERVICES:
            env = local.service_process(profile, service).prepare().env
            for name in [*hosts, "ENRICHER_FUTURE_HOST"]:
                assert env[name] == "127.0.0.1", (service, name)


def _local_with_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]
) -> ModuleType:
    """local.py under `tmp_path`, with `settings` the only pipeline settings in the environment."""
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)
    for name in list(os.environ):
        if local.is_pipeline_setting(name):
            monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return local


def _prepared_for_nothing(local: ModuleType) -> list[Any]:
    """The dev profile's processes, each prepared to run `true` (nothing is installed)."""
    launch = local.Launch(argv=("true",))
    return [
        dataclasses.replace(proc, prepare=lambda: launch)
        for proc in local.managed_processes(local.PROFILES["dev"])
    ]


def test_the_settings_taken_from_the_shell_are_printed_once_before_the_services_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # STREAM_REPLICAS=3 left over in the shell: dev never got ready, with nothing saying why.
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)
    for name in list(os.environ):
        if name in _declared_settings() or name.startswith(("OTEL_", "DLQ_")):
            monkeypatch.delenv(name)
    for name, value in {
        "STREAM_REPLICAS": "3",
        "GATEWAY_WORKERS": "4",
        "LOG_FORMAT": "text",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer abc",
        "OPENSEARCH_PASSWORD": "hunter2",
        "GATEWAY_HOST": "0.0.0.0",  # set aside: not what the services take
        "NATS_URL": "nats://elsewhere:4222",  # set aside too
        "OPENSEARCH_JAVA_HOME": "/opt/java",  # OpenSearch's, not the services'
    }.items():
        monkeypatch.setenv(name, value)
    procs = _prepared_for_nothing(local)
    monkeypatch.setattr(local, "running_pid", lambda proc: None)
    monkeypatch.setattr(local, "check_ports_free", lambda proc: None)
    monkeypatch.setattr(
        local, "start", lambda proc, launch=None: print(f"starting {proc.name}") or True
    )

    local.start_all(procs, [])

    out = capsys.readouterr().out
    line = (
        "the services take these settings from the environment: GATEWAY_WORKERS=4 "
        "LOG_FORMAT=text OPENSEARCH_PASSWORD=(set) OTEL_EXPORTER_OTLP_HEADERS=(set) "
        "STREAM_REPLICAS=3\n"
    )
    assert out.count(line) == 1
    assert out.index(line) < out.index("starting nats")
    assert "hunter2" not in out
    assert "abc" not in out
    assert [name for name in _declared_settings() if not local.is_pipeline_setting(name)] == []


def test_a_setting_a_running_service_was_not_started_with_is_warned_of_not_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # INDEXER_RETENTION_DAYS=7 make run, the indexer running: "the services take these
    # settings" named it though it never reached the indexer; with every service running,
    # nothing was said at all.
    settings = {"INDEXER_RETENTION_DAYS": "7", "LOG_FORMAT": "text", "GATEWAY_WORKERS": "4"}
    local = _local_with_settings(tmp_path, monkeypatch, settings)
    procs = _prepared_for_nothing(local)
    running = {"nats": 11, "opensearch": 12, "indexer": 13, "enricher": 14}
    started_with = {("enricher", "LOG_FORMAT"): "text"}  # the enricher has it already
    monkeypatch.setattr(local, "running_pid", lambda proc: running.get(proc.name))
    monkeypatch.setattr(
        local, "started_value", lambda proc, pid, name: started_with.get((proc.name, name))
    )
    monkeypatch.setattr(local, "check_ports_free", lambda proc: None)
    monkeypatch.setattr(local, "start", lambda proc, launch=None: proc.name not in running)

    local.start_all(procs, [])

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "gateway takes these settings from the environment: GATEWAY_WORKERS=4 LOG_FORMAT=text",
        "warning: indexer runs already (pid 13) and does not get INDEXER_RETENTION_DAYS=7 "
        "LOG_FORMAT=text: it keeps the settings it was started with; `make stop` first to "
        "start it with these",
    ]

    running["gateway"] = 15  # every service runs: the warning stays, nothing is announced
    local.start_all(procs, [])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("warning: indexer runs already (pid 13)")
    assert lines[1] == (
        "warning: gateway runs already (pid 15) and does not get GATEWAY_WORKERS=4 "
        "LOG_FORMAT=text: it keeps the settings it was started with; `make stop` first to "
        "start it with these"
    )
    assert len(lines) == 2


def test_a_url_taken_from_the_shell_is_printed_without_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = "https://tracer:s3cret@collector:4317/?token=s3cret#s3cret"
    settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_EXPORTER": "otlp"}
    local = _local_with_settings(tmp_path, monkeypatch, settings)

    shown = local.inherited_settings(local.PROFILES["dev"])

    assert shown == [
        "OTEL_EXPORTER_OTLP_ENDPOINT='https://***@collector:4317/?***#***'",
        "OTEL_TRACES_EXPORTER=otlp",
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("http://collector:4317", "http://collector:4317"),
        ("nats://a:b@h1:4222,nats://h2:4222", "nats://***@h1:4222,nats://h2:4222"),
        ("http://[s3cret", "***"),
        ("text", "text"),
    ],
)
def test_shown_value_leaves_out_what_a_url_may_hide(value: str, shown: str) -> None:
    assert _load_local().shown_value(value) == shown


# A `go` that records the Go variables of each call's environment, and "builds" nats-server.
_FAKE_GO_BUILD = """#!/bin/sh
echo "$1 GOFLAGS=$GOFLAGS GOOS=$GOOS GOARCH=$GOARCH" >> "{log}"
case "$*" in
  "env GOVERSION") echo go1.22.0 ;;
  "install "*) echo built > "$GOBIN/nats-server" ;;
esac
"""


def test_nats_is_built_for_this_machine_whatever_go_variables_the_shell_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GOFLAGS=-mod=vendor (a Go project's) failed `go install module@version`; the toolchain
    # download already left it out.
    local = _load_local()
    monkeypatch.setattr(local, "CACHE", tmp_path / "cache")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(_FAKE_GO_BUILD.format(log=log))
    go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setenv("GOFLAGS", "-mod=vendor")
    monkeypatch.setenv("GOOS", "darwin")
    monkeypatch.setenv("GOARCH", "arm64")
    binary = tmp_path / "cache" / "nats" / "nats-server"

    local.build_nats(binary)

    assert binary.read_text() == "built\n"
    assert log.read_text().splitlines() == [
        "env GOFLAGS= GOOS= GOARCH=",
        "install GOFLAGS= GOOS= GOARCH=",
    ]


def test_a_missing_prerequisite_of_any_process_fails_before_one_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make run` without Java started NATS, failed at OpenSearch, and left NATS running.
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path)

    def no_java() -> object:
        raise local.InfraError("Java not found")

    nats, opensearch, *services = local.managed_processes(local.PROFILES["dev"])
    procs = [
        dataclasses.replace(nats, prepare=lambda: local.Launch(argv=("true",))),
        dataclasses.replace(opensearch, prepare=no_java),
        *services,
    ]
    spawned: list[str] = []
    monkeypatch.setattr(local, "running_pid", lambda proc: None)
    monkeypatch.setattr(local, "check_ports_free", lambda proc: None)
    monkeypatch.setattr(local, "spawn", lambda proc, launch: spawned.append(proc.name) or 1)
    monkeypatch.setattr(local, "wait_ready", lambda proc, pid: None)
    started: list[object] = []

    with pytest.raises(local.InfraError, match="Java not found"):
        local.start_all(procs, started)
    assert spawned == []
    assert started == []


def test_the_opensearch_config_is_copied_whole_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy cut short (Ctrl-C) was used as it was for ever after, as was one copied from an
    # older OPENSEARCH_VERSION's home.
    local = _load_local()
    monkeypatch.setattr(local, "LOCAL", tmp_path / "local")
    home = tmp_path / "opensearch-home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "jvm.options").write_text("-XX:HeapDumpPath=data\n")
    for name in ("opensearch.yml", "log4j2.properties"):
        (home / "config" / name).write_text(f"# {name}\n")
    monkeypatch.setattr(local, "require_installed", lambda path, what: home)
    monkeypatch.setattr(local, "java_home", lambda: tmp_path / "java")
    monkeypatch.setattr(local.os, "geteuid", lambda: 1000)
    profile = local.Profile("configtest", 1, 2, 3, 4, (5, 6), (7, 8), (9, 10))
    real_copytree = shutil.copytree

    def cut_short(src: Path, dst: Path, **options: object) -> object:
        copied: list[str] = []

        def copy_one(source: str, target: str) -> object:
            if copied:
                raise KeyboardInterrupt  # Ctrl-C after the first file
            copied.append(source)
            return shutil.copy2(source, target)

        return real_copytree(src, dst, copy_function=copy_one, **options)

    monkeypatch.setattr(local.shutil, "copytree", cut_short)
    with pytest.raises(KeyboardInterrupt):
        local.prepare_opensearch(profile)
    monkeypatch.setattr(local.shutil, "copytree", real_copytree)

    config = Path(local.prepare_opensearch(profile).env["OPENSEARCH_PATH_CONF"])
    assert sorted(p.name for p in config.iterdir()) == [
        "jvm.options",
        "log4j2.properties",
        "opensearch.yml",
    ]
    assert config.name == f"config-{local.OPENSEARCH_VERSION}"
    assert (config / "jvm.options").read_text() == (
        f"-XX:HeapDumpPath={profile.root / 'opensearch' / 'data'}\n"
    )
    assert [p.name for p in config.parent.iterdir() if p.name.startswith(".")] == []

    (home / "config" / "opensearch.yml").write_text("# the next version's\n")
    monkeypatch.setattr(local, "OPENSEARCH_VERSION", "2.19.99")
    newer = Path(local.prepare_opensearch(profile).env["OPENSEARCH_PATH_CONF"])
    assert newer.name == "config-2.19.99"
    assert (newer / "opensearch.yml").read_text() == "# the next version's\n"
