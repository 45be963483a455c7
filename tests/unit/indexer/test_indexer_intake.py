"""Intake: a message is settled only when all its events are done; poison goes to the DLQ."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from indexer_fakes import FakeDeadLetters, FakeDelivery, FakeStore
from telemetry.v1 import event_pb2

from indexer.bulk import BulkWriter
from indexer.intake import Intake


def _event(event_id: str, **metadata: str) -> event_pb2.EnrichedEvent:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(2026, 5, 1, 12, tzinfo=UTC))
    return event_pb2.EnrichedEvent(
        event=event_pb2.Event(event_id=event_id, client_timestamp=stamp, metadata=metadata),
        corrected_timestamp=stamp,
    )


def _batch(*events: event_pb2.EnrichedEvent) -> bytes:
    return event_pb2.EnrichedBatch(events=events).SerializeToString()


def _setup(store: FakeStore | None = None) -> tuple[FakeStore, FakeDeadLetters, BulkWriter, Intake]:
    store = store or FakeStore()
    dead = FakeDeadLetters()
    writer = BulkWriter(
        store,
        max_docs=100,
        max_bytes=1_000_000,
        flush_interval_s=60,
        concurrency=2,
        retry_base_s=0.001,
        retry_max_s=0.01,
    )
    return store, dead, writer, Intake(writer, dead, index_prefix="t-", max_deliveries=3)


async def test_ack_only_after_every_event_is_written() -> None:
    store, _, writer, intake = _setup()
    delivery = FakeDelivery(_batch(_event("a"), _event("b"), _event("c")))
    await intake.handle(delivery)
    assert delivery.settled == []  # queued, not yet written
    assert intake.in_progress == 1
    await writer.drain()
    assert delivery.settled == ["ack"]
    assert intake.in_progress == 0
    assert set(store.docs) == {("t-2026-05-01", e) for e in "abc"}


async def test_redelivery_is_acked_as_duplicates() -> None:
    store, _, writer, intake = _setup()
    data = _batch(_event("a"), _event("b"))
    first, second = FakeDelivery(data), FakeDelivery(data, deliveries=2)
    await intake.handle(first)
    await writer.drain()
    await intake.handle(second)
    await writer.drain()
    assert first.settled == second.settled == ["ack"]
    assert len(store.docs) == 2


async def test_a_rejected_event_goes_to_the_dlq_and_the_message_is_acked() -> None:
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    delivery = FakeDelivery(_batch(_event("a"), _event("bad"), _event("b")))
    await intake.handle(delivery)
    await writer.drain()
    assert delivery.settled == ["ack"]
    assert [letter.reason for letter in dead.letters] == ["forced: status 400"]
    letter = dead.letters[0]
    assert event_pb2.EnrichedEvent.FromString(letter.data).event.event_id == "bad"
    assert letter.headers["Telemetry-Schema"] == "telemetry.v1.EnrichedEvent"
    assert set(store.docs) == {("t-2026-05-01", "a"), ("t-2026-05-01", "b")}


async def test_an_event_that_cannot_be_a_document_goes_to_the_dlq() -> None:
    store, dead, writer, intake = _setup()
    delivery = FakeDelivery(_batch(_event(""), _event("ok")))
    await intake.handle(delivery)
    await writer.drain()
    assert delivery.settled == ["ack"]
    assert [letter.reason for letter in dead.letters] == ["event_id is empty"]
    assert list(store.docs) == [("t-2026-05-01", "ok")]


async def test_undecodable_message_is_dead_lettered_and_terminated() -> None:
    _, dead, _, intake = _setup()
    delivery = FakeDelivery(b"\xff\xff\xff not a protobuf")
    await intake.handle(delivery)
    assert delivery.settled == ["term"]
    assert dead.letters[0].data == b"\xff\xff\xff not a protobuf"
    assert dead.letters[0].reason.startswith("not an EnrichedBatch")


async def test_too_many_deliveries_is_dead_lettered_and_terminated() -> None:
    store, dead, _, intake = _setup()
    delivery = FakeDelivery(_batch(_event("a")), deliveries=4)
    await intake.handle(delivery)
    assert delivery.settled == ["term"]
    assert "delivered 4 times" in dead.letters[0].reason
    assert dead.letters[0].deliveries == 4
    assert store.docs == {}


async def test_dlq_unavailable_means_nak_not_loss() -> None:
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    dead.fail = True
    delivery = FakeDelivery(_batch(_event("a"), _event("bad")))
    await intake.handle(delivery)
    await writer.drain()
    assert delivery.settled == ["nak"]
    poison = FakeDelivery(b"\xff garbage")
    await intake.handle(poison)
    assert poison.settled == ["nak"]


async def test_empty_batch_is_acked_and_touch_reaches_open_messages() -> None:
    _, _, writer, intake = _setup()
    empty = FakeDelivery(_batch())
    await intake.handle(empty)
    assert empty.settled == ["ack"]
    waiting = FakeDelivery(_batch(_event("a")))
    await intake.handle(waiting)
    await intake.touch()
    assert waiting.touched == 1
    await writer.drain()
    await intake.wait_idle()
    assert waiting.settled == ["ack"]
