"""The deployment files stay in sync with the settings the services really read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enricher.config import Config as EnricherConfig
from gateway.config import GatewayConfig
from indexer.config import Config as IndexerConfig
from pipeline.config import describe

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"gateway": GatewayConfig, "enricher": EnricherConfig, "indexer": IndexerConfig}


def compose_environment(text: str) -> dict[str, set[str]]:
    """The variable names in each service's `environment:` block of a compose file."""
    found: dict[str, set[str]] = {}
    service = block = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 2 and line.rstrip().endswith(":"):
            service, block = line.strip()[:-1], None
        elif indent == 4:
            block = line.strip().rstrip(":") if line.rstrip().endswith(":") else None
        elif indent == 6 and block == "environment" and service is not None:
            found.setdefault(service, set()).add(line.strip().split(":", 1)[0])
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
