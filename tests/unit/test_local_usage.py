"""What `make run` prints once all is up is what to type next: `make status`, `make stop` and
the `tpipe` commands reach the ports this run uses. With PORT_OFFSET (a second checkout beside
the first) they used to name the profile alone, so they reached the first checkout's servers.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.script_modules import load_script
from tpipe import _commands

# The variables tpipe reads its defaults from: unset, so that only the printed flags count.
_TPIPE_ENV = (
    "TPIPE_QUERY_TARGET",
    "TPIPE_GATEWAY_URL",
    "TPIPE_ENRICHER_URL",
    "TPIPE_INDEXER_URL",
    "NATS_URL",
    "OPENSEARCH_URL",
)


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_script("local.py", "local_script_usage")
    monkeypatch.setattr(module, "LOCAL", tmp_path)  # the keys file goes there
    monkeypatch.setattr(module, "running_pid", lambda proc: 4242)
    for name in _TPIPE_ENV:
        monkeypatch.delenv(name, raising=False)
    return module


def _tpipe_commands(out: str, tpipe: str) -> list[list[str]]:
    """The tpipe command lines printed (continued lines joined), as argv after `tpipe`."""
    commands: list[list[str]] = []
    for line in out.replace("\\\n", " ").splitlines():
        if tpipe not in line:
            continue
        words = shlex.split(line)
        for word in words[words.index(tpipe) :]:
            if word == tpipe:
                commands.append([])
            else:
                commands[-1].append(word)
    return commands


@pytest.mark.parametrize(
    ("name", "offset", "variables"),
    [
        ("dev", 0, ""),
        ("dev", 1000, " PORT_OFFSET=1000"),
        ("test", 0, " PROFILE=test"),
        ("test", 1000, " PROFILE=test PORT_OFFSET=1000"),
    ],
)
def test_the_printed_commands_reach_the_ports_of_this_run(
    local: ModuleType,
    capsys: pytest.CaptureFixture[str],
    name: str,
    offset: int,
    variables: str,
) -> None:
    profile = local.offset_profile(local.PROFILES[name], offset)
    local.print_running(local.managed_processes(profile))
    local.print_usage(profile)
    local.cmd_status(profile, [])
    out = capsys.readouterr().out

    # `make status` and `make stop` as printed select this profile with these ports again.
    assert f"Status: make status{variables}   Stop: make stop{variables}\n" in out
    environ = dict(word.split("=", 1) for word in variables.split())
    again = local.offset_profile(
        local.PROFILES[environ.get("PROFILE", "dev")], local.port_offset(None, environ)
    )
    assert again == profile
    shown_offset = f", PORT_OFFSET={offset}" if offset else ""
    assert f"profile {name}{shown_offset} (" in out  # what `make status` looks at

    # Every tpipe command printed parses, and connects to this run's ports.
    host = local.HOST
    gateway = f"http://{host}:{profile.gateway_ports[0]}"
    tpipe = local.relative(Path(sys.executable).parent / "tpipe")
    commands = _tpipe_commands(out, tpipe)
    assert [argv[0] for argv in commands] == ["query", "status"]
    for argv in commands:
        args = _commands._parse(argv)
        if args.command == "query":
            assert args.target == f"{host}:{profile.indexer_ports[1]}"
        else:
            assert args.gateway == gateway
            assert args.enricher == f"http://{host}:{profile.enricher_ports[0]}"
            assert args.indexer == f"http://{host}:{profile.indexer_ports[0]}"
            assert args.nats == profile.nats_url
            assert args.opensearch == profile.opensearch_url
    if profile != local.PROFILES["dev"]:  # the other commands are told their flags
        assert f"aggregate: --target {host}:{profile.indexer_ports[1]}" in out
        assert f"send, loadgen: --gateway {gateway}" in out
        assert f"tail, dlq: --nats {profile.nats_url}" in out
    assert re.search(r"export TPIPE_WRITE_KEY=wk_\S+\n", out)
    # Only the commands that post to the gateway use it: query and aggregate take no key.
    assert "send and loadgen need the write key;\nquery, aggregate and the others need none" in out
