"""Local infrastructure for the telemetry pipeline: NATS JetStream and OpenSearch under `.local/`.

    python scripts/local.py install          fetch/build nats-server and OpenSearch once
    python scripts/local.py up [OPTIONS]     start what is not running, wait until ready
    python scripts/local.py down [OPTIONS]   stop what `up` started (by pid)
    python scripts/local.py status [OPTIONS] what runs, pids, ports, readiness (exit 3 if
                                             any process is stopped or not ready)
    python scripts/local.py exec [OPTIONS] -- CMD...
                                             start what is missing, run CMD with NATS_URL and
                                             OPENSEARCH_URL set, then stop only what it started
    OPTIONS: --profile dev|test (default dev), --only NAMES (e.g. nats,opensearch),
             --port-offset N (default $PORT_OFFSET or 0: every port of the profile plus N)

Everything lives under `.local/`: downloads in `cache/`, and per profile `<profile>/run/*.pid`,
`<profile>/logs/<name>.log` (each process's output; `<name>.log.1` to `.5`, those of the runs
before, newest first) and `<profile>/{nats,opensearch}/` (data).
The `dev` and `test` profiles use different ports and folders, so both can run at once; a second
checkout (a git worktree) runs beside the first with a port offset. In one checkout, one `exec`
at a time uses a profile's servers: a second one waits, rather than have the first stop them
under it.

Exit codes: 0 done (`status`: every process runs and is ready), 1 failed (the message says why),
2 a usage error, 3 `status` lists a process that is stopped or not ready (as `tpipe status
--once` exits when a part is down); `exec` exits with its command's code (130 or 143 when
interrupted).

Standard library only: this runs before (and without) the project's dependencies. Linux only
(process checks read /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import fnmatch
import http.client
import io
import json
import math
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / ".local"
CACHE = LOCAL / "cache"
# Stable names for installed tools (symlinks into CACHE), e.g. for tests that run their own NATS.
BIN = LOCAL / "bin"

HOST = "127.0.0.1"

NATS_VERSION = "v2.15.2"
NATS_MODULE = "github.com/nats-io/nats-server/v2"
# The Go that builds NATS_VERSION (it needs Go 1.26+). Go 1.21+ fetches it by itself
# (GOTOOLCHAIN=auto); an older Go, like Debian 12's 1.19, gets it as a module from the proxy.
GO_TOOLCHAIN = "go1.26.8"
# nats-server is built outside any module, for this machine: the shell's GOFLAGS (-mod=vendor,
# say) would fail the build, and a GOOS or GOARCH would cross-compile it.
GO_UNSET_ENV = ("GOFLAGS", "GOOS", "GOARCH")

OPENSEARCH_VERSION = "2.19.6"
OPENSEARCH_ARTIFACT = (
    f"org.opensearch.distribution.integ-test-zip:opensearch:{OPENSEARCH_VERSION}:zip"
)
MAVEN_COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy"
OPENSEARCH_HEAP_OPTS = "-Xms512m -Xmx1g"
JVM_DIR = Path("/usr/lib/jvm")
# Read by every JVM at start: neither OpenSearch nor a probe of a Java's version takes them.
JVM_OPTION_VARIABLES = ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")
JAVA_PROBE_TIMEOUT_S = 30.0
# What OpenSearch must not take from our environment: its scripts read OPENSEARCH_* (a home or a
# Java other than the ones checked here), and every JVM the JAVA_TOOL_OPTIONS-like variables.
OPENSEARCH_UNSET_ENV = (
    "OPENSEARCH_*",
    *JVM_OPTION_VARIABLES,
    "JAVA_OPTS",
    "CLASSPATH",
    "KEYSTORE_PASSWORD",
)
# OpenSearch refuses to run as root; when we are root it runs as this system user.
OPENSEARCH_USER = "telemetry-os"
# OpenSearch 2.19 needs the Java security manager, which Java 24 removed.
JAVA_MIN_MAJOR = 17
JAVA_MAX_MAJOR = 23

NATS_READY_TIMEOUT_S = 30.0
OPENSEARCH_READY_TIMEOUT_S = 120.0
NATS_STOP_TIMEOUT_S = 15.0
OPENSEARCH_STOP_TIMEOUT_S = 60.0
SERVICE_READY_TIMEOUT_S = 60.0
# A service's stop gets this at least, and its own graceful-stop setting plus
# SERVICE_STOP_OVERRUN_S when that is longer (see ManagedProcess.stop_setting).
SERVICE_STOP_TIMEOUT_S = 30.0
# How far a service's stop may run past its graceful-stop setting: pipeline.service's
# STOP_OVERRUN_S (this script imports nothing of the project's; a test checks they agree).
SERVICE_STOP_OVERRUN_S = 7.0
# How long `exec`'s command (pytest) gets to clean up after an interrupt before it is killed:
# its fixtures stop the private servers the tests started, OpenSearch nodes included.
EXEC_CLEANUP_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 0.5
HTTP_PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 25
# The logs of earlier runs kept beside each process's own: <name>.log.1 (the last run's) to
# <name>.log.5 (the oldest), so that a crash's log outlives a few restarts after it.
KEPT_LOGS = 5
# Set in the environment of every process we start: how `down` knows a pid is still ours.
OWNER_ENV = "TELEMETRY_LOCAL_PROCESS"
# Beside it: the PORT_OFFSET it was started with, so that no command probes other ports for it.
PORT_OFFSET_ENV = "TELEMETRY_LOCAL_PORT_OFFSET"


class InfraError(Exception):
    """A failure whose message says what went wrong and what to do about it."""


class UsageError(InfraError):
    """A command line or setting (PORT_OFFSET) that cannot work as given; exit code 2, as for
    argparse's own usage errors."""


# `status`'s exit code when a process it lists is stopped or not ready: what `tpipe status
# --once` exits with when a part is down, tpipe.errors.EXIT_UNAVAILABLE (this script imports
# nothing of the project's; a test checks they agree).
EXIT_NOT_READY = 3


# --- profiles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One isolated set of ports and folders; `dev` for `make run`, `test` for `make test`."""

    name: str
    nats_port: int
    nats_monitor_port: int
    opensearch_port: int
    opensearch_transport_port: int
    # (HTTP port, gRPC port) of each service.
    gateway_ports: tuple[int, int]
    enricher_ports: tuple[int, int]
    indexer_ports: tuple[int, int]
    # What was added to each port of the named profile (PORT_OFFSET).
    port_offset: int = 0

    @property
    def root(self) -> Path:
        return LOCAL / self.name

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.nats_port}"

    @property
    def opensearch_url(self) -> str:
        return f"http://{HOST}:{self.opensearch_port}"

    def client_env(self) -> dict[str, str]:
        """The variables that point clients (tests, services) at this profile's servers."""
        return {"NATS_URL": self.nats_url, "OPENSEARCH_URL": self.opensearch_url}


def loopback_no_proxy(environ: Mapping[str, str]) -> dict[str, str]:
    """NO_PROXY and no_proxy extended with the loopback names: every server here listens on
    loopback, and an HTTP proxy taken from the environment (urllib, httpx, aiohttp and gRPC
    all read one) must not carry requests to them."""
    listed = [
        name.strip()
        for key in ("NO_PROXY", "no_proxy")
        for name in environ.get(key, "").split(",")
        if name.strip()
    ]
    names = list(dict.fromkeys([*listed, HOST, "localhost", "::1"]))
    value = ",".join(names)
    return {"NO_PROXY": value, "no_proxy": value}


MAX_PORT = 65535


def named_ports(profile: Profile) -> list[tuple[str, int]]:
    """Every port of `profile`, each with what listens on it."""
    return [
        ("NATS client", profile.nats_port),
        ("NATS monitoring", profile.nats_monitor_port),
        ("OpenSearch HTTP", profile.opensearch_port),
        ("OpenSearch transport", profile.opensearch_transport_port),
        ("gateway HTTP", profile.gateway_ports[0]),
        ("gateway gRPC", profile.gateway_ports[1]),
        ("enricher HTTP", profile.enricher_ports[0]),
        ("enricher gRPC", profile.enricher_ports[1]),
        ("indexer HTTP", profile.indexer_ports[0]),
        ("indexer gRPC", profile.indexer_ports[1]),
    ]


