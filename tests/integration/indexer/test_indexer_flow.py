"""Through a private NATS and the real OpenSearch: effectively once, DLQ, outage, ops routes."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from indexer_support import (
    IndexerFactory,
    count,
    enriched,
    indexer_config,
    publish,
    publish_many,
    query_stub,
    wait_count,
    wait_for,
)
from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from opensearchpy import AsyncOpenSearch
from telemetry.v1 import event_pb2
from telemetry.v1 import query_service_pb2 as qs

from indexer import Indexer
from indexer.service import STEP_RETRY_S
from pipeline import subjects
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration


async def test_same_event_three_times_across_a_day_change_is_one_document(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    happened = datetime(2026, 2, 10, 23, 59, 58, tzinfo=UTC)
    first = enriched("evt-1", when=happened, received=happened + timedelta(seconds=1))
    # The device retries the next day: new received/corrected/enriched times.
    retry = enriched(
        "evt-1",
        when=happened,
        received=happened + timedelta(days=1, hours=2),
        corrected=happened + timedelta(days=1, hours=2),
    )

    def duplicates(indexer: Indexer) -> float:
        return float(indexer.metrics.documents.labels(outcome="duplicate")._value.get())

    async def all_settled() -> bool:
        info = await nc.jetstream().consumer_info(subjects.ENRICHED_STREAM, "indexer")
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    before = await start_indexer()
    await publish(nc, [first, enriched("other", when=happened)], msg_id="batch-a")
    await wait_count(os_client, prefix, 2)
    await publish(nc, [retry], msg_id="batch-b")  # a client retry, next day

    async def retry_acked_as_duplicate() -> bool:
        return duplicates(before) >= 1 and await all_settled()

    # Counted with its ack, and the ack received by NATS: batch-b cannot come back to the
    # restarted indexer, so each indexer's count below is exact.
    await wait_for(retry_acked_as_duplicate, what="batch-b acked by the first indexer")
    await before.stop()  # a restart in between
    after = await start_indexer()
    await publish(nc, [retry], msg_id="batch-c")  # a redelivery of the retry

    async def redelivery_acked_as_duplicate() -> bool:
        return duplicates(after) >= 1 and await all_settled()

    await wait_for(redelivery_acked_as_duplicate, what="batch-c acked by the restarted indexer")
    assert await count(os_client, prefix) == 2
    answer = await os_client.search(
        index=f"{prefix}*", body={"query": {"term": {"event_id": "evt-1"}}}
    )
    hits = answer["hits"]["hits"]
    assert [h["_index"] for h in hits] == [f"{prefix}2026-02-10"]  # the first day's, kept
    assert duplicates(before) == 1  # the next day's retry
    assert duplicates(after) == 1  # the third delivery, seen by the restarted indexer


async def test_client_days_far_from_the_arrival_go_to_the_undated_index(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    arrived = datetime(2026, 5, 20, 12, tzinfo=UTC)
    events = [
        enriched("near", when=arrived - timedelta(days=2), received=arrived),
        enriched("behind", when=arrived - timedelta(days=4), received=arrived),
        enriched("reset", when=datetime(2001, 1, 1, tzinfo=UTC), received=arrived),
        enriched("ahead", when=arrived + timedelta(days=2), received=arrived),
    ]
    await start_indexer(INDEXER_DATED_PAST_DAYS="3", INDEXER_DATED_FUTURE_DAYS="1")
    await publish(nc, events, msg_id="m1")
    await wait_count(os_client, prefix, 4)
    answer = await os_client.search(index=f"{prefix}*", body={"size": 10})
    placed = {hit["_id"]: hit["_index"] for hit in answer["hits"]["hits"]}
    assert placed == {
        "near": f"{prefix}2026-05-18",
        "behind": f"{prefix}undated",
        "reset": f"{prefix}undated",
        "ahead": f"{prefix}undated",
    }


async def test_a_rejected_document_goes_to_the_dlq_with_the_reason(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    when = datetime(2026, 3, 1, 8, tzinfo=UTC)
    # One metadata value longer than Lucene's term limit: OpenSearch refuses the document.
    poison = enriched("poison", when=when, metadata={"blob": "x" * 40_000})
    good = [enriched(f"good-{n}", when=when) for n in range(5)]
    dlq = await nc.jetstream().pull_subscribe(
        subjects.dlq_subject("indexer"), durable="dlq-reader", stream=subjects.DLQ_STREAM
    )
    indexer = await start_indexer()
    await publish(nc, [good[0], good[1], poison, good[2]], msg_id="m1")
    await publish(nc, good[3:], msg_id="m2")
    await wait_count(os_client, prefix, 5)
    letters = await dlq.fetch(1, timeout=10)
    letter = letters[0]
    assert letter.headers is not None
    assert letter.headers[subjects.DLQ_STAGE_HEADER] == "indexer"
    reason = letter.headers[subjects.DLQ_REASON_HEADER]
    assert "illegal_argument_exception" in reason
    assert "immense term" in reason
    assert event_pb2.EnrichedEvent.FromString(letter.data).event.event_id == "poison"
    assert await count(os_client, prefix) == 5
    assert indexer.metrics.documents.labels(outcome="rejected")._value.get() == 1


async def test_another_apps_event_under_a_stored_id_goes_to_the_dlq_not_lost(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # One event_id chosen by two apps' clients: the second copy is answered 409. It is
    # read back against the stored one, not dropped as a duplicate; a real retry still is.
    when = datetime(2026, 3, 1, 8, tzinfo=UTC)
    shop = enriched("evt-1", when=when, app_id="shop", user_id="alice")
    news = enriched("evt-1", when=when, app_id="news", user_id="bob")
    dlq = await nc.jetstream().pull_subscribe(
        subjects.dlq_subject("indexer"), durable="dlq-reader", stream=subjects.DLQ_STREAM
    )
    indexer = await start_indexer()
    await publish(nc, [shop], msg_id="m1")
    await wait_count(os_client, prefix, 1)
    await publish(nc, [news], msg_id="m2")
    await publish(nc, [shop], msg_id="m3")  # the same event again
    [letter] = await dlq.fetch(1, timeout=10)

    assert letter.headers is not None
    reason = letter.headers[subjects.DLQ_REASON_HEADER]
    assert reason.startswith(f"event_id_collision: {prefix}2026-03-01 holds event_id 'evt-1'")
    assert "app_id 'shop', user_id 'alice'" in reason
    assert event_pb2.EnrichedEvent.FromString(letter.data).event.user_id == "bob"

    async def settled() -> bool:
        duplicates = indexer.metrics.documents.labels(outcome="duplicate")._value.get()
        return bool(duplicates == 1)

    await wait_for(settled, what="the same event counted a duplicate")
    assert await count(os_client, prefix) == 1
    assert indexer.metrics.documents.labels(outcome="rejected")._value.get() == 1


async def test_an_undecodable_message_near_max_payload_is_dead_lettered_without_its_bytes(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # With the DLQ headers it is more than the server takes: refused on every try, it would
    # come back for ever.
    garbage = b"\xff" * (nc.max_payload - 200)
    dlq = await nc.jetstream().pull_subscribe(
        subjects.dlq_subject("indexer"), durable="dlq-reader", stream=subjects.DLQ_STREAM
    )
    await start_indexer()
    await nc.jetstream().publish(
        subjects.enriched_subject("x"),
        garbage,
        headers={subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA},
    )
    await publish(nc, [enriched("after", when=datetime(2026, 3, 1, tzinfo=UTC))], msg_id="m1")
    await wait_count(os_client, prefix, 1)
    [letter] = await dlq.fetch(1, timeout=10)
    assert letter.data == b""
    assert letter.headers is not None
    assert letter.headers[subjects.DLQ_OMITTED_BYTES_HEADER] == str(len(garbage))
    reason = letter.headers[subjects.DLQ_REASON_HEADER]
    assert reason.startswith("undecodable: not an EnrichedBatch")


class CuttableProxy:
    """A TCP proxy to OpenSearch that a test can cut (connections refused) and restore."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()
            self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_opensearch_away_for_30_seconds_loses_nothing_and_duplicates_nothing(
    start_indexer: IndexerFactory,
    nc: Client,
    os_client: AsyncOpenSearch,
    prefix: str,
    opensearch_url: str,
) -> None:
    proxy = CuttableProxy(int(opensearch_url.rsplit(":", 1)[1].strip("/")))
    await proxy.open()
    indexer = await start_indexer(
        opensearch_url=f"http://127.0.0.1:{proxy.port}",
        OPENSEARCH_TIMEOUT_S="3",
        INDEXER_RETRY_MAX_S="2",
        INDEXER_ACK_WAIT_S="6",  # shorter than the outage: in_progress must keep messages
    )
    when = datetime(2026, 7, 1, tzinfo=UTC)
    events = [enriched(f"o-{n}", when=when + timedelta(seconds=n)) for n in range(3000)]
    await publish_many(nc, events[:1000], per_batch=50)
    await wait_count(os_client, prefix, 1)
    await proxy.cut()
    await publish_many(nc, events[1000:], per_batch=50)  # events keep flowing meanwhile
    channel, stub = query_stub(indexer)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueryEvents(qs.QueryEventsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.sleep(30)
    assert not (await indexer.ready())[0]
    await proxy.open()
    await wait_count(os_client, prefix, 3000, timeout_s=120)

    async def all_acked() -> bool:
        info = await nc.jetstream().consumer_info(subjects.ENRICHED_STREAM, "indexer")
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_for(all_acked, timeout_s=60, what="all messages acked")
    info = await nc.jetstream().consumer_info(subjects.ENRICHED_STREAM, "indexer")
    # in_progress() kept every held message alive through an outage 5x longer than ack_wait.
    assert info.num_redelivered == 0
    assert await count(os_client, prefix) == 3000
    ids: set[str] = set()
    reply = await stub.QueryEvents(qs.QueryEventsRequest(page_size=1000))
    while True:
        ids.update(e.event.event_id for e in reply.events)
        if not reply.next_page_token:
            break
        reply = await stub.QueryEvents(
            qs.QueryEventsRequest(page_size=1000, page_token=reply.next_page_token)
        )
    assert ids == {e.event.event_id for e in events}
    assert indexer.metrics.bulk_retries._value.get() > 0
    await channel.close()


async def test_ops_routes_and_metrics(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    indexer = await start_indexer()
    await publish(nc, [enriched("m-1", when=datetime(2026, 1, 1, tzinfo=UTC))], msg_id="x")
    await wait_count(os_client, prefix, 1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{indexer.http_port}") as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text

        async def counted() -> bool:
            text = (await http.get("/metrics")).text
            return 'indexer_documents_total{outcome="created"} 1.0' in text

        await wait_for(counted, what="created metric")
        text = (await http.get("/metrics")).text
        for name in (
            "indexer_bulk_seconds_bucket",
            "indexer_bulk_requests_in_flight",
            "indexer_consumer_pending",
            "indexer_bulk_retries_total",
            "indexer_dlq_total",
        ):
            assert name in text
    await indexer.stop()
    await indexer.stop()  # idempotent


async def test_stop_flushes_and_acks_what_it_fetched(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    when = datetime(2026, 9, 9, tzinfo=UTC)
    events = [enriched(f"g-{n}", when=when + timedelta(seconds=n)) for n in range(20000)]
    await publish_many(nc, events, per_batch=50)
    indexer = await start_indexer(INDEXER_FLUSH_INTERVAL_S="5", INDEXER_FETCH_BATCH="20")
    await wait_count(os_client, prefix, 1)
    await indexer.stop()  # mid-stream: partial bulk buffers must be flushed, not dropped
    info = await nc.jetstream().consumer_info(subjects.ENRICHED_STREAM, "indexer")
    assert info.num_ack_pending == 0
    acked_messages = info.ack_floor.stream_seq
    assert info.delivered.stream_seq == acked_messages
    assert await count(os_client, prefix) == acked_messages * 50
    # A restart picks up exactly where the stop left off.
    await start_indexer()
    await wait_count(os_client, prefix, 20000)
    assert await count(os_client, prefix) == 20000


async def test_a_stop_gives_back_at_once_what_it_could_not_write(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # The day's index refuses writes (403, retried): the drain cannot settle the messages.
    when = datetime(2026, 10, 10, tzinfo=UTC)
    blocked = f"{prefix}2026-10-10"
    indexer = await start_indexer(INDEXER_GRACEFUL_STOP_S="1")
    await os_client.indices.create(index=blocked)
    await os_client.indices.put_settings(index=blocked, body={"index.blocks.write": True})
    try:
        for n in range(3):
            await publish(nc, [enriched(f"w-{n}", when=when)], msg_id=f"w-{n}")
        registry = indexer.metrics.registry

        async def held() -> bool:
            return registry.get_sample_value("indexer_messages_in_progress") == 3

        await wait_for(held, what="three messages in progress")
        await indexer.stop()
        # Nak'd, not left for ack_wait (30 s): the consumer has them again at once.
        sub = await nc.jetstream().pull_subscribe_bind(
            durable="indexer", stream=subjects.ENRICHED_STREAM
        )
        again = await sub.fetch(3, timeout=5)
        assert sorted(msg.metadata.num_delivered for msg in again) == [2, 2, 2]
        await sub.unsubscribe()
    finally:
        await os_client.indices.put_settings(index=blocked, body={"index.blocks.write": False})


async def test_a_consumer_that_cannot_be_created_is_retried_and_not_ready_meanwhile(
    nats_server: NatsProcess,
    opensearch_url: str,
    nc: Client,
    os_client: AsyncOpenSearch,
    prefix: str,
) -> None:
    js = nc.jetstream()
    # A push consumer under the indexer's durable name: its pull consumer cannot be made.
    await js.add_consumer(
        subjects.ENRICHED_STREAM,
        config=ConsumerConfig(durable_name="indexer", deliver_subject="somewhere.else"),
    )
    await publish(nc, [enriched("waits", when=datetime(2026, 4, 1, tzinfo=UTC))], msg_id="w")
    indexer = Indexer(indexer_config(nats_server.url, opensearch_url, prefix))
    await indexer.start()
    try:

        async def waiting() -> bool:
            ok, why = await indexer.ready()
            return not ok and why.startswith("not consuming yet: ")

        await wait_for(waiting, what="readiness naming the consumer")
        await asyncio.sleep(2 * STEP_RETRY_S)  # still retrying, still not ready
        assert await indexer.ready() != (True, "ok")
        await js.delete_consumer(subjects.ENRICHED_STREAM, "indexer")
        # Without a restart: the next attempt creates the consumer and the event comes in.
        await wait_for(lambda: _is_ready(indexer), timeout_s=4 * STEP_RETRY_S, what="readiness")
        await wait_count(os_client, prefix, 1)
    finally:
        await indexer.stop()


async def _is_ready(indexer: Indexer) -> bool:
    return (await indexer.ready())[0]
