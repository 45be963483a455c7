"""The deployment files stay in sync with the settings the services really read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enricher.config import Config as EnricherConfig
from gateway.config import GatewayConfig
from indexer.config import Config as IndexerConfig
from pipeline.config import describe
from pipeline.service import STOP_OVERRUN_S
from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"gateway": GatewayConfig, "enricher": EnricherConfig, "indexer": IndexerConfig}


def compose_block_lines(text: str, name: str) -> dict[str, list[str]]:
    """The lines of each service's `<name>:` block of a compose file, stripped."""
    found: dict[str, list[str]] = {}
    service = block = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 2 and line.rstrip().endswith(":"):
            service, block = line.strip()[:-1], None
        elif indent == 4:
            block = line.strip().rstrip(":") if line.rstrip().endswith(":") else None
        elif indent == 6 and block == name and service is not None:
            found.setdefault(service, []).append(line.strip())
    return found


def compose_environment(text: str) -> dict[str, set[str]]:
    """The variable names in each service's `environment:` block of a compose file."""
    blocks = compose_block_lines(text, "environment")
    return {service: {line.split(":", 1)[0] for line in lines} for service, lines in blocks.items()}


def compose_ports(text: str) -> dict[str, list[str]]:
    """Each service's `ports:` entries as written (`[ip:][host:]container`)."""
    blocks = compose_block_lines(text, "ports")
    return {
        service: [line.removeprefix("- ").split(" #", 1)[0].strip().strip('"') for line in lines]
        for service, lines in blocks.items()
    }


def compose_service_values(text: str) -> dict[str, dict[str, str]]:
    """Each service's own scalar keys (stop_grace_period, ...) and environment values."""
    found: dict[str, dict[str, str]] = {}
    service = block = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        value = value.split(" #", 1)[0].strip().strip('"')
        if indent == 2 and not value:
            service, block = key, None
        elif indent == 4 and service is not None:
            block = key if not value else None
            if value:
                found.setdefault(service, {})[key] = value
        elif indent == 6 and block == "environment" and service is not None:
            found.setdefault(service, {})[key] = value
    return found


def declared(service: str) -> set[str]:
    return {name for name, _, _ in describe(CONFIGS[service])}


@pytest.mark.parametrize("service", sorted(CONFIGS))
def test_every_compose_setting_is_one_the_service_reads(service: str) -> None:
    environment = compose_environment((ROOT / "docker-compose.yml").read_text())
    assert environment.get(service), f"{service} has no environment in docker-compose.yml"
    unknown = environment[service] - declared(service)
    assert not unknown, f"docker-compose.yml sets {sorted(unknown)} that {service} does not read"


def test_the_image_sets_only_settings_some_service_reads() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    names = {m for env in re.findall(r"^ENV (.+)$", text, re.M) for m in re.findall(r"(\w+)=", env)}
    assert names
    every = set().union(*(declared(service) for service in CONFIGS))
    assert names <= every, sorted(names - every)


def test_the_compose_parser_sees_real_blocks() -> None:
    sample = "services:\n  a:\n    environment:\n      X_Y: 1\n    ports:\n      - 1\n"
    assert compose_environment(sample) == {"a": {"X_Y"}}


def test_a_service_the_file_says_to_scale_publishes_no_fixed_host_port() -> None:
    # A fixed host port is taken by the first container: the second of `--scale indexer=2`
    # could not start.
    text = (ROOT / "docker-compose.yml").read_text()
    scaled = set(re.findall(r"--scale (\w+)=", text))
    assert scaled == {"enricher", "indexer"}
    ports = compose_ports(text)
    for service in scaled:
        for entry in ports.get(service, []):
            *_, host, _container = ["", *entry.split(":")]
            first, _, last = host.partition("-")
            assert not host or int(last or first) > int(first), f"{service}: {entry}"


def test_the_compose_ports_parser_sees_real_blocks() -> None:
    sample = (
        'services:\n  a:\n    ports:\n      - "127.0.0.1:1-4:1"  # why\n      - "2"\n'
        "    environment:\n      X: 1\n"
    )
    assert compose_ports(sample) == {"a": ["127.0.0.1:1-4:1", "2"]}


def graceful_stop_setting(service: str) -> str:
    """The setting bounding `service`'s graceful stop (which may end up to STOP_OVERRUN_S past
    it), as its configuration describes it."""
    [name] = [
        name
        for name, _, text in describe(CONFIGS[service])
        if text.startswith("seconds a graceful stop may take")
    ]
    return name


@pytest.mark.parametrize("service", sorted(CONFIGS))
def test_compose_gives_a_graceful_stop_its_time_before_sigkill(service: str) -> None:
    values = compose_service_values((ROOT / "docker-compose.yml").read_text())[service]
    grace = re.fullmatch(r"(\d+)s", values.get("stop_grace_period", ""))
    assert grace, f"{service} has no stop_grace_period in seconds (compose's default is 10 s)"
    defaults = {name: default for name, default, _ in describe(CONFIGS[service])}
    variable = graceful_stop_setting(service)
    graceful_s = float(values.get(variable, defaults[variable]))

    assert int(grace[1]) >= graceful_s + STOP_OVERRUN_S


@pytest.mark.parametrize("service", sorted(CONFIGS))
def test_make_run_gives_a_graceful_stop_its_time_before_sigkill(service: str) -> None:
    local = load_script("local.py", "local_script_deploy")
    defaults = {name: default for name, default, _ in describe(CONFIGS[service])}
    graceful_s = float(defaults[graceful_stop_setting(service)])

    assert graceful_s + STOP_OVERRUN_S <= local.SERVICE_STOP_TIMEOUT_S
    # A longer setting lengthens the wait by as much (scripts/local.py imports none of ours).
    assert local.GRACEFUL_STOP_SETTINGS[service] == graceful_stop_setting(service)
    assert local.SERVICE_STOP_OVERRUN_S == STOP_OVERRUN_S


def test_the_compose_values_parser_sees_real_blocks() -> None:
    sample = (
        "services:\n  a:\n    build: .\n    stop_grace_period: 40s  # why\n"
        '    environment:\n      X_Y: "1"\n    ports:\n      - 1\n'
    )
    assert compose_service_values(sample) == {
        "a": {"build": ".", "stop_grace_period": "40s", "X_Y": "1"}
    }