def offset_profile(profile: Profile, offset: int) -> Profile:
    """`profile` with every port moved up by `offset`; an offset that moves a port past 65535
    is a usage error naming that port."""
    if offset < 0:
        raise UsageError(f"PORT_OFFSET must be 0 or more, not {offset}")
    for what, port in named_ports(profile):
        if port + offset > MAX_PORT:
            highest = max(port for _, port in named_ports(profile))
            raise UsageError(
                f"PORT_OFFSET={offset} moves the {what} port of profile {profile.name} from "
                f"{port} to {port + offset}, past {MAX_PORT}: at most "
                f"{MAX_PORT - highest} for this profile"
            )
    if offset == 0:
        return profile
    return dataclasses.replace(
        profile,
        port_offset=profile.port_offset + offset,
        nats_port=profile.nats_port + offset,
        nats_monitor_port=profile.nats_monitor_port + offset,
        opensearch_port=profile.opensearch_port + offset,
        opensearch_transport_port=profile.opensearch_transport_port + offset,
        gateway_ports=(profile.gateway_ports[0] + offset, profile.gateway_ports[1] + offset),
        enricher_ports=(profile.enricher_ports[0] + offset, profile.enricher_ports[1] + offset),
        indexer_ports=(profile.indexer_ports[0] + offset, profile.indexer_ports[1] + offset),
    )


PROFILES = {
    "dev": Profile("dev", 4222, 8222, 9200, 9300, (3000, 50051), (8081, 50052), (8082, 50053)),
    "test": Profile(
        "test", 14222, 18222, 19200, 19300, (13000, 15051), (18081, 15052), (18082, 15053)
    ),
}


# --- managed processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to start a process: argv, extra environment, working directory, the user to run it
    as (root only; None: as whoever runs this script), and the variables of our environment it
    must not inherit (names or fnmatch patterns)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    user: str | None = None
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class ManagedProcess:
    """A background process that `up` starts, `down` stops and `status` reports.

    `prepare` checks prerequisites, creates folders and returns how to start the process; it
    runs only on start, so `down` and `status` work even when prerequisites are missing.
    Ready means its readiness check, `ready_url`, answers HTTP 200: a service's /readyz,
    NATS's /healthz with JetStream enabled, OpenSearch's cluster health at yellow or better.
    """

    name: str
    title: str
    profile: Profile
    prepare: Callable[[], Launch]
    ready_url: str
    ports: tuple[int, ...]
    endpoints: tuple[str, ...]
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0
    # The variable bounding its own graceful stop (None: it has none). As the environment it
    # was started with sets it, plus SERVICE_STOP_OVERRUN_S, it lengthens stop_timeout_s.
    stop_setting: str | None = None
    # Why a process that runs is still not ready, when it can tell (None: no more to say).
    not_ready_reason: Callable[[], str | None] = lambda: None

    @property
    def pid_file(self) -> Path:
        return self.profile.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.profile.logs_dir / f"{self.name}.log"

    @property
    def owner_tag(self) -> str:
        return f"{REPO}:{self.profile.name}:{self.name}"


def managed_processes(profile: Profile) -> list[ManagedProcess]:
    """Everything `up` starts, in start order (`down` stops in reverse). Register new ones here."""
    return [
        nats_process(profile),
        opensearch_process(profile),
        *(service_process(profile, name) for name in SERVICES),
    ]


# --- the pipeline's services ------------------------------------------------------------------

SERVICES = ("indexer", "enricher", "gateway")  # start order: the query backend before the gateway
# The setting bounding each service's graceful stop.
GRACEFUL_STOP_SETTINGS = {
    "gateway": "GATEWAY_GRACEFUL_STOP_S",
    "enricher": "ENRICHER_STOP_TIMEOUT_S",
    "indexer": "INDEXER_GRACEFUL_STOP_S",
}
DEV_APP_ID = "demo-app"


def service_ports(profile: Profile, name: str) -> tuple[int, int]:
    ports: dict[str, tuple[int, int]] = {
        "gateway": profile.gateway_ports,
        "enricher": profile.enricher_ports,
        "indexer": profile.indexer_ports,
    }
    return ports[name]


def keys_file(profile: Profile) -> Path:
    return profile.root / "keys.json"


def dev_keys(profile: Profile) -> dict[str, dict[str, str]]:
    """The profile's write and read keys, created once (random) in an ignored file."""
    path = keys_file(profile)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = {
            "write_keys": {f"wk_{secrets.token_urlsafe(18)}": DEV_APP_ID},
            "read_keys": {f"rk_{secrets.token_urlsafe(18)}": "dev-reader"},
        }
        text = json.dumps(keys, indent=2) + "\n"
        # Written whole or not at all: a cut-off file would stop every later run.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    loaded: dict[str, dict[str, str]] = json.loads(path.read_text())
    return loaded


# The addresses the services listen on: loopback in the local profiles, whatever the shell says
# (GATEWAY_HOST=0.0.0.0 there would offer the dev keys' services on every interface).
SERVICE_HOST_SETTINGS = (
    "GATEWAY_HOST",
    "ENRICHER_HTTP_HOST",
    "ENRICHER_GRPC_HOST",
    "INDEXER_HTTP_HOST",
    "INDEXER_GRPC_HOST",
)
# The services' settings (pipeline/settings.py, */config.py): every variable with one of these
# prefixes, and these names.
PIPELINE_SETTING_PREFIXES = (
    "GATEWAY_",
    "ENRICHER_",
    "INDEXER_",
    "STREAM_",
    "DLQ_",
    "OTEL_",
    "LOG_",
)
OPENSEARCH_SETTINGS = (
    "OPENSEARCH_URL",
    "OPENSEARCH_USERNAME",
    "OPENSEARCH_PASSWORD",
    "OPENSEARCH_CA_CERTS",
    "OPENSEARCH_VERIFY_CERTS",
    "OPENSEARCH_TIMEOUT_S",
)
PIPELINE_SETTING_NAMES = ("NATS_URL", "NATS_CONNECT_TIMEOUT_S", *OPENSEARCH_SETTINGS)
# The settings without a service's prefix that only some services read, and which ones
# (the indexer alone talks to OpenSearch); every other one (LOG_..., STREAM_..., NATS_...,
# OTEL_...) every service reads. local.py runs without the venv, so it cannot ask the
# services' Config classes: tests/unit/test_local_setup.py checks this against them.
SETTING_READERS: dict[str, tuple[str, ...]] = dict.fromkeys(OPENSEARCH_SETTINGS, ("indexer",))
# Settings whose values are not printed.
SECRET_SETTING_WORDS = ("KEY", "PASSWORD", "SECRET", "TOKEN", "HEADERS", "CREDENTIAL")


def is_pipeline_setting(name: str) -> bool:
    return name.startswith(PIPELINE_SETTING_PREFIXES) or name in PIPELINE_SETTING_NAMES


def service_env(profile: Profile, name: str) -> dict[str, str]:
    """What a service's environment is given on top of ours: where the servers and the other
    services are, its ports, and loopback for every address it could listen on."""
    http_port, grpc_port = service_ports(profile, name)
    prefix = name.upper()
    hosts = [key for key in os.environ if is_pipeline_setting(key) and key.endswith("_HOST")]
    env = {
        **profile.client_env(),
        **dict.fromkeys([*SERVICE_HOST_SETTINGS, *hosts], HOST),
        f"{prefix}_HTTP_PORT": str(http_port),
        f"{prefix}_GRPC_PORT": str(grpc_port),
    }
    if name == "gateway":
        env["GATEWAY_KEYS_FILE"] = str(keys_file(profile))
        env["GATEWAY_QUERY_TARGET"] = f"{HOST}:{profile.indexer_ports[1]}"
    return env


def prepare_service(profile: Profile, name: str) -> Launch:
    if name == "gateway":
        dev_keys(profile)  # the file GATEWAY_KEYS_FILE names
    return Launch(argv=(sys.executable, "-m", "tpipe", name), env=service_env(profile, name))


def inherited_settings(profile: Profile) -> list[str]:
    """The services' settings they take from our environment as they are (`NAME=value`, a
    secret's value left out), those local.py sets aside."""
    return [shown_setting(key) for key in inherited_setting_names(profile)]


def inherited_setting_names(profile: Profile) -> list[str]:
    """The names of the settings the services take from our environment as they are."""
    pinned = {key for name in SERVICES for key in service_env(profile, name)}
    return sorted(key for key in os.environ if is_pipeline_setting(key) and key not in pinned)


