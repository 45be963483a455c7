"""One pipeline for the security and hostile-input tests: private NATS, a prefix of its own,
and the loopback trusted as a proxy so X-Forwarded-For names the client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import Pipeline
from tests.servers import NatsProcess


@pytest.fixture(scope="package")
def secured(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Gateway, enricher and indexer, shared by the package's tests."""
    root: Path = tmp_path_factory.mktemp("security")
    nats = NatsProcess(root / "nats")
    nats.start()
    prefix = f"sec-{uuid.uuid4().hex[:10]}-"
    running = Pipeline(
        nats_url=nats.url,
        opensearch_url=opensearch_url,
        index_prefix=prefix,
        log_dir=root,
        overrides={"gateway": {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32"}},
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        nats.stop()
        httpx.delete(
            f"{opensearch_url}/{prefix}*?expand_wildcards=all&ignore_unavailable=true", timeout=30
        )
        httpx.delete(f"{opensearch_url}/_index_template/{prefix}*", timeout=30)
