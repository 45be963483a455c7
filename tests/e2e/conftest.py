"""The whole pipeline, running as processes against real NATS and real OpenSearch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Pipeline, delete_indices
from tests.servers import NatsProcess

# The product's own index naming, so OpenSearch queries written for `telemetry-*` work as is.
INDEX_PREFIX = "telemetry-"


@pytest.fixture(scope="package")
def pipeline(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Gateway, enricher and indexer on a private NATS and the test OpenSearch.

    The test profile's OpenSearch belongs to the tests; the end-to-end tests own its
    `telemetry-*` indices and their template, start from none and leave none behind.
    """
    root: Path = tmp_path_factory.mktemp("e2e")
    nats = NatsProcess(root / "nats")
    nats.start()
    delete_indices(opensearch_url, INDEX_PREFIX)
    running = Pipeline(
        nats_url=nats.url, opensearch_url=opensearch_url, index_prefix=INDEX_PREFIX, log_dir=root
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        nats.stop()
        delete_indices(opensearch_url, INDEX_PREFIX)
