"""OpenSearch really stopped for 30 s while events flow (a private node, not the shared one)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from indexer_support import (
    IndexerFactory,
    count,
    enriched,
    publish_many,
    query_stub,
    wait_count,
    wait_for,
)
from nats.aio.client import Client
from opensearchpy import AsyncOpenSearch
from telemetry.v1 import query_service_pb2 as qs

from pipeline import subjects
from tests.opensearch_node import OpenSearchNode

pytestmark = pytest.mark.integration

OUTAGE_S = 30


async def test_opensearch_stopped_for_30_seconds_then_every_event_indexed_once(
    start_indexer: IndexerFactory,
    nc: Client,
    prefix: str,
    stoppable_opensearch: OpenSearchNode,
) -> None:
    node = stoppable_opensearch
    client = AsyncOpenSearch(hosts=[node.url], timeout=60)
    indexer = await start_indexer(
        opensearch_url=node.url,
        OPENSEARCH_TIMEOUT_S="5",
        INDEXER_RETRY_MAX_S="2",
        INDEXER_ACK_WAIT_S="8",  # far shorter than the outage: in_progress() must hold messages
    )
    when = datetime(2026, 8, 1, tzinfo=UTC)
    events = [enriched(f"s-{n}", when=when + timedelta(seconds=n)) for n in range(3000)]
    channel, stub = query_stub(indexer)
    try:
        await publish_many(nc, events[:1000], per_batch=50)
        await wait_count(client, prefix, 1)
        await asyncio.to_thread(node.stop)
        await publish_many(nc, events[1000:], per_batch=50)  # events keep arriving
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueryEvents(qs.QueryEventsRequest())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(OUTAGE_S)
        ready, reason = await indexer.ready()
        assert not ready
        assert reason == "opensearch not answering"
        await asyncio.to_thread(node.start)
        await wait_count(client, prefix, 3000, timeout_s=180)

        async def all_acked() -> bool:
            info = await nc.jetstream().consumer_info(subjects.ENRICHED_STREAM, "indexer")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await wait_for(all_acked, timeout_s=120, what="all messages acked")
        info = await nc.jetstream().consumer_info(subjects.ENRICHED_STREAM, "indexer")
        assert info.num_redelivered == 0
        assert await count(client, prefix) == 3000
        ids: list[str] = []
        token = ""
        while True:
            reply = await stub.QueryEvents(qs.QueryEventsRequest(page_size=1000, page_token=token))
            ids.extend(e.event.event_id for e in reply.events)
            token = reply.next_page_token
            if not token:
                break
        assert len(ids) == 3000
        assert set(ids) == {e.event.event_id for e in events}
        assert indexer.metrics.bulk_retries._value.get() > 0
        assert (await indexer.ready())[0]
    finally:
        await channel.close()
        await client.close()
