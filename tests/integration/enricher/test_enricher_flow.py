"""The enricher against a real (private) nats-server: enrichment, DLQ, dedup, stop, gRPC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import pytest
from nats.js import JetStreamContext
from telemetry.v1 import enrich_service_pb2, enrich_service_pb2_grpc, event_pb2

from enricher import Enricher
from enricher._enrich import EnrichOptions, timestamp_ns
from enricher._geo import OfflineGeo
from enricher._handler import Handler
from enricher._metrics import Metrics
from enricher._nats import Broker, ConsumerSettings, JsSink, bind_consumer, consumer_pending
from enricher._policy import RetryPolicy
from enricher.errors import PublishRefusedError
from pipeline import subjects
from pipeline.natsconn import JetStreamDelivery
from tests.integration.enricher.helpers import (
    FILLER_SUBJECT,
    POLL_S,
    enricher_config,
    publish_raw,
    raw_batch,
    read_stream,
    refuse_enriched,
    settle,
    stream_count,
    wait_for_count,
    wait_until_ready,
)
from tests.servers import NatsProcess
from tests.unit.enricher.mmdb_writer import write_mmdb

pytestmark = pytest.mark.integration

S = 1_000_000_000


async def test_raw_batch_in_enriched_batch_out(js: JetStreamContext, enricher: Enricher) -> None:
    received = int(time.time())
    public = raw_batch(n=2, received_s=received, sent_offset_s=30, device_os="iOS 17.2")
    private = raw_batch(n=1, client_ip="127.0.0.1", received_s=received, device_os="Android 14")
    seq = await publish_raw(
        js,
        public,
        headers={subjects.MSG_ID_HEADER: "raw-a", subjects.TRACEPARENT_HEADER: "00-t-s-01"},
    )
    await publish_raw(js, private)
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, 2) == 2
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)

    by_batch = {}
    for msg in await read_stream(js, subjects.ENRICHED_STREAM):
        assert msg.subject == "telemetry.enriched.v1.shop"
        batch = event_pb2.EnrichedBatch.FromString(msg.data or b"")
        by_batch[batch.batch_id] = (batch, msg.headers or {})

    batch, headers = by_batch[public.context.batch_id]
    assert headers[subjects.MSG_ID_HEADER] == f"enr:{seq}:raw-a"
    assert headers[subjects.SCHEMA_HEADER] == subjects.ENRICHED_SCHEMA
    assert headers[subjects.TRACEPARENT_HEADER] == "00-t-s-01"
    assert [e.event.event_id for e in batch.events] == [e.event_id for e in public.events]
    first = batch.events[0]
    assert first.geo.country_code == "GB"
    # The device is 30 s ahead; its event at device time `received` happened 30 s earlier.
    assert first.clock_status == event_pb2.CLOCK_STATUS_CORRECTED
    assert first.clock_skew_ms == 30_000
    assert first.corrected_timestamp.seconds == received - 30
    assert (first.os_name, first.os_version) == ("iOS", "17.2")
    assert first.event_message == "item_purchased sku A-0"

    other, other_headers = by_batch[private.context.batch_id]
    assert not other.events[0].HasField("geo")
    assert other.events[0].clock_status == event_pb2.CLOCK_STATUS_UNCORRECTED
    assert (other.events[0].os_name, other.events[0].os_version) == ("Android", "14")
    assert subjects.TRACEPARENT_HEADER not in other_headers


async def test_a_batch_that_enriches_past_the_largest_message_is_published_in_parts(
    js: JetStreamContext, enricher: Enricher
) -> None:
    # A raw message just under the server's 1 MiB, as the gateway's split makes them:
    # enriched (times, geo, OS, event_message repeating the metadata) it is about twice that.
    raw = raw_batch(n=650)
    for event in raw.events:
        for k in range(20):
            event.metadata[f"key-{k:02d}"] = "v" * 60
    data = raw.SerializeToString()
    assert 900_000 < len(data) < 1_048_576 - 4096
    seq = await publish_raw(js, data, headers={subjects.MSG_ID_HEADER: "big"})

    await wait_for_count(js, subjects.ENRICHED_STREAM, 2)
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    messages = await read_stream(js, subjects.ENRICHED_STREAM)
    assert len(messages) >= 2
    assert all(len(m.data or b"") <= 1_048_576 - 4096 for m in messages)
    ids = [
        e.event.event_id
        for m in messages
        for e in event_pb2.EnrichedBatch.FromString(m.data or b"").events
    ]
    assert ids == [e.event_id for e in raw.events]  # every event once, in order
    msg_ids = [(m.headers or {})[subjects.MSG_ID_HEADER] for m in messages]
    first_part = event_pb2.EnrichedBatch.FromString(messages[0].data or b"")
    assert msg_ids[0] == f"enr:{seq}:big:0-{len(first_part.events)}"
    assert len(set(msg_ids)) == len(msg_ids)
    assert await stream_count(js, subjects.DLQ_STREAM) == 0


async def test_garbage_goes_to_the_dlq_once_and_the_pipeline_goes_on(
    js: JetStreamContext, enricher: Enricher
) -> None:
    garbage = b"\xff\xfe\xfd this is not a protobuf"
    await js.publish(
        "telemetry.raw.v1.x", garbage, stream=subjects.RAW_STREAM, headers={"X-Origin": "test"}
    )
    good = raw_batch(app_id="x")
    await publish_raw(js, good, app_id="x")
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, 1) == 1
    assert await wait_for_count(js, subjects.DLQ_STREAM, 1) == 1
    await settle(js)

    dead = await read_stream(js, subjects.DLQ_STREAM)
    assert len(dead) == 1
    assert dead[0].subject == "telemetry.dlq.v1.enricher"
    assert dead[0].data == garbage
    headers = dead[0].headers or {}
    assert headers[subjects.DLQ_STAGE_HEADER] == "enricher"
    assert headers[subjects.DLQ_REASON_HEADER].startswith("undecodable")
    assert headers[subjects.DLQ_SUBJECT_HEADER] == "telemetry.raw.v1.x"
    assert headers["X-Origin"] == "test"
    enriched = await read_stream(js, subjects.ENRICHED_STREAM)
    batch = event_pb2.EnrichedBatch.FromString(enriched[0].data or b"")
    assert batch.batch_id == good.context.batch_id
    assert await stream_count(js, subjects.DLQ_STREAM) == 1
    dlq = enricher.metrics.registry.get_sample_value(
        "enricher_dlq_total", {"reason": "undecodable"}
    )
    assert dlq == 1


async def test_a_poison_message_with_jetstream_headers_is_dead_lettered_without_them(
    js: JetStreamContext, enricher: Enricher
) -> None:
    # Right for the raw stream when published (its last sequence is 1), wrong for the DLQ
    # stream (empty): copied onto the dead letter, the DLQ would refuse it every time.
    await publish_raw(js, raw_batch(app_id="x"), app_id="x")
    garbage = b"\xff\xfe not a protobuf"
    seq = await publish_raw(
        js,
        garbage,
        app_id="x",
        headers={"Nats-Expected-Last-Sequence": "1", "Nats-Msg-Id": "raw-9", "X-Origin": "t"},
    )

    assert await wait_for_count(js, subjects.DLQ_STREAM, 1) == 1
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    [dead] = await read_stream(js, subjects.DLQ_STREAM)
    assert dead.data == garbage
    headers = dead.headers or {}
    assert "Nats-Expected-Last-Sequence" not in headers
    assert headers["X-Origin"] == "t"
    assert headers[subjects.DLQ_SOURCE_SEQ_HEADER] == str(seq)


async def test_a_poison_message_near_max_payload_is_dead_lettered_without_its_bytes(
    js: JetStreamContext, enricher: Enricher
) -> None:
    # With the DLQ headers it is more than the server takes: it would close the
    # connection on every try.
    garbage = b"\xff" * (1_048_576 - 200)
    seq = await publish_raw(js, garbage, app_id="x")
    good = raw_batch(app_id="x")
    await publish_raw(js, good, app_id="x")

    assert await wait_for_count(js, subjects.DLQ_STREAM, 1) == 1
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, 1) == 1
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    [dead] = await read_stream(js, subjects.DLQ_STREAM)
    assert not dead.data
    headers = dead.headers or {}
    assert headers[subjects.DLQ_OMITTED_BYTES_HEADER] == str(len(garbage))
    assert headers[subjects.DLQ_SOURCE_SEQ_HEADER] == str(seq)
    assert headers[subjects.DLQ_REASON_HEADER].startswith("undecodable")
    assert (await js.get_msg(subjects.RAW_STREAM, seq)).data == garbage


async def test_a_raw_stream_made_anew_has_its_poison_dead_lettered_again(
    js: JetStreamContext,
) -> None:
    # Its sequences start at 1 again: within the duplicate window, a dead letter named by
    # the sequence alone would be dropped as the earlier message's, and the new one lost.
    sink = JsSink(js, timeout_s=5.0, max_payload=lambda: 1_048_576)

    class Poison:
        subject = "telemetry.raw.v1.x"
        stream_seq = 1
        deliveries = 1
        stored_ns = 0

        def __init__(self, data: bytes, msg_id: str) -> None:
            self.data = data
            self.headers = {subjects.MSG_ID_HEADER: msg_id}

    first, again = Poison(b"\xff first", "raw-a"), Poison(b"\xff second", "raw-b")
    assert await sink.dead_letter(first, reason="undecodable", detail="x") is False  # type: ignore[arg-type]
    assert await sink.dead_letter(first, reason="undecodable", detail="x") is True  # type: ignore[arg-type]
    assert await sink.dead_letter(again, reason="undecodable", detail="x") is False  # type: ignore[arg-type]

    assert [m.data for m in await read_stream(js, subjects.DLQ_STREAM)] == [first.data, again.data]


async def test_an_enriched_stream_refusing_publishes_sends_nothing_to_the_dlq(
    js: JetStreamContext, nats_server: NatsProcess
) -> None:
    # The enriched stream takes no new message for 3 s (full at one message, discard new)
    # while the raw one works: with naks every 0.05-0.1 s and 3 deliveries allowed, each
    # message would run out of deliveries in a fraction of that if a refused publish spent one.
    service = Enricher(
        enricher_config(
            nats_server.url,
            ENRICHER_MAX_DELIVER="3",
            ENRICHER_NAK_DELAY_S="0.05",
            ENRICHER_NAK_MAX_DELAY_S="0.1",
        )
    )
    await service.start()
    try:
        await wait_until_ready(service)  # its start set the streams' configuration
        enriched = await refuse_enriched(js)
        batches = [raw_batch(n=3) for _ in range(10)]
        for batch in batches:
            await publish_raw(js, batch)
        metrics = service.metrics.registry
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            assert await stream_count(js, subjects.DLQ_STREAM) == 0
        # Each fetch loop holds what it fetched and fetches no more meanwhile.
        held = metrics.get_sample_value("enricher_messages_held") or 0
        assert 1 <= held <= 10
        retried = metrics.get_sample_value("enricher_messages_total", {"outcome": "retried"})
        assert retried == held  # each held message counted once
        attempts = metrics.get_sample_value("enricher_publish_retries_total")
        assert (attempts or 0) >= held  # tried again in place, each at least once
        assert await stream_count(js, subjects.ENRICHED_STREAM) == 1

        await js.update_stream(enriched)
        assert await wait_for_count(js, subjects.ENRICHED_STREAM, 11) == 11
        info = await settle(js)
    finally:
        await service.stop()

    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert info.num_redelivered == 0
    assert await stream_count(js, subjects.DLQ_STREAM) == 0
    assert metrics.get_sample_value("enricher_messages_held") == 0
    stored = {
        event_pb2.EnrichedBatch.FromString(msg.data or b"").batch_id
        for msg in await read_stream(js, subjects.ENRICHED_STREAM)
        if msg.subject != FILLER_SUBJECT
    }
    assert stored == {batch.context.batch_id for batch in batches}


async def test_a_stop_gives_back_at_once_what_waits_for_the_enriched_stream(
    js: JetStreamContext, nats_server: NatsProcess
) -> None:
    service = Enricher(enricher_config(nats_server.url, ENRICHER_STOP_TIMEOUT_S="30"))
    await service.start()
    try:
        await wait_until_ready(service)
        enriched = await refuse_enriched(js)
        await publish_raw(js, raw_batch())
        registry = service.metrics.registry
        deadline = time.monotonic() + 10.0
        while not registry.get_sample_value("enricher_messages_held"):
            assert time.monotonic() < deadline, "the message was never held"
            await asyncio.sleep(POLL_S)
    finally:
        started = time.monotonic()
        await service.stop()
        stopped_in = time.monotonic() - started

    assert stopped_in < 10.0  # not the 30 s a stop may take: the held message is nak'ed
    # Given back, not left for ack_wait (30 s): the next enricher has it at once.
    await js.update_stream(enriched)
    successor = Enricher(enricher_config(nats_server.url))
    await successor.start()
    try:
        assert await wait_for_count(js, subjects.ENRICHED_STREAM, 2, timeout_s=10.0) == 2
        info = await settle(js)
    finally:
        await successor.stop()
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await stream_count(js, subjects.DLQ_STREAM) == 0


async def test_original_event_batch_is_enriched_with_the_stream_time(
    js: JetStreamContext, enricher: Enricher
) -> None:
    legacy = event_pb2.EventBatch()
    event = legacy.events.add(event_id="legacy-1", event_name="open", device_os="iOS 16.4")
    event.client_timestamp.seconds = int(time.time()) - 60
    ack = await js.publish(
        "telemetry.raw.v1.legacy", legacy.SerializeToString(), stream=subjects.RAW_STREAM
    )
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, 1) == 1
    stored = await js.get_msg(subjects.RAW_STREAM, ack.seq)
    assert stored.time is not None
    batch = event_pb2.EnrichedBatch.FromString(
        (await read_stream(js, subjects.ENRICHED_STREAM))[0].data or b""
    )
    only = batch.events[0]
    assert batch.app_id == "legacy"
    # The broker's timestamp, to the microsecond the client library keeps.
    assert abs(timestamp_ns(only.received_at) - int(stored.time.timestamp() * S)) < 1_000_000
    assert only.clock_status == event_pb2.CLOCK_STATUS_UNCORRECTED
    assert (only.os_name, only.os_version) == ("iOS", "16.4")


async def test_a_lost_ack_is_redelivered_and_deduplicated(js: JetStreamContext) -> None:
    """The crash window: published and PubAcked, but the raw ack never made it."""
    settings = ConsumerSettings(
        name="enricher", ack_wait_s=1.0, max_ack_pending=10, fetch_batch=10, fetch_timeout_s=0.5
    )
    [sub] = await bind_consumer(js, settings)
    metrics = Metrics()
    handler = Handler(
        sink=JsSink(js, timeout_s=5.0, max_payload=lambda: 1_048_576),
        geo=OfflineGeo(),
        options=EnrichOptions(),
        retry=RetryPolicy(max_deliver=5, base_delay_s=0.1, max_delay_s=1.0),
        metrics=metrics,
    )

    class AckLost(JetStreamDelivery):
        async def ack(self) -> None:
            return None

    raw = raw_batch(n=3)
    await publish_raw(js, raw)
    first = await sub.fetch(1, timeout=5)
    await handler.handle([AckLost(first[0])])
    assert await stream_count(js, subjects.ENRICHED_STREAM) == 1

    again = await sub.fetch(1, timeout=10)  # after ack_wait
    assert again[0].metadata.num_delivered == 2
    await handler.handle([JetStreamDelivery(again[0])])
    info = await settle(js)
    assert info.num_ack_pending == 0
    # Counted once: the redelivery's publish was a duplicate.
    assert metrics.registry.get_sample_value("enricher_events_total") == 3
    # JetStream recognised the second publish by its Nats-Msg-Id and dropped it.
    assert metrics.registry.get_sample_value("enricher_duplicates_total") == 1
    assert await stream_count(js, subjects.ENRICHED_STREAM) == 1


async def test_consumer_pending_is_the_lag(js: JetStreamContext) -> None:
    settings = ConsumerSettings(
        name="enricher", ack_wait_s=30, max_ack_pending=10, fetch_batch=10, fetch_timeout_s=0.5
    )
    [sub] = await bind_consumer(js, settings)
    for _ in range(5):
        await publish_raw(js, raw_batch())
    assert await consumer_pending(sub) == 5


async def test_ready_metrics_and_lag_gauge(
    nats_server: NatsProcess, js: JetStreamContext, enricher: Enricher
) -> None:
    for _ in range(3):
        await publish_raw(js, raw_batch(n=4))
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, 3) == 3
    await settle(js)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{enricher.http_port}") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        text = (await client.get("/metrics")).text
    assert 'enricher_messages_total{outcome="enriched"} 3.0' in text
    assert "enricher_events_total 12.0" in text
    assert "enricher_batch_seconds_bucket" in text
    assert "enricher_consumer_pending 0.0" in text


async def test_not_ready_while_nats_is_down_ready_again_after(
    nats_server: NatsProcess, js: JetStreamContext
) -> None:
    service = Enricher(enricher_config(nats_server.url))
    await service.start()
    try:
        await wait_until_ready(service)
        assert await service.ready() == (True, "ok")
        nats_server.stop()
        deadline = time.monotonic() + 10
        ok, reason = await service.ready()
        while ok and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            ok, reason = await service.ready()
        assert not ok
        assert reason == "nats not connected" or reason.startswith("stream "), reason
        nats_server.start()  # same port, same store
        deadline = time.monotonic() + 20
        while not ok and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            ok, reason = await service.ready()
        assert (ok, reason) == (True, "ok")
    finally:
        await service.stop()


async def test_stop_finishes_and_acks_what_it_fetched(
    nats_server: NatsProcess, js: JetStreamContext
) -> None:
    total = 300
    for _ in range(total):
        await publish_raw(js, raw_batch(n=5))
    service = Enricher(enricher_config(nats_server.url, ENRICHER_FETCH_BATCH="5"))
    await service.start()
    await wait_for_count(js, subjects.ENRICHED_STREAM, 10)
    await service.stop()
    await service.stop()  # idempotent
    info = await js.consumer_info(subjects.RAW_STREAM, "enricher")
    enriched = await stream_count(js, subjects.ENRICHED_STREAM)
    assert info.num_ack_pending == 0
    assert enriched + info.num_pending == total


async def test_grpc_enrich_events_on_the_running_service(enricher: Enricher) -> None:
    request = enrich_service_pb2.EnrichEventsRequest(batch=raw_batch(n=2, client_ip="8.8.8.8"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{enricher.grpc_port}") as channel:
        response = await enrich_service_pb2_grpc.EnrichServiceStub(channel).EnrichEvents(request)
    assert len(response.events) == 2
    assert response.events[0].geo.country_code == "US"
    assert response.events[0].os_name == "iOS"


async def test_maxmind_database_adds_the_city(
    nats_server: NatsProcess, js: JetStreamContext, tmp_path: Path
) -> None:
    path = tmp_path / "city.mmdb"
    write_mmdb(
        path,
        {"81.2.69.0/24": {"country": {"iso_code": "GB"}, "city": {"names": {"en": "London"}}}},
    )
    service = Enricher(enricher_config(nats_server.url, ENRICHER_GEOIP_DB=str(path)))
    await service.start()
    try:
        await publish_raw(js, raw_batch(n=1))
        assert await wait_for_count(js, subjects.ENRICHED_STREAM, 1) == 1
    finally:
        await service.stop()
    msg = (await read_stream(js, subjects.ENRICHED_STREAM))[0]
    only = event_pb2.EnrichedBatch.FromString(msg.data or b"").events[0]
    assert (only.geo.country_code, only.geo.city) == ("GB", "London")


async def test_changed_settings_update_the_shared_consumer(js: JetStreamContext) -> None:
    def settings(ack_wait_s: float, max_ack_pending: int) -> ConsumerSettings:
        return ConsumerSettings(
            name="enricher",
            ack_wait_s=ack_wait_s,
            max_ack_pending=max_ack_pending,
            fetch_batch=1,
            fetch_timeout_s=1,
        )

    await bind_consumer(js, settings(30, 100))
    await bind_consumer(js, settings(2, 50))
    info = await js.consumer_info(subjects.RAW_STREAM, "enricher")
    assert (info.config.ack_wait, info.config.max_ack_pending) == (2.0, 50)
    assert info.config.max_deliver == -1  # the delivery limit is the enricher's own
    assert info.config.ack_policy == "explicit"


async def test_start_returns_while_nats_is_down_and_stop_is_prompt(tmp_path: Path) -> None:
    """A broker that is not there yet is waited for in the background; stop cancels the wait."""
    down = NatsProcess(tmp_path / "nats")  # not started
    service = Enricher(enricher_config(down.url))
    await service.start()
    try:
        assert await service.ready() == (False, "nats not connected")
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{service.http_port}/readyz")
        assert resp.status_code == 503
        down.start()
        await wait_until_ready(service)
    finally:
        await service.stop()
        down.stop()
    assert await service.ready() == (False, "nats not connected")


async def test_stop_while_waiting_for_nats(tmp_path: Path) -> None:
    service = Enricher(enricher_config(NatsProcess(tmp_path / "nats").url))
    await service.start()
    await asyncio.wait_for(service.stop(), timeout=10)
    assert service.http_port == 0


async def test_a_broker_whose_consumer_is_deleted_is_not_ready(
    js: JetStreamContext, nats_server: NatsProcess
) -> None:
    config = enricher_config(nats_server.url)
    settings = ConsumerSettings(
        name="enricher", ack_wait_s=30.0, max_ack_pending=16, fetch_batch=4, fetch_timeout_s=0.2
    )
    broker = await Broker.connect(config, timeout_s=5.0)
    await broker.ensure_streams()
    await broker.bind(settings, subscriptions=1)
    try:
        assert await broker.ready() == (True, "ok")
        await js.delete_consumer(subjects.RAW_STREAM, "enricher")
        assert await broker.ready() == (False, "consumer missing")
    finally:
        await broker.close(timeout_s=5.0)


async def test_a_deleted_consumer_is_created_again_and_consumption_goes_on(
    js: JetStreamContext, enricher: Enricher
) -> None:
    await js.delete_consumer(subjects.RAW_STREAM, "enricher")
    raw = raw_batch()
    await publish_raw(js, raw)

    assert await wait_for_count(js, subjects.ENRICHED_STREAM, 1, timeout_s=20.0) == 1
    [msg] = await read_stream(js, subjects.ENRICHED_STREAM)
    assert event_pb2.EnrichedBatch.FromString(msg.data or b"").batch_id == raw.context.batch_id
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await enricher.ready() == (True, "ok")


async def test_an_enriched_publish_the_server_refuses_for_good_is_not_a_broker_error(
    js: JetStreamContext,
) -> None:
    # A BrokerError is tried again in place for as long as it lasts; a message larger than
    # the server takes would hold its fetch loop for ever.
    sink = JsSink(js, timeout_s=5.0, max_payload=lambda: 1_048_576)
    too_large = b"x" * (2 * 1_048_576)  # the server's max_payload is NATS's default, 1 MiB

    with pytest.raises(PublishRefusedError, match="refused"):
        await sink.publish(subjects.enriched_subject("shop"), too_large, headers={})
