"""Shared fixtures: where the real servers are, and a port another process would hold.

`make test` starts NATS and OpenSearch on the test profile's ports and exports NATS_URL and
OPENSEARCH_URL. A server that cannot be reached fails the tests that need it, never skips them.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, settings

# Property tests judge what the code does, not how fast a loaded 2-core machine runs it.
settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A test that runs a service's main() configures the root logger (its level, a handler
    on that test's captured stderr, closed when it ends): put back as it was, or later tests
    log into a closed stream and their caplog sees other levels."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


DEFAULT_NATS_URL = "nats://127.0.0.1:14222"
DEFAULT_OPENSEARCH_URL = "http://127.0.0.1:19200"
CONNECT_TIMEOUT_S = 3.0


def _require_reachable(what: str, env_var: str, default: str) -> str:
    url = os.environ.get(env_var, default)
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        pytest.fail(f"{env_var}={url!r} is not a URL with a host and a port", pytrace=False)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        pytest.fail(
            f"{what} is not reachable at {url} ({env_var}): {error}. "
            "Run the suite with `make test`, which starts it, "
            "or start it with `python scripts/local.py up --profile test`.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def nats_url() -> str:
    """nats_url is the NATS server (JetStream enabled) the tests talk to."""
    return _require_reachable("NATS", "NATS_URL", DEFAULT_NATS_URL)


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    """opensearch_url is the OpenSearch node the tests talk to."""
    return _require_reachable("OpenSearch", "OPENSEARCH_URL", DEFAULT_OPENSEARCH_URL)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process would hold: bound and listening on 127.0.0.1, without
    SO_REUSEPORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