def shown_setting(key: str) -> str:
    """`NAME=value` of our environment's setting `key` as printed, a secret's value left out."""
    if any(word in key for word in SECRET_SETTING_WORDS):
        return f"{key}=(set)"
    return f"{key}={shlex.quote(shown_value(os.environ[key]))}"


def setting_applies(key: str, service: str) -> bool:
    """Whether `service` reads the setting `key`: its own (INDEXER_... for the indexer), one
    SETTING_READERS gives it (OPENSEARCH_... for the indexer), or one no service's prefix
    claims and SETTING_READERS does not list (LOG_FORMAT, STREAM_REPLICAS): every service's."""
    owner = next((name for name in SERVICES if key.startswith(f"{name.upper()}_")), None)
    if owner is not None:
        return owner == service
    return service in SETTING_READERS.get(key, SERVICES)


def shown_value(value: str) -> str:
    """A setting's value as printed: each URL in it without its user, password, query or
    fragment (OTEL_EXPORTER_OTLP_ENDPOINT=https://user:token@collector:4317 is no secret
    by its name), `***` in their place."""
    return ",".join(_shown_url(part) for part in value.split(","))


def _shown_url(text: str) -> str:
    if "://" not in text:
        return text
    try:
        url = urllib.parse.urlsplit(text)
    except ValueError:  # not readable as a URL: it could hide anything
        return "***"
    netloc = url.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if url.query else ""
    fragment = "***" if url.fragment else ""
    return urllib.parse.urlunsplit((url.scheme, netloc, url.path, query, fragment))


def service_process(profile: Profile, name: str) -> ManagedProcess:
    http_port, grpc_port = service_ports(profile, name)
    base = f"http://{HOST}:{http_port}"
    return ManagedProcess(
        name=name,
        title=name.capitalize(),
        profile=profile,
        prepare=lambda: prepare_service(profile, name),
        ready_url=f"{base}/readyz",
        ports=(http_port, grpc_port),
        endpoints=(base, f"grpc {HOST}:{grpc_port}"),
        ready_timeout_s=SERVICE_READY_TIMEOUT_S,
        stop_timeout_s=SERVICE_STOP_TIMEOUT_S,
        stop_setting=GRACEFUL_STOP_SETTINGS[name],
    )


def print_usage(profile: Profile) -> None:
    """How to send a batch and query it back, with the profile's own keys and ports."""
    keys = dev_keys(profile)
    write_key, read_key = next(iter(keys["write_keys"])), next(iter(keys["read_keys"]))
    gateway = f"http://{HOST}:{profile.gateway_ports[0]}"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    event = {
        "event_id": str(uuid.uuid4()),
        "session_id": "sess-42",
        "user_id": "user-123",
        "event_name": "item_purchased",
        "client_timestamp": now,
        "app_version": "2.3.1",
        "device_os": "iOS 17.2",
        "metadata": {"item_id": "sku-991", "price": "19.99"},
    }
    print(f"\nKeys ({relative(keys_file(profile))}): write {write_key}  read {read_key}")
    print("\nSend a batch (as the Swift client does):")
    print(f"  curl -sS -X POST {gateway}/v1/track -H 'Authorization: Bearer {write_key}' \\")
    print(f"    -H 'Content-Type: application/json' -d '{json.dumps([event])}'")
    print("Query it back (searchable within a second or two):")
    query = f"{gateway}/v1/events?user_id=user-123"
    print(f"  curl -sS '{query}' -H 'Authorization: Bearer {read_key}'")
    print(f"OpenAPI: {gateway}/openapi.json   gRPC QueryService: {HOST}:{profile.indexer_ports[1]}")
    tpipe = relative(Path(sys.executable).parent / "tpipe")  # the venv make run uses
    print("\nThe command line (docs/cli.md), not on PATH. send and loadgen need the write key;")
    print("query, aggregate and the others need none (the QueryService on loopback takes none):")
    print(f"  export TPIPE_WRITE_KEY={write_key}")
    if profile == PROFILES["dev"]:  # the ports tpipe uses by default
        print(f"  {tpipe} query --user user-123      {tpipe} status --once")
        return
    # Other ports: each command is told where to connect.
    target = f"--target {HOST}:{profile.indexer_ports[1]}"
    enricher = f"http://{HOST}:{profile.enricher_ports[0]}"
    indexer = f"http://{HOST}:{profile.indexer_ports[0]}"
    print(f"  {tpipe} query --user user-123 {target}")
    print(f"  {tpipe} status --once --gateway {gateway} \\")
    print(f"    --enricher {enricher} --indexer {indexer} \\")
    print(f"    --nats {profile.nats_url} --opensearch {profile.opensearch_url}")
    print(f"  aggregate: {target}   send, loadgen: --gateway {gateway}")
    print(f"  tail, dlq: --nats {profile.nats_url}")


# --- NATS -------------------------------------------------------------------------------------


def nats_binary() -> Path:
    return CACHE / f"nats-server-{NATS_VERSION}" / "nats-server"


def nats_process(profile: Profile) -> ManagedProcess:
    monitor_url = f"http://{HOST}:{profile.nats_monitor_port}"
    return ManagedProcess(
        name="nats",
        title="NATS",
        profile=profile,
        prepare=lambda: prepare_nats(profile),
        ready_url=f"{monitor_url}/healthz?js-enabled-only=true",
        ports=(profile.nats_port, profile.nats_monitor_port),
        endpoints=(profile.nats_url, f"{monitor_url} (monitoring)"),
        ready_timeout_s=NATS_READY_TIMEOUT_S,
        stop_timeout_s=NATS_STOP_TIMEOUT_S,
    )


def prepare_nats(profile: Profile) -> Launch:
    binary = require_installed(nats_binary(), f"nats-server {NATS_VERSION}")
    store_dir = profile.root / "nats" / "data"
    store_dir.mkdir(parents=True, exist_ok=True)
    argv = (
        str(binary),
        "--jetstream",
        "--server_name", f"telemetry-{profile.name}",
        "--addr", HOST,
        "--port", str(profile.nats_port),
        "--http_port", str(profile.nats_monitor_port),
        "--store_dir", str(store_dir),
    )  # fmt: skip
    return Launch(argv=argv)


def install_nats() -> None:
    binary = nats_binary()
    if binary.exists():
        print(f"nats-server {NATS_VERSION}: present ({relative(binary)})")
    else:
        build_nats(binary)
    link = BIN / "nats-server"
    if not link.exists() or link.resolve() != binary:
        BIN.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(binary, BIN))
        print(f"nats-server {NATS_VERSION}: linked {relative(link)}")


def build_nats(binary: Path) -> None:
    go = find_go()
    target = f"{NATS_MODULE}@{NATS_VERSION}"
    print(f"nats-server {NATS_VERSION}: building `go install {target}` (about a minute)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as gobin:
        # GOTOOLCHAIN=auto lets Go 1.21+ fetch the Go version nats-server needs from the Go proxy.
        go_env = {"GOBIN": gobin, "GOTOOLCHAIN": "auto"}
        run([go, "install", target], env=go_env, unset=GO_UNSET_ENV)
        binary.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(gobin) / "nats-server", binary)
    print(f"nats-server {NATS_VERSION}: installed ({relative(binary)})")


