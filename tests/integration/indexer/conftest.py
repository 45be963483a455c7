"""Fixtures for the indexer: a private nats-server, the shared OpenSearch under a unique prefix.

Every test gets its own index prefix (and so its own template and indices), removed
afterwards. NATS is private per test so the durable consumer starts from scratch.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from indexer_support import IndexerFactory, indexer_config, wait_ready
from nats.aio.client import Client
from opensearchpy import AsyncOpenSearch

from indexer import Indexer
from pipeline import natsconn
from pipeline.config import load
from pipeline.settings import NatsSettings
from tests.opensearch_node import OpenSearchNode
from tests.servers import NatsProcess


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"ti{uuid.uuid4().hex[:10]}-"


@pytest.fixture
async def os_client(opensearch_url: str, prefix: str) -> AsyncIterator[AsyncOpenSearch]:
    client = AsyncOpenSearch(hosts=[opensearch_url], timeout=60)
    yield client
    await client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, allow_no_indices=True)
    await client.indices.delete_index_template(name=f"{prefix}events", ignore=[404])
    await client.close()


@pytest.fixture
async def start_indexer(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, os_client: AsyncOpenSearch
) -> AsyncIterator[IndexerFactory]:
    started: list[Indexer] = []

    async def start(**extra: str) -> Indexer:
        url = extra.pop("opensearch_url", opensearch_url)
        indexer = Indexer(indexer_config(nats_server.url, url, prefix, **extra))
        await indexer.start()
        started.append(indexer)
        await wait_ready(indexer)
        return indexer

    yield start
    for indexer in started:
        await indexer.stop()


@pytest.fixture
async def nc(nats_server: NatsProcess) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    await natsconn.ensure_streams(client.jetstream(), load(NatsSettings, {}))
    yield client
    await client.close()


@pytest.fixture
def stoppable_opensearch() -> Iterator[OpenSearchNode]:
    node = OpenSearchNode()
    try:
        node.start()
        yield node
    finally:
        node.remove()
