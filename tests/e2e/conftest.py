"""The whole pipeline, running as processes against real NATS and real OpenSearch."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Pipeline
from tests.servers import NatsProcess

# The product's own index naming, so OpenSearch queries written for `telemetry-*` work as is.
INDEX_PREFIX = "telemetry-"


def _delete_indices(opensearch_url: str, pattern: str) -> None:
    request = urllib.request.Request(
        f"{opensearch_url}/{pattern}?expand_wildcards=all&ignore_unavailable=true", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


@pytest.fixture(scope="package")
def pipeline(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Gateway, enricher and indexer on a private NATS and the test OpenSearch.

    The test profile's OpenSearch belongs to the tests; the end-to-end tests own its
    `telemetry-*` indices and start from none.
    """
    root: Path = tmp_path_factory.mktemp("e2e")
    nats = NatsProcess(root / "nats")
    nats.start()
    _delete_indices(opensearch_url, f"{INDEX_PREFIX}*")
    running = Pipeline(
        nats_url=nats.url, opensearch_url=opensearch_url, index_prefix=INDEX_PREFIX, log_dir=root
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        nats.stop()