def find_go() -> str:
    """A Go that can build NATS_VERSION: the machine's, or GO_TOOLCHAIN fetched by it."""
    # /usr/local/go is where the official Go tarball goes; it is often only on interactive PATHs.
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    if go is None:
        raise InfraError("Go not found: install Go (apt-get install -y golang-go)")
    version = subprocess.run(
        [go, "env", "GOVERSION"],
        env=inherited_env(GO_UNSET_ENV),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    match = re.match(r"go1\.(\d+)", version)  # go1.19.8, go1.22rc1
    if match is not None and int(match.group(1)) >= 21:
        return go
    return fetch_go_toolchain(go, version or "this Go")


def fetch_go_toolchain(go: str, version: str) -> str:
    """GO_TOOLCHAIN downloaded by an older `go` from the Go proxy (checked against the Go
    checksum database like any module); the path of its `go`."""
    env = inherited_env(GO_UNSET_ENV)
    arch = subprocess.run(
        [go, "env", "GOARCH"], env=env, capture_output=True, text=True, check=False
    ).stdout.strip()
    module = f"golang.org/toolchain@v0.0.1-{GO_TOOLCHAIN}.linux-{arch}"
    print(f"{version} cannot fetch Go toolchains: downloading {GO_TOOLCHAIN} ({module})")
    with tempfile.TemporaryDirectory() as outside_any_module:
        result = subprocess.run(
            [go, "mod", "download", "-json", module],
            cwd=outside_any_module,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    try:
        folder = Path(json.loads(result.stdout)["Dir"])
    except (ValueError, KeyError):
        raise InfraError(
            f"`go mod download {module}` failed: {(result.stderr or result.stdout).strip()}"
        ) from None
    # Module zips do not keep the executable bits of the toolchain's programs.
    for program in [*(folder / "bin").iterdir(), *(folder / "pkg" / "tool").rglob("*")]:
        if program.is_file():
            program.chmod(program.stat().st_mode | 0o111)
    return str(folder / "bin" / "go")


# --- OpenSearch -------------------------------------------------------------------------------


def opensearch_home() -> Path:
    return CACHE / f"opensearch-{OPENSEARCH_VERSION}"


def opensearch_process(profile: Profile) -> ManagedProcess:
    return ManagedProcess(
        name="opensearch",
        title="OpenSearch",
        profile=profile,
        prepare=lambda: prepare_opensearch(profile),
        ready_url=f"{profile.opensearch_url}/_cluster/health?wait_for_status=yellow&timeout=1s",
        ports=(profile.opensearch_port, profile.opensearch_transport_port),
        endpoints=(profile.opensearch_url,),
        ready_timeout_s=OPENSEARCH_READY_TIMEOUT_S,
        stop_timeout_s=OPENSEARCH_STOP_TIMEOUT_S,
        not_ready_reason=lambda: opensearch_red_reason(profile),
    )


def opensearch_red_reason(profile: Profile) -> str | None:
    """What to do when the node answers but its cluster stays red: an index has a shard with
    no copy assigned (kept from an earlier run), which no restart will assign."""
    query = "level=indices&filter_path=status,indices.*.status"
    url = f"{profile.opensearch_url}/_cluster/health?{query}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=HTTP_PROBE_TIMEOUT_S) as response:
            health = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if not isinstance(health, dict) or health.get("status") != "red":
        return None
    indices = health.get("indices") or {}
    red = sorted(name for name, info in indices.items() if info.get("status") == "red")
    data = relative(profile.root / "opensearch" / "data")
    return (
        f"OpenSearch runs but its cluster stays red: a shard of {', '.join(red) or 'an index'} "
        f"has no copy assigned (`curl {profile.opensearch_url}/_cluster/allocation/explain` says "
        f"why). Delete what you do not need (`curl -X DELETE {profile.opensearch_url}/<index>`), "
        f"or start the profile's data over: stop it, then `rm -rf {data}`"
    )


def prepare_opensearch(profile: Profile) -> Launch:
    home = require_installed(opensearch_home(), f"OpenSearch {OPENSEARCH_VERSION}")
    java = java_home()
    base = profile.root / "opensearch"
    data, logs, tmp = base / "data", base / "logs", base / "tmp"
    for folder in (data, logs, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    config_dir = base / f"config-{OPENSEARCH_VERSION}"  # another version's is not this one's
    config = write_opensearch_config(home, config_dir, data=data, logs=logs)
    settings = {
        "cluster.name": f"telemetry-{profile.name}",
        "node.name": f"telemetry-{profile.name}",
        "discovery.type": "single-node",
        "network.host": HOST,
        "http.port": str(profile.opensearch_port),
        "transport.port": str(profile.opensearch_transport_port),
        "path.data": str(data),
        "path.logs": str(logs),
        # A full-ish disk must not turn local indices read-only.
        "cluster.routing.allocation.disk.threshold_enabled": "false",
    }
    argv = (str(home / "bin" / "opensearch"), *(f"-E{k}={v}" for k, v in settings.items()))
    env = {
        # bin/opensearch-env takes OPENSEARCH_JAVA_HOME before JAVA_HOME.
        "OPENSEARCH_JAVA_HOME": str(java),
        "JAVA_HOME": str(java),
        "OPENSEARCH_JAVA_OPTS": OPENSEARCH_HEAP_OPTS,
        "OPENSEARCH_PATH_CONF": str(config),
        "OPENSEARCH_TMPDIR": str(tmp),  # else each start leaves a new folder in /tmp
    }
    unset = OPENSEARCH_UNSET_ENV
    if os.geteuid() != 0:
        return Launch(argv=argv, env=env, unset=unset)
    ensure_service_user()
    chown_tree(base, OPENSEARCH_USER)
    let_through(home, base)
    check_user_can_reach(OPENSEARCH_USER, home / "bin" / "opensearch", data)
    return Launch(argv=argv, env=env, user=OPENSEARCH_USER, unset=unset)


def write_opensearch_config(home: Path, config: Path, *, data: Path, logs: Path) -> Path:
    """A config folder per profile (and OpenSearch version), so the OpenSearch home stays
    read-only and shared.

    It is copied whole from the home's or not at all: a copy cut short would be used as it
    is from then on. OpenSearch writes its keystore into it. Its jvm.options names the gc log,
    the JVM error file and heap dumps relative to the home; they go to the profile instead.
    """
    if not config.exists():
        temp = Path(tempfile.mkdtemp(dir=config.parent, prefix=f".{config.name}-"))
        try:
            shutil.copytree(home / "config", temp, dirs_exist_ok=True)
            os.replace(temp, config)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    options = (home / "config" / "jvm.options").read_text()
    options = re.sub(r"(?<=[=:])logs/", f"{logs}/", options)
    options = options.replace("HeapDumpPath=data", f"HeapDumpPath={data}")
    write_atomically(config / "jvm.options", options)
    return config


def install_opensearch() -> None:
    home = opensearch_home()
    if (home / "bin" / "opensearch").exists():
        print(f"OpenSearch {OPENSEARCH_VERSION}: present ({relative(home)})")
        return
    java_home()  # fail before a 56 MB download that could not run
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven (mvn) not found: install maven (apt-get install -y maven)")
    print(f"OpenSearch {OPENSEARCH_VERSION}: fetching {OPENSEARCH_ARTIFACT} with mvn (~56 MB)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        download, unpacked = Path(tmp) / "download", Path(tmp) / "unpacked"
        maven = [mvn, "--batch-mode", "--quiet", "--strict-checksums", "-Dstyle.color=never"]
        artifact = [f"-Dartifact={OPENSEARCH_ARTIFACT}", f"-DoutputDirectory={download}"]
        # Debian's Maven prints colour codes even in batch mode: keep its output for failures.
        run([*maven, MAVEN_COPY_GOAL, *artifact], cwd=Path(tmp), show_output=False)
        print(f"OpenSearch {OPENSEARCH_VERSION}: unpacking")
        try:
            extract_zip(download / f"opensearch-{OPENSEARCH_VERSION}.zip", unpacked)
        except (zipfile.BadZipFile, EOFError) as err:
            # Maven would hand out the same damaged copy again: take it out of its cache.
            cached = maven_cached_opensearch()
            shutil.rmtree(cached, ignore_errors=True)
            raise InfraError(
                f"the OpenSearch zip from Maven is damaged ({err}); removed Maven's cached "
                f"copy ({cached}): run the command again to download it afresh"
            ) from None
        os.replace(unpacked / f"opensearch-{OPENSEARCH_VERSION}", home)
    print(f"OpenSearch {OPENSEARCH_VERSION}: installed ({relative(home)})")


def maven_cached_opensearch() -> Path:
    """Where Maven's local repository keeps the OpenSearch zip (its default location)."""
    group, artifact, version, _ = OPENSEARCH_ARTIFACT.split(":")
    return Path.home() / ".m2" / "repository" / group.replace(".", "/") / artifact / version


def extract_zip(archive: Path, dest: Path) -> None:
    """Unzip keeping the Unix permission bits (zipfile drops them; bin/ must stay executable)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)


@dataclass(frozen=True)
class Java:
    """A Java installation as its `java` describes itself."""

    home: Path
    major: int


def java_home() -> Path:
    """A Java home OpenSearch 2.19 runs on, from the first Java in range among $JAVA_HOME's,
    the `java` on PATH (an asdf or jenv shim too) and those in /usr/lib/jvm."""
    found: list[Java] = []
    for java in java_candidates():
        described = describe_java(java)
        if described is None or described in found:
            continue
        if JAVA_MIN_MAJOR <= described.major <= JAVA_MAX_MAJOR:
            return described.home
        found.append(described)
    needed = (
        f"OpenSearch {OPENSEARCH_VERSION} runs on Java {JAVA_MIN_MAJOR} to {JAVA_MAX_MAJOR} (it "
        f"needs the security manager, which Java 24 removed)"
    )
    if not found:
        raise InfraError(
            f"Java not found ($JAVA_HOME, java on PATH, {JVM_DIR}): {needed}; install "
            "openjdk-17-jre-headless, or set JAVA_HOME to a Java in that range"
        )
    listed = ", ".join(f"Java {java.major} ({java.home})" for java in found)
    raise InfraError(
        f"no Java {JAVA_MIN_MAJOR} to {JAVA_MAX_MAJOR} found, only {listed}: {needed}; install "
        "openjdk-17-jre-headless, or set JAVA_HOME to a Java in that range"
    )


def java_candidates() -> list[Path]:
    """The `java` programs to ask, in order of preference, each once."""
    programs = []
    if os.environ.get("JAVA_HOME"):
        programs.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    java_on_path = shutil.which("java")
    if java_on_path:
        programs.append(Path(java_on_path))  # as it is: a shim decides which Java it runs
    if JVM_DIR.is_dir():
        programs.extend(sorted(JVM_DIR.glob("*/bin/java")))
    unique = {program.resolve(): program for program in programs if program.is_file()}
    return list(unique.values())


def describe_java(java: Path) -> Java | None:
    """The home and major version `java` reports (`java.home` and
    `java.specification.version` of -XshowSettings:properties), None when it answers none."""
    try:
        result = subprocess.run(
            [java, "-XshowSettings:properties", "-version"],
            env=inherited_env(JVM_OPTION_VARIABLES),
            capture_output=True,
            text=True,
            timeout=JAVA_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    properties = dict(re.findall(r"^\s*([\w.]+) = (.*?)\s*$", result.stderr, re.MULTILINE))
    home = properties.get("java.home")
    version = re.match(r"(\d+)(?:\.(\d+))?", properties.get("java.specification.version", ""))
    if home is None or version is None or not (Path(home) / "bin" / "java").is_file():
        return None
    major = int(version.group(1))
    if major == 1:  # 1.8 is Java 8
        major = int(version.group(2) or 0)
    return Java(home=Path(home), major=major)


def ensure_service_user() -> None:
    try:
        pwd.getpwnam(OPENSEARCH_USER)
    except KeyError:
        print(f"creating system user {OPENSEARCH_USER} (OpenSearch refuses to run as root)")
        no_login = "/usr/sbin/nologin"
        run(["useradd", "--system", "--no-create-home", "--shell", no_login, OPENSEARCH_USER])


def chown_tree(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    os.chown(root, uid, gid)
    for parent, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def switch_user(user: str | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment and `subprocess.Popen` arguments that run a child as `user` (None: as
    ourselves), with that user's group and no others.

    The child itself becomes the user, with nothing in between: `runuser` would stay as its
    parent and, on SIGTERM, kill it 2 s later whether or not it had finished shutting down.
    """
    if user is None:
        return {}, {}
    entry = pwd.getpwnam(user)
    env = {"HOME": entry.pw_dir, "USER": user, "LOGNAME": user, "SHELL": entry.pw_shell}
    return env, {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def let_through(*paths: Path) -> None:
    """Lets every user pass (r-x) the folders under `.local` on the way to `paths`, as the
    usual umask (022) makes them: made by root under umask 077, they would be root's alone,
    and the user OpenSearch runs as could not reach its home and data."""
    for path in paths:
        for folder in path.parents:
            if folder == LOCAL or LOCAL in folder.parents:
                mode = folder.stat().st_mode
                if mode & 0o055 != 0o055:
                    folder.chmod(mode & 0o7777 | 0o055)


def check_user_can_reach(user: str, executable: Path, writable: Path) -> None:
    """Fails naming the first folder (or file) on the way that `user` cannot pass (or run,
    or write)."""
    env, as_user = switch_user(user)

    def can(*test: str) -> bool:
        probe = ["test", *test]
        done = subprocess.run(probe, env={**os.environ, **env}, check=False, **as_user)
        return done.returncode == 0

    if can("-x", str(executable), "-a", "-w", str(writable)):
        return
    blocked, verb = writable, "write"
    for path, last_test, last_verb in ((executable, "-x", "run"), (writable, "-w", "write")):
        closed = next((f for f in reversed(path.parents) if not can("-x", str(f))), None)
        if closed is not None:
            blocked, verb = closed, "pass through"
            break
        if not can(last_test, str(path)):
            blocked, verb = path, last_verb
            break
    raise InfraError(
        f"user {user} cannot {verb} {blocked} ({describe_owner(blocked)}): as root, OpenSearch "
        f"runs as {user}, so every folder above {relative(executable)} and {relative(writable)} "
        f"must let it through: `chmod o+x {blocked}`, or clone the repository elsewhere (e.g. "
        "under /srv)"
    )


def describe_owner(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError as err:
        return err.strerror or "cannot be read"
    return f"mode {stat.st_mode & 0o7777:04o}, owner {user_name(stat.st_uid)}"


# --- starting, stopping, probing ---------------------------------------------------------------


def start_all(procs: list[ManagedProcess], started: list[ManagedProcess]) -> None:
    """Start `procs` in order, appending the ones this call launched to `started`.

    Ports are checked, and prerequisites (an installed server, Java) prepared, for all of them
    first, so a conflict or a missing one fails before anything starts.
    """
    waiting = [proc for proc in procs if running_pid(proc) is None]
    for proc in waiting:
        check_ports_free(proc)
    launches = {proc.name: proc.prepare() for proc in waiting}
    report_inherited_settings(procs, {proc.name for proc in waiting})
    for proc in procs:
        if start(proc, launches.get(proc.name)):
            started.append(proc)


def report_inherited_settings(procs: list[ManagedProcess], starting: set[str]) -> None:
    """Names the settings from our environment that the services about to start (`starting`)
    take, and warns, for each service of `procs` that runs already, of those it was not started
    with: it keeps its own until it is stopped, so `INDEXER_RETENTION_DAYS=7 make run` with the
    indexer running would otherwise seem to apply and not.

    A surprise (STREAM_REPLICAS=3 never gets ready on one server) shows here, before the
    services start.
    """
    services = [proc for proc in procs if proc.name in SERVICES]
    if not services:
        return
    profile = services[0].profile
    names = inherited_setting_names(profile)
    started = [proc.name for proc in services if proc.name in starting]
    taken = [key for key in names if any(setting_applies(key, name) for name in started)]
    if taken:
        if len(started) == len(SERVICES):
            who = "the services take"
        else:
            who = f"{', '.join(started)} take{'s' if len(started) == 1 else ''}"
        shown = " ".join(shown_setting(key) for key in taken)
        print(f"{who} these settings from the environment: {shown}")
    for proc in services:
        pid = running_pid(proc) if proc.name not in starting else None
        if pid is None:
            continue
        missed = [
            key
            for key in names
            if setting_applies(key, proc.name) and started_value(proc, pid, key) != os.environ[key]
        ]
        if missed:
            shown = " ".join(shown_setting(key) for key in missed)
            print(
                f"warning: {proc.name} runs already (pid {pid}) and does not get {shown}: it "
                f"keeps the settings it was started with; `make stop{make_variables(profile)}` "
                "first to start it with these"
            )


def start(proc: ManagedProcess, launch: Launch | None = None) -> bool:
    """Start `proc` (as `launch`, else as it prepares) unless it runs already; wait until
    ready. True if this call started it."""
    pid = running_pid(proc)
    if pid is not None:
        print(f"{proc.name}: already running (pid {pid}), checking it is ready")
        wait_ready(proc, pid)
        return False
    proc.pid_file.unlink(missing_ok=True)
    check_ports_free(proc)
    pid = spawn(proc, launch if launch is not None else proc.prepare())
    print(f"{proc.name}: started (pid {pid}), waiting up to {proc.ready_timeout_s:.0f} s")
    try:
        wait_ready(proc, pid)
    except BaseException:
        terminate(proc, pid)
        raise
    return True


def spawn(proc: ManagedProcess, launch: Launch) -> int:
    for folder in (proc.profile.run_dir, proc.profile.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    user_env, as_user = switch_user(launch.user)
    keep_previous_log(proc.log_file)
    with proc.log_file.open("wb") as log:
        child = subprocess.Popen(
            launch.argv,
            cwd=launch.cwd,
            env={
                **inherited_env(launch.unset),
                **loopback_no_proxy(os.environ),
                **user_env,
                **launch.env,
                OWNER_ENV: proc.owner_tag,
                PORT_OFFSET_ENV: str(proc.profile.port_offset),
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )
    try:
        write_atomically(proc.pid_file, f"{child.pid}\n")
    except BaseException:
        # Without its pid file nothing would stop it, and it would hold the ports.
        signal_group(child.pid, signal.SIGKILL)
        child.wait()
        raise
    return child.pid


def inherited_env(unset: Sequence[str]) -> dict[str, str]:
    """Our environment but for the variables `unset` names (names or fnmatch patterns)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in unset)
    }


def write_atomically(path: Path, text: str) -> None:
    """`path` holds `text` whole, or stays as it was (a temporary file is renamed over it)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def keep_previous_log(log_file: Path) -> None:
    """Moves the log of the previous run (a crash's, say) to `<name>.log.1`, those kept before
    it one number up, and drops the one past KEPT_LOGS, so that a few restarts (a failed one,
    then a good one) do not wipe it. An empty log is not kept: it would push out one that says
    something."""
    try:
        if log_file.stat().st_size == 0:
            return
    except FileNotFoundError:
        return

    def kept(number: int) -> Path:
        return log_file.with_name(f"{log_file.name}.{number}")

    for number in range(KEPT_LOGS - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            kept(number).replace(kept(number + 1))
    log_file.replace(kept(1))


def wait_ready(proc: ManagedProcess, pid: int) -> None:
    """Returns once `proc`'s readiness check (`ready_url`) answers 200; fails when its group
    exits first, or after `ready_timeout_s`, saying what the check last answered (a service's
    /readyz gives the reason it is not ready) and the log's last lines."""
    deadline = time.monotonic() + proc.ready_timeout_s
    while True:
        answer = probe(proc.ready_url)
        if answer.ready:
            return
        if not group_alive(pid):
            raise InfraError(f"{proc.title} exited while starting; {log_tail(proc)}")
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    not_ready = f"{proc.title} did not become ready in {proc.ready_timeout_s:.0f} s"
    reason = proc.not_ready_reason()
    if reason is not None:
        raise InfraError(f"{not_ready}. {reason}")
    raise InfraError(
        f"{not_ready}; its readiness check ({proc.ready_url}) last {answer.said}; {log_tail(proc)}"
    )


def stop(proc: ManagedProcess) -> None:
    """Stop `proc` if it runs and remove its pid file; harmless when nothing runs."""
    pid = running_pid(proc)
    if pid is not None:
        terminate(proc, pid)
        return
    state = "stale pid file removed" if proc.pid_file.exists() else "nothing to stop"
    proc.pid_file.unlink(missing_ok=True)
    print(f"{proc.name}: not running ({state})")


def terminate(proc: ManagedProcess, pid: int) -> None:
    """SIGTERM the process group, SIGKILL it after its stop timeout (`stop_timeout`);
    remove the pid file."""
    timeout_s = stop_timeout(proc, pid)
    if leader_alive(pid):
        print(f"{proc.name}: stopping (pid {pid})")
    else:
        left = len(group_members(pid))
        print(f"{proc.name}: stopping (pid {pid} has exited; {left} of its processes run on)")
    signal_group(pid, signal.SIGTERM)
    if not wait_group_exit(pid, timeout_s):
        print(f"{proc.name}: still running after {timeout_s:.0f} s, sending SIGKILL")
        signal_group(pid, signal.SIGKILL)
        wait_group_exit(pid, proc.stop_timeout_s)
    proc.pid_file.unlink(missing_ok=True)
    print(f"{proc.name}: stopped")


def stop_timeout(proc: ManagedProcess, pid: int) -> float:
    """How long `proc`'s running group `pid` has between SIGTERM and SIGKILL: `stop_timeout_s`,
    or its graceful-stop setting plus SERVICE_STOP_OVERRUN_S when that is longer. The setting
    is read from the environment the process was started with (/proc), what the service got:
    `down` runs long after, in another shell, whose value may differ."""
    if proc.stop_setting is None:
        return proc.stop_timeout_s
    value = started_value(proc, pid, proc.stop_setting)
    try:
        graceful_s = float(value) if value is not None else 0.0
    except ValueError:  # refused by the service at start: it has no stop of its own
        graceful_s = 0.0
    if not math.isfinite(graceful_s):
        graceful_s = 0.0
    return max(proc.stop_timeout_s, graceful_s + SERVICE_STOP_OVERRUN_S)


def check_ports_free(proc: ManagedProcess) -> None:
    for port in proc.ports:
        if port_in_use(port):
            raise InfraError(
                f"port {port} already in use by {port_owner(port)} (not ours): {proc.title} "
                "needs it; stop that process, or move this profile's ports with PORT_OFFSET=N"
            )


def running_pid(proc: ManagedProcess) -> int | None:
    """The pid from the pid file if the process group it leads still runs and is the one we
    started.

    Ours means: a live session leader (we start each process in a new session) whose
    environment carries our owner tag, so a pid reused by another process is never ours. When
    the leader has exited (a gateway supervisor that crashed), the group is ours while members
    carrying the tag live on (its workers, holding the ports): the kernel reuses no pid while a
    group of that number lives, so the group can only be the one we started.
    """
    try:
        pid = int(proc.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    stat = proc_stat(pid)
    if stat is not None and stat.state != "Z" and stat.session == pid:
        return pid if owner_tag(pid) == proc.owner_tag else None
    members = group_members(pid)
    return pid if any(owner_tag(member) == proc.owner_tag for member in members) else None


def leader_alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat.state != "Z"


def owner_tag(pid: int) -> str | None:
    return environ_value(pid, OWNER_ENV)


def environ_value(pid: int, name: str) -> str | None:
    """The variable `name` in the environment process `pid` started with (None: unset, or
    the process is gone or not ours to read)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{name}=".encode()
    values = [item[len(prefix) :] for item in environ.split(b"\0") if item.startswith(prefix)]
    return values[0].decode(errors="replace") if values else None


def running_port_offset(proc: ManagedProcess, pid: int) -> int | None:
    """The PORT_OFFSET `proc`'s running group `pid` was started with (None: not recorded, as
    by an older local.py)."""
    value = started_value(proc, pid, PORT_OFFSET_ENV)
    return int(value) if value is not None and value.isdigit() else None


def started_value(proc: ManagedProcess, pid: int, name: str) -> str | None:
    """The variable `name` in the environment `proc`'s running group `pid` was started with:
    its leader's, or, the leader gone, a member's carrying our tag (None: unset, or no such
    process)."""
    for member in [pid, *group_members(pid)]:
        if owner_tag(member) == proc.owner_tag:
            return environ_value(member, name)
    return None


def check_port_offset(procs: list[ManagedProcess]) -> None:
    """Refuses a PORT_OFFSET other than the one the profile's running processes were started
    with: their ports are elsewhere, so probing these would report a wrong health, or another
    checkout's servers as ready (`down` needs no such check: it goes by pid)."""
    for proc in procs:
        pid = running_pid(proc)
        theirs = running_port_offset(proc, pid) if pid is not None else None
        if theirs is None or theirs == proc.profile.port_offset:
            continue
        again = make_variables(dataclasses.replace(proc.profile, port_offset=theirs))
        raise UsageError(
            f"profile {proc.profile.name} runs with PORT_OFFSET={theirs} ({proc.name}, pid "
            f"{pid}), not {proc.profile.port_offset}: give the make command the same "
            f"(`make status{again}`), or stop it first (`make stop{again}`)"
        )


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    session: int


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the command name, which is in parentheses and may contain spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], pgrp=int(fields[2]), session=int(fields[3]))


def group_members(pgrp: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgrp`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgrp and stat.state != "Z":
                members.append(int(entry.name))
    return members


def group_alive(pgrp: int) -> bool:
    return bool(group_members(pgrp))


def signal_group(pgrp: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgrp, sig)


def wait_group_exit(pgrp: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(pgrp):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S / 2)
    return True


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def port_owner(port: int) -> str:
    owner = listener_pid(port)
    return f"pid {owner}" if owner is not None else "another process"


def listener_pid(port: int) -> int | None:
    """The pid listening on TCP `port`, from /proc (None when it cannot be seen)."""
    inodes = listening_inodes(port)
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) in inodes:
                    return int(fd_dir.parent.name)
        except OSError:
            continue
    return None


def listening_inodes(port: int) -> set[str]:
    listen_state = "0A"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == listen_state:
                inodes.add(f"socket:[{cols[9]}]")
    return inodes


@dataclass(frozen=True)
class Readiness:
    """What a readiness check answered: `ready` (HTTP 200), `word` (the `status` of the JSON
    body when ready, else "ok"; "not ready" when not), and `said`, what it answered ("answered
    503: <reason>", "got no answer (Connection refused)")."""

    ready: bool
    word: str
    said: str


# How much of a readiness check's answer a message quotes.
READINESS_ANSWER_MAX_CHARS = 300


def probe(url: str) -> Readiness:
    """Asks the readiness check `url` once. Not ready: the answer's reason (a service's /readyz
    `reason`, NATS's `error`, else its `status`, else its text), or why there was none."""
    # Loopback must never go through an HTTP proxy taken from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=HTTP_PROBE_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        with err:
            try:
                reason = answer_reason(err.read())
            except (OSError, http.client.HTTPException):  # the body cut short: its status is all
                reason = ""
        said = f"answered {err.code}: {reason}" if reason else f"answered {err.code}"
        return Readiness(ready=False, word="not ready", said=said)
    except (urllib.error.URLError, OSError) as err:
        cause = err.reason if isinstance(err, urllib.error.URLError) else err
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        return Readiness(ready=False, word="not ready", said=f"got no answer ({why})")
    try:
        status = json.loads(body).get("status", "ok")
    except (ValueError, AttributeError):
        status = "ok"
    return Readiness(ready=True, word=str(status), said="answered 200")


def answer_reason(body: bytes) -> str:
    """Why a readiness check says not ready, from its body, on one line and cut short."""
    text = body.decode(errors="replace")
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if isinstance(fields, dict):
        for key in ("reason", "error"):
            if fields.get(key):
                text = str(fields[key])
                break
        else:
            text = f"status {fields['status']}" if "status" in fields else text
    text = " ".join(text.split())
    if len(text) > READINESS_ANSWER_MAX_CHARS:
        text = text[: READINESS_ANSWER_MAX_CHARS - 1] + "…"
    return text


def log_tail(proc: ManagedProcess) -> str:
    try:
        with proc.log_file.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 16_384))
            lines = log.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except FileNotFoundError:
        lines = []
    shown = "\n".join(f"    {line}" for line in lines) or "    (empty)"
    return f"last log lines ({relative(proc.log_file)}):\n{shown}"


# --- small helpers ----------------------------------------------------------------------------


def require_installed(path: Path, what: str) -> Path:
    if not path.exists():
        raise InfraError(f"{what} is not installed: run `make install`")
    return path


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    unset: Sequence[str] = (),
    cwd: Path = REPO,
    show_output: bool = True,
) -> None:
    """Run a command, echoing it, with our environment but for `unset` and plus `env`; its
    output is shown live, or only when it fails."""
    shown = " ".join(str(arg) for arg in argv)
    print(f"  $ {shown}", flush=True)
    result = subprocess.run(
        argv,
        cwd=cwd,
        env={**inherited_env(unset), **(env or {})},
        stdout=None if show_output else subprocess.PIPE,
        stderr=None if show_output else subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = f":\n{result.stdout}" if result.stdout else ""
        raise InfraError(f"`{shown}` failed with exit code {result.returncode}{output}")


# The make target behind each command, to say what to run again.
MAKE_TARGETS = {"install": "install", "up": "run", "down": "stop", "status": "status"}


def os_error_message(error: OSError, command: str) -> str:
    """What an OSError (a file we may not write, a full disk) means here, naming its path."""
    path = Path(error.filename) if isinstance(error.filename, str) else None
    text = error.strerror or str(error)
    where = f"{relative(path)}: " if path is not None else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}{text}: the disk (or your quota) is full; free some space and run it again"
    if error.errno == errno.EROFS:
        return f"{where}{text}: the file system is read-only"
    if error.errno not in (errno.EACCES, errno.EPERM):
        return f"{where}{text}"
    again = f"make {MAKE_TARGETS.get(command, 'test')}"
    if path is None:  # a signal to a process of another user
        return f"{text}: what another user started (`sudo {again}`, say) is stopped by that user"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.stat().st_uid == os.geteuid():
        return f"{where}{text}: check its permissions and those of the folders above it"
    owner, me = user_name(existing.stat().st_uid), user_name(os.geteuid())
    run_as_owner = f"sudo {again}" if owner == "root" else f"{again} as {owner}"
    return (
        f"{where}{text}: {relative(existing)} belongs to {owner}, and this runs as {me} (an "
        f"earlier command ran as {owner}). Run this one as {owner} too (`{run_as_owner}`), or, "
        f"with nothing of this checkout running, give the folder back to {me} "
        f"(`sudo chown -R {me} {relative(LOCAL)}`)"
    )


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# --- commands ---------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (waiting, and saying so, while another holds it).

    Two `make run`s in one checkout would otherwise both find nothing running, both start, and
    the one that lost the ports could report ready on the other's servers.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another scripts/local.py"
            print(f"waiting for {holder} to finish {what}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        command = sys.argv[1] if len(sys.argv) > 1 else "local.py"
        handle.write(f"pid {os.getpid()} ({command})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # the lock itself goes with the file descriptor


def profile_lock(profile: Profile) -> contextlib.AbstractContextManager[None]:
    """Starting and stopping one profile's processes, one `local.py` at a time."""
    return exclusive(profile.run_dir / "local.lock", f"starting or stopping profile {profile.name}")


def cmd_install() -> int:
    with exclusive(CACHE / "install.lock", "installing"):
        install_nats()
        install_opensearch()
    return 0


def cmd_up(procs: list[ManagedProcess]) -> int:
    with profile_lock(procs[0].profile):
        check_port_offset(procs)
        start_all(procs, started=[])
    print_running(procs)
    if any(proc.name == "gateway" for proc in procs):
        print_usage(procs[0].profile)
    return 0


def cmd_down(procs: list[ManagedProcess]) -> int:
    with profile_lock(procs[0].profile):
        for proc in reversed(procs):
            stop(proc)
    return 0


def cmd_status(profile: Profile, procs: list[ManagedProcess]) -> int:
    """Prints a line per process; 0 when every one runs and is ready, else EXIT_NOT_READY."""
    check_port_offset(procs)
    offset = f", PORT_OFFSET={profile.port_offset}" if profile.port_offset else ""
    print(f"profile {profile.name}{offset} ({relative(profile.root)})")
    all_ready = True
    for proc in procs:
        line, ready = status_line(proc)
        print(f"  {line}")
        all_ready = all_ready and ready
    return 0 if all_ready else EXIT_NOT_READY


class _OutputOrNothing(io.TextIOBase):
    """Standard output that turns into /dev/null once its reader has gone (`make test |
    head`), so the status lines printed while stopping the servers cannot stop the stopping."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        try:
            self._real.write(text)
            self._real.flush()
        except BrokenPipeError:
            self._real = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._real.flush()


def cmd_exec(profile: Profile, procs: list[ManagedProcess], command: list[str]) -> int:
    if not command:
        raise UsageError("exec needs a command after `--`, e.g. `exec -- pytest`")
    # SIGTERM (a CI timeout) is handled like Ctrl-C: the command cleans up, the servers stop.
    signal.signal(signal.SIGTERM, _raise_terminated)
    sys.stdout = _OutputOrNothing(sys.stdout)
    with exec_lock(profile) if procs else contextlib.nullcontext():
        return _exec(profile, procs, command)


def exec_lock(profile: Profile) -> contextlib.AbstractContextManager[None]:
    """One `exec` at a time on a profile's servers in one checkout: a second one would find
    them running, use them, and have them stopped under it when the first ends."""
    what = f"running its command on profile {profile.name}"
    return exclusive(profile.run_dir / "exec.lock", what)


def _exec(profile: Profile, procs: list[ManagedProcess], command: list[str]) -> int:
    started: list[ManagedProcess] = []
    try:
        with profile_lock(profile):
            check_port_offset(procs)
            start_all(procs, started)
        client_env = profile.client_env()
        shown_env = " ".join(f"{key}={value}" for key, value in client_env.items())
        print(f"\n$ {shown_env} {' '.join(command)}", flush=True)
        child = subprocess.Popen(
            command, env={**os.environ, **loopback_no_proxy(os.environ), **client_env}
        )
        code = wait_command(child)
    except BaseException:
        stop_started(profile, procs, started)
        raise
    interrupted = stop_started(profile, procs, started)
    # As for an interrupt of the command: 128 + the signal, unless the command failed.
    return 128 + interrupted if interrupted is not None and code == 0 else code


def stop_started(
    profile: Profile, procs: list[ManagedProcess], started: list[ManagedProcess]
) -> int | None:
    """Stops what `exec` started, in reverse order, and returns the number of the signal that
    interrupted it (None: none did).

    Every one is stopped even when a Ctrl-C or SIGTERM cuts a stop short: the interrupted one
    is killed at once, and the stops go on with the next. Left to run, it would keep its pid
    file, and the next `exec` would take it for one that was running before and never stop it.
    """
    interrupted: int | None = None
    with contextlib.ExitStack() as stack:
        try:
            print()
            stack.enter_context(profile_lock(profile))
        except (KeyboardInterrupt, Terminated) as err:
            interrupted = interrupt_signal(err)
            print("interrupted while waiting for the lock: stopping without it")
        for proc in reversed(procs):
            try:
                if proc in started:
                    stop(proc)
                elif running_pid(proc) is not None:
                    print(f"{proc.name}: left running (it was running before)")
            except (KeyboardInterrupt, Terminated) as err:
                interrupted = interrupt_signal(err)
                if proc in started:
                    kill_now(proc)
    return interrupted


def kill_now(proc: ManagedProcess) -> None:
    """SIGKILLs `proc`'s process group and removes its pid file, whatever interrupts arrive
    meanwhile (each starts it over; it takes a moment)."""
    while True:
        try:
            pid = running_pid(proc)
            if pid is not None:
                print(f"{proc.name}: interrupted, sending SIGKILL")
                signal_group(pid, signal.SIGKILL)
                wait_group_exit(pid, proc.stop_timeout_s)
            proc.pid_file.unlink(missing_ok=True)
            print(f"{proc.name}: killed" if pid is not None else f"{proc.name}: stopped")
            return
        except (KeyboardInterrupt, Terminated):
            continue


def interrupt_signal(err: BaseException) -> int:
    return signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT


class Terminated(Exception):
    """SIGTERM arrived."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def wait_command(child: subprocess.Popen[bytes]) -> int:
    """Waits for `exec`'s command and returns its exit code.

    On Ctrl-C or SIGTERM the command gets one SIGINT (from the terminal, or passed on) and
    EXEC_CLEANUP_TIMEOUT_S to clean up (pytest then runs its fixtures' teardown, which stops
    the servers the tests started) before it is killed; a second Ctrl-C kills it at once. An
    interrupted run exits 130 (143 for SIGTERM) even if the command exits 0.
    """
    grace_s = EXEC_CLEANUP_TIMEOUT_S
    interrupted: int | None = None
    deadline = 0.0
    while True:
        try:
            if interrupted is None:
                return child.wait()
            code = child.wait(timeout=max(deadline - time.monotonic(), 0.0))
            return code if code != 0 else 128 + interrupted
        except (KeyboardInterrupt, Terminated) as err:
            if interrupted is None:
                interrupted = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
                deadline = time.monotonic() + grace_s
                print(
                    f"\ninterrupted: the command has {grace_s:.0f} s to clean up "
                    "(Ctrl-C again to kill it now)",
                    flush=True,
                )
                # Ctrl-C at the terminal reached the command too: a second SIGINT would cut
                # its cleanup short.
                if isinstance(err, Terminated) or not _interrupted_at_terminal():
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGINT)
            else:
                print("killing the command; servers its tests started may be left running")
                return _kill_command(child, interrupted)
        except subprocess.TimeoutExpired:
            print(f"the command did not end {grace_s:.0f} s after the interrupt: killing it")
            return _kill_command(child, interrupted or signal.SIGINT)


def _interrupted_at_terminal() -> bool:
    """True when this process runs in its terminal's foreground process group, so that a
    Ctrl-C there was delivered to the command (same group) as well."""
    try:
        with open("/dev/tty", "rb") as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False  # no terminal: the interrupt was sent to this process alone


def _kill_command(child: subprocess.Popen[bytes], interrupted: int) -> int:
    child.kill()
    child.wait()
    return 128 + interrupted


def status_line(proc: ManagedProcess) -> tuple[str, bool]:
    """`status`'s line for `proc`, and whether it runs and its readiness check says ready."""
    pid = running_pid(proc)
    if pid is None:
        busy = [port for port in proc.ports if port_in_use(port)]
        notes = "".join(f"; port {port} in use by {port_owner(port)} (not ours)" for port in busy)
        return f"{proc.name:<11} stopped{notes}", False
    answer = probe(proc.ready_url)
    ports = ",".join(str(port) for port in proc.ports)
    where = proc.endpoints[0]
    line = (
        f"{proc.name:<11} running  pid {pid:<7} ports {ports:<11} "
        f"readiness {answer.word:<9} {where}"
    )
    if not answer.ready:
        line += f"; readiness check {answer.said}"
    if not leader_alive(pid):
        line += f"; pid {pid} has exited, {len(group_members(pid))} of its processes run on"
    return line, answer.ready


def print_running(procs: list[ManagedProcess]) -> None:
    profile = procs[0].profile
    print(f"\nRunning (profile {profile.name}):")
    for proc in procs:
        print(f"  {proc.title:<11} pid {running_pid(proc)!s:<7} {'  '.join(proc.endpoints)}")
    suffix = make_variables(profile)
    print(f"Data, logs, pids: {relative(profile.root)}/")
    print(f"Status: make status{suffix}   Stop: make stop{suffix}")


def make_variables(profile: Profile) -> str:
    """The make variables (` PROFILE=test PORT_OFFSET=1000`) that select `profile` again, so
    that `make status` and `make stop` look at its ports and not another checkout's."""
    variables = "" if profile.name == "dev" else f" PROFILE={profile.name}"
    if profile.port_offset:
        variables += f" PORT_OFFSET={profile.port_offset}"
    return variables


def select(profile: Profile, only: str | None) -> list[ManagedProcess]:
    procs = managed_processes(profile)
    if only is None:
        return procs
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {proc.name for proc in procs}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown process {', '.join(unknown)}: choose from {', '.join(known)}")
    return [proc for proc in procs if proc.name in names]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="local.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", choices=sorted(PROFILES), default="dev")
    common.add_argument("--only", metavar="NAMES", help="comma-separated, e.g. nats,opensearch")
    common.add_argument(
        "--port-offset",
        metavar="N",
        type=int,
        default=None,
        help="add N to every port of the profile (default: $PORT_OFFSET, else 0)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="fetch/build nats-server and OpenSearch if missing")
    for name, text in [
        ("up", "start what is not running and wait until ready"),
        ("down", "stop what `up` started"),
        (
            "status",
            "show what runs, pids, ports and readiness; exit 0 when every process runs and is "
            f"ready, {EXIT_NOT_READY} when one is stopped or not ready",
        ),
        ("exec", "up, run the command after `--`, then stop only what this started"),
    ]:
        sub = commands.add_parser(name, help=text, description=text, parents=[common])
        if name == "exec":
            sub.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return parser.parse_args(argv)


def port_offset(given: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """--port-offset, else $PORT_OFFSET, else 0."""
    if given is not None:
        return given
    text = environ.get("PORT_OFFSET", "").strip()
    try:
        return int(text or "0")
    except ValueError:
        raise UsageError(f"PORT_OFFSET must be a whole number, not {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "install":
            return cmd_install()
        profile = offset_profile(PROFILES[args.profile], port_offset(args.port_offset))
        procs = select(profile, args.only)
        if args.command == "up":
            return cmd_up(procs)
        if args.command == "down":
            return cmd_down(procs)
        if args.command == "status":
            return cmd_status(profile, procs)
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return cmd_exec(profile, procs, command)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except InfraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as error:
        print(f"error: {os_error_message(error, args.command)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
