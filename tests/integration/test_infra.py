"""The local servers do what the pipeline relies on: JetStream durability and OpenSearch search."""

from __future__ import annotations

import uuid

import nats
import pytest
from opensearchpy import OpenSearch

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0


async def test_jetstream_publish_ack_then_pull_consume_and_ack(nats_url: str) -> None:
    suffix = uuid.uuid4().hex
    stream, subject, durable = f"TEST_INFRA_{suffix}", f"test.infra.{suffix}", f"c_{suffix}"
    client = await nats.connect(nats_url, connect_timeout=TIMEOUT_S)
    try:
        js = client.jetstream(timeout=TIMEOUT_S)
        await js.add_stream(name=stream, subjects=[subject])
        try:
            ack = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": suffix})
            assert (ack.stream, ack.seq, ack.duplicate) == (stream, 1, None)

            subscription = await js.pull_subscribe(subject, durable=durable, stream=stream)
            messages = await subscription.fetch(1, timeout=TIMEOUT_S)
            assert [message.data for message in messages] == [b"hello"]
            await messages[0].ack_sync(timeout=TIMEOUT_S)

            consumer = await js.consumer_info(stream, durable)
            assert consumer.num_ack_pending == 0
            assert consumer.ack_floor.stream_seq == 1
        finally:
            await js.delete_stream(stream)
    finally:
        await client.close()


def test_opensearch_index_refresh_then_search(opensearch_url: str) -> None:
    index = f"test-infra-{uuid.uuid4().hex}"
    client = OpenSearch(hosts=[opensearch_url], timeout=TIMEOUT_S)
    try:
        client.indices.create(
            index=index,
            body={
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {
                    "properties": {
                        "event_name": {"type": "keyword"},
                        "event_message": {"type": "text"},
                    }
                },
            },
        )
        try:
            document = {"event_name": "purchase", "event_message": "checkout completed"}
            client.index(index=index, id="event-1", body=document)
            client.index(index=index, id="event-2", body={"event_name": "app_open"})
            client.indices.refresh(index=index)

            result = client.search(
                index=index, body={"query": {"match": {"event_message": "checkout"}}}
            )
            hits = result["hits"]["hits"]
            assert [(hit["_id"], hit["_source"]) for hit in hits] == [("event-1", document)]
        finally:
            client.indices.delete(index=index)
    finally:
        client.close()
