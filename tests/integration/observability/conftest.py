"""The whole pipeline as processes, on a private NATS and the test OpenSearch, for the
observability tests: metrics scraped from each service, reflection on each gRPC port, and
`tpipe status`. Its indices have a prefix of their own, removed afterwards.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Pipeline
from tests.servers import NatsProcess


def delete_indices(opensearch_url: str, prefix: str) -> None:
    """Removes the indices and the index template an indexer made under `prefix`."""
    for path in (
        f"/{prefix}*?expand_wildcards=all&ignore_unavailable=true&allow_no_indices=true",
        f"/_index_template/{prefix}events",
    ):
        request = urllib.request.Request(f"{opensearch_url}{path}", method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise


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
