"""The whole pipeline as processes, on a private NATS and the test OpenSearch, for the
observability tests: metrics scraped from each service, reflection on each gRPC port, and
`tpipe status`. Its indices have a prefix of their own, removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Pipeline, delete_indices
from tests.servers import NatsProcess


@pytest.fixture(scope="package")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsProcess]:
    server = NatsProcess(Path(tmp_path_factory.mktemp("obs-nats")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def pipeline(
    opensearch_url: str, nats_server: NatsProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Gateway, enricher and indexer as processes (their logs in the test's temp folder)."""
    prefix = f"obs-{uuid.uuid4().hex[:10]}-"
    running = Pipeline(
        nats_url=nats_server.url,
        opensearch_url=opensearch_url,
        index_prefix=prefix,
        log_dir=Path(tmp_path_factory.mktemp("obs-logs")),
        # The consumers' lag is refreshed often, so a status shows it settle within the test.
        overrides={
            "enricher": {"ENRICHER_LAG_REFRESH_S": "0.2"},
            "indexer": {"INDEXER_PENDING_REFRESH_S": "0.2"},
        },
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        delete_indices(opensearch_url, prefix)
