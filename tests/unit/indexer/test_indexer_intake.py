"""Intake: a message is settled only when all its events are done; poison goes to the DLQ."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from indexer_fakes import FakeDeadLetters, FakeDelivery, FakeStore, ShortAnswerPort, quiet_writer
from telemetry.v1 import event_pb2

from indexer.bulk import BulkPort, BulkWriter
from indexer.errors import SearchUnavailableError
from indexer.intake import Intake
from pipeline import subjects
from pipeline.logs import Throttle


def _event(event_id: str, **metadata: str) -> event_pb2.EnrichedEvent:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(2026, 5, 1, 12, tzinfo=UTC))
    return event_pb2.EnrichedEvent(
        event=event_pb2.Event(event_id=event_id, client_timestamp=stamp, metadata=metadata),
        corrected_timestamp=stamp,
    )


def _batch(*events: event_pb2.EnrichedEvent) -> bytes:
    return event_pb2.EnrichedBatch(events=events).SerializeToString()


def _setup(
    store: FakeStore | None = None, *, port: BulkPort | None = None
) -> tuple[FakeStore, FakeDeadLetters, BulkWriter, Intake]:
    store = store or FakeStore()
    dead = FakeDeadLetters()
    writer = BulkWriter(
        port or store,
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


async def test_another_event_under_a_stored_id_goes_to_the_dlq_not_counted_a_duplicate() -> None:
    # Two apps (or users) whose clients chose one event_id: the second would be answered 409
    # and dropped as "already stored". The same event again is still a duplicate.
    store, dead, writer, intake = _setup()
    first = _event("evt-1")
    first.app_id, first.event.user_id = "shop", "alice"
    other = _event("evt-1")
    other.app_id, other.event.user_id = "news", "bob"
    deliveries = [FakeDelivery(_batch(e), deliveries=1) for e in (first, other, first)]
    for delivery in deliveries:
        await intake.handle(delivery)
        await writer.drain()

    assert [d.settled for d in deliveries] == [["ack"]] * 3
    assert store.docs[("t-2026-05-01", "evt-1")]["user_id"] == "alice"
    [letter] = dead.letters
    assert letter.reason.startswith(
        "event_id_collision: t-2026-05-01 holds event_id 'evt-1' for another event "
        "(app_id 'shop', user_id 'alice'"
    )
    assert event_pb2.EnrichedEvent.FromString(letter.data).event.user_id == "bob"
    assert _counted(intake) == {"created": 1.0, "duplicate": 1.0, "rejected": 1.0}
    assert _dead_lettered(intake) == {"event_id_collision": 1.0, "rejected": 0.0}


async def test_a_collision_and_a_refused_document_are_told_apart_in_the_dlq_count() -> None:
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    await intake.handle(FakeDelivery(_batch(_event("evt-1"))))
    await writer.drain()
    other = _event("evt-1")
    other.event.user_id = "bob"
    await intake.handle(FakeDelivery(_batch(other, _event("bad"), _event(""))))
    await writer.drain()

    assert len(dead.letters) == 3
    assert _dead_lettered(intake) == {"event_id_collision": 1.0, "rejected": 2.0}


def _dead_lettered(intake: Intake) -> dict[str, float]:
    registry = intake._metrics.registry
    return {
        reason: registry.get_sample_value("indexer_dlq_total", {"reason": reason}) or 0.0
        for reason in ("event_id_collision", "rejected")
    }


async def test_documents_answered_409_are_sent_again_when_they_cannot_be_read_back() -> None:
    store, dead, writer, intake = _setup()
    await intake.handle(FakeDelivery(_batch(_event("evt-1"))))
    await writer.drain()
    reads = 0
    real = store.sources

    async def flaky(keys: Any, fields: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise SearchUnavailableError("connection refused")
        return await real(keys, fields)

    store.sources = flaky  # type: ignore[method-assign]
    again = FakeDelivery(_batch(_event("evt-1")), deliveries=2)
    await intake.handle(again)
    await writer.drain()

    assert reads == 2
    assert again.settled == ["ack"]
    assert dead.letters == []


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


async def test_dead_letters_of_one_message_have_distinct_ids_even_for_the_same_event_id() -> None:
    # JetStream drops a second message with a known Nats-Msg-Id: the ids must not collide.
    _, dead, writer, intake = _setup()
    delivery = FakeDelivery(_batch(_event(""), _event("ok"), _event(""), _event("x" * 600)))
    await intake.handle(delivery)
    await writer.drain()

    ids = [letter.msg_id for letter in dead.letters]
    assert len(ids) == 3
    assert len(set(ids)) == 3
    assert {i.rsplit(":", 1)[0] for i in ids} == {f"1:{subjects.digest(delivery.data)}"}


def _enriched_id(name: str) -> dict[str, str]:
    """The headers of an enriched message as the enricher publishes it: named by its id."""
    return {subjects.MSG_ID_HEADER: f"enr:7:{name}"}


@pytest.mark.parametrize(
    ("first_headers", "second_headers"),
    [(_enriched_id("a"), _enriched_id("b")), ({}, {})],
    ids=["by-message-id", "by-bytes"],
)
async def test_a_message_of_a_stream_made_anew_is_not_taken_for_the_one_its_sequence_had(
    first_headers: dict[str, str], second_headers: dict[str, str]
) -> None:
    # TELEMETRY_ENRICHED deleted and made anew (the stream repair does it) numbers its
    # messages from 1 again: within the DLQ's duplicate window, a dead letter named by the
    # sequence alone was dropped as the earlier one's, and the message termed: lost.
    _, dead, _, intake = _setup()
    before = FakeDelivery(b"\xff garbage before", headers=first_headers, stream_seq=1)
    after = FakeDelivery(b"\xff garbage after", headers=second_headers, stream_seq=1)
    await intake.handle(before)
    await intake.handle(after)

    assert before.settled == after.settled == ["term"]
    assert [letter.data for letter in dead.letters] == [before.data, after.data]
    assert len({letter.msg_id for letter in dead.letters}) == 2
    registry = intake._metrics.registry
    assert registry.get_sample_value("indexer_dlq_total", {"reason": "undecodable"}) == 2.0


async def test_the_rejected_events_of_a_stream_made_anew_are_not_taken_for_earlier_ones() -> None:
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"].startswith("bad") else None
    _, dead, writer, intake = _setup(store)
    before = FakeDelivery(_batch(_event("bad-1")), headers=_enriched_id("a"), stream_seq=1)
    after = FakeDelivery(_batch(_event("bad-2")), headers=_enriched_id("b"), stream_seq=1)
    for delivery in (before, after):
        await intake.handle(delivery)
        await writer.drain()

    assert before.settled == after.settled == ["ack"]
    events = [event_pb2.EnrichedEvent.FromString(letter.data) for letter in dead.letters]
    assert [e.event.event_id for e in events] == ["bad-1", "bad-2"]
    assert _dead_lettered(intake) == {"event_id_collision": 0.0, "rejected": 2.0}
    assert _counted(intake)["rejected"] == 2.0


async def test_a_redelivered_message_is_dead_lettered_under_the_same_id() -> None:
    # The DLQ drops the second as a duplicate: one dead letter, counted once.
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    data = _batch(_event("bad"))
    for deliveries in (1, 2):
        await intake.handle(FakeDelivery(data, headers=_enriched_id("a"), deliveries=deliveries))
        await writer.drain()
        await intake.handle(
            FakeDelivery(b"\xff garbage", headers=_enriched_id("b"), deliveries=deliveries)
        )

    assert [letter.deliveries for letter in dead.letters] == [1, 1]
    assert [letter.msg_id for letter in dead.letters] == ["1:enr:7:a:0", "1:enr:7:b"]
    assert _dead_lettered(intake) == {"event_id_collision": 0.0, "rejected": 1.0}
    registry = intake._metrics.registry
    assert registry.get_sample_value("indexer_dlq_total", {"reason": "undecodable"}) == 1.0


async def test_a_dead_letter_names_the_sequence_of_its_message() -> None:
    # Telemetry-Dlq-Source-Seq: where the original is in TELEMETRY_ENRICHED (tpipe dlq
    # replay names it for a dead letter stored without its bytes).
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    await intake.handle(FakeDelivery(_batch(_event("ok"), _event("bad")), stream_seq=41))
    await writer.drain()
    await intake.handle(FakeDelivery(b"\xff garbage", stream_seq=42))

    assert [letter.source_seq for letter in dead.letters] == [41, 42]


async def test_undecodable_message_is_dead_lettered_and_terminated() -> None:
    _, dead, _, intake = _setup()
    delivery = FakeDelivery(b"\xff\xff\xff not a protobuf")
    await intake.handle(delivery)
    assert delivery.settled == ["term"]
    assert dead.letters[0].data == b"\xff\xff\xff not a protobuf"
    assert dead.letters[0].reason.startswith("undecodable: not an EnrichedBatch")


async def test_too_many_deliveries_is_dead_lettered_and_terminated() -> None:
    store, dead, _, intake = _setup()
    delivery = FakeDelivery(_batch(_event("a")), deliveries=4)
    await intake.handle(delivery)
    assert delivery.settled == ["term"]
    assert dead.letters[0].reason.startswith("max_deliveries: delivered 4 times")
    assert dead.letters[0].deliveries == 4
    assert store.docs == {}


async def test_a_delivery_at_exactly_the_limit_is_still_processed() -> None:
    store, dead, writer, intake = _setup()  # max_deliveries=3
    delivery = FakeDelivery(_batch(_event("a")), deliveries=3)
    await intake.handle(delivery)
    await writer.drain()
    assert delivery.settled == ["ack"]
    assert dead.letters == []
    assert set(store.docs) == {("t-2026-05-01", "a")}


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


async def test_an_unavailable_dlq_is_one_warning_per_interval_not_one_per_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    dead.fail = True
    with caplog.at_level(logging.WARNING, logger="indexer.intake"):
        for deliveries in (1, 2, 3):  # each message and each of its redeliveries
            await intake.handle(FakeDelivery(b"\xff garbage", deliveries=deliveries))
            await intake.handle(FakeDelivery(_batch(_event("bad")), deliveries=deliveries))
            await writer.drain()

    [line] = [r for r in caplog.records if "dead letter not published" in r.getMessage()]
    assert line.getMessage().endswith("nats away")  # none held back: no "(0 more ...)"


async def test_the_next_warning_about_the_dlq_says_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    dead = FakeDeadLetters()
    dead.fail = True
    intake = Intake(
        quiet_writer(),
        dead,
        index_prefix="t-",
        max_deliveries=3,
        dlq_failure_log=Throttle(30.0, clock=lambda: now[0]),
    )
    with caplog.at_level(logging.WARNING, logger="indexer.intake"):
        for _ in range(61):
            await intake.handle(FakeDelivery(b"\xff garbage"))
            now[0] += 1.0

    lines = [r for r in caplog.records if "dead letter not published" in r.getMessage()]
    assert [r.held_back for r in lines] == [0, 29, 29]
    assert "since the last line" not in lines[0].getMessage()
    assert lines[1].getMessage().endswith(" (29 more since the last line)")


async def test_dead_letters_log_one_line_per_interval_with_its_first_ones_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A line per message dead-lettered, again for each replay failing again: each is in the
    # DLQ with its reason, and counted.
    now = [0.0]
    _, dead, writer, _ = _setup()
    paced = Throttle(30.0, clock=lambda: now[0])
    intake = Intake(writer, dead, index_prefix="t-", max_deliveries=3, dead_letter_log=paced)
    with caplog.at_level(logging.WARNING, logger="indexer.intake"):
        for seq in range(1, 251):
            await intake.handle(FakeDelivery(b"\xff garbage", stream_seq=seq))
        now[0] += 30.0
        await intake.handle(FakeDelivery(b"\xff garbage", stream_seq=300))

    assert len(dead.letters) == 251
    lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [
        "message dead-lettered",
        "message dead-lettered (249 more dead-lettered since the last line)",
    ]
    assert [(r.reason, r.subject, r.stream_sequence, r.held_back) for r in lines] == [
        ("undecodable", "telemetry.enriched.v1.shop", 1, 0),
        ("undecodable", "telemetry.enriched.v1.shop", 300, 249),
    ]


async def test_every_message_whose_dead_letter_is_refused_for_good_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A message lost: each must be identifiable, however many there are.
    _, dead, _, intake = _setup()
    dead.refuse = lambda msg_id: True
    with caplog.at_level(logging.ERROR, logger="indexer.intake"):
        for seq in range(1, 4):
            await intake.handle(FakeDelivery(b"\xff garbage", stream_seq=seq))
    assert [r.message_id for r in caplog.records] == [f"TELEMETRY_ENRICHED:{n}" for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "data",
    [b"", event_pb2.EnrichedBatch(batch_id="b-1", app_id="shop").SerializeToString()],
    ids=["no-bytes", "no-events"],
)
async def test_a_batch_of_no_events_is_dead_lettered_and_terminated(data: bytes) -> None:
    # The enricher never publishes one: acked, it would leave no trace but a count of acks.
    _, dead, _, intake = _setup()
    delivery = FakeDelivery(data, headers={"X-Origin": "test"}, stream_seq=5)
    await intake.handle(delivery)

    assert delivery.settled == ["term"]
    [letter] = dead.letters
    assert letter.reason == (
        "empty_batch: an EnrichedBatch of no events (the enricher publishes none)"
    )
    assert (letter.data, letter.headers, letter.source_seq) == (data, {"X-Origin": "test"}, 5)
    assert intake.in_progress == 0
    registry = intake._metrics.registry
    assert registry.get_sample_value("indexer_dlq_total", {"reason": "empty_batch"}) == 1.0
    assert registry.get_sample_value("indexer_messages_total", {"outcome": "termed"}) == 1.0
    assert registry.get_sample_value("indexer_messages_total", {"outcome": "acked"}) == 0


async def test_touch_reaches_open_messages() -> None:
    _, _, writer, intake = _setup()
    waiting = FakeDelivery(_batch(_event("a")))
    await intake.handle(waiting)
    await intake.touch()
    assert waiting.touched == 1
    await writer.drain()
    await intake.wait_idle()
    assert waiting.settled == ["ack"]


async def test_fetched_messages_waiting_for_a_bulk_slot_are_touched_too() -> None:
    # Every bulk slot busy (OpenSearch slow or not answering): handing the fetched messages
    # over waits; JetStream must still hear about every one of them, or it redelivers them.
    store = FakeStore()
    store.gate = asyncio.Event()
    _, _, writer, intake = _setup(store)
    fetched = [FakeDelivery(_batch(*(_event(f"m{m}-{n}") for n in range(100)))) for m in range(5)]
    intake.received(fetched)
    assert intake.in_progress == 5

    async def hand_over() -> None:
        for delivery in fetched:
            await intake.handle(delivery)
            await writer.flush()  # a full request each: the slots fill up

    handing = asyncio.create_task(hand_over())
    while store.in_flight < 2:  # noqa: ASYNC110 - both slots taken; the rest wait for one
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    assert not handing.done()
    await intake.touch()
    assert [d.touched for d in fetched] == [1] * 5
    assert intake.in_progress == 5

    store.gate.set()
    await handing
    await writer.drain()
    await intake.wait_idle()
    assert [d.settled for d in fetched] == [["ack"]] * 5
    assert intake.in_progress == 0


async def test_the_in_progress_gauge_counts_messages_waiting_for_a_slot_too() -> None:
    # indexer_messages_in_progress: received and not yet settled, handed over or not.
    store = FakeStore()
    store.gate = asyncio.Event()
    _, _, writer, intake = _setup(store)

    def gauge() -> float | None:
        return intake._metrics.registry.get_sample_value("indexer_messages_in_progress")

    first, second, third = (FakeDelivery(_batch(_event(f"e{n}"))) for n in range(3))
    intake.received([first, second, third])
    assert gauge() == 3
    await intake.handle(first)  # open now, the other two still waiting
    assert gauge() == 3
    await intake.handle(FakeDelivery(b"\xff garbage"))  # never received: dead-lettered at once
    assert gauge() == 3
    assert await intake.release_waiting() == 2
    assert gauge() == 1
    store.gate.set()
    await writer.drain()
    assert first.settled == ["ack"]
    assert gauge() == 0


async def test_a_message_whose_items_cannot_be_made_is_not_held_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An error the fetch loop ends on: the message must not stay open, touched for ever;
    # untouched, JetStream redelivers it after ack_wait.
    _, _, _, intake = _setup()

    def broken(event: Any, **_: Any) -> Any:
        raise RuntimeError("document bug")

    monkeypatch.setattr("indexer.intake.documents.placed_document", broken)
    delivery = FakeDelivery(_batch(_event("a")))
    intake.received([delivery])
    with pytest.raises(RuntimeError, match="document bug"):
        await intake.handle(delivery)
    assert intake.in_progress == 0
    await intake.touch()
    assert (delivery.touched, delivery.settled) == (0, [])


def _counted(intake: Intake) -> dict[str, float]:
    registry = intake._metrics.registry
    return {
        outcome: registry.get_sample_value("indexer_documents_total", {"outcome": outcome}) or 0.0
        for outcome in ("created", "duplicate", "rejected")
    }


async def test_outcomes_are_counted_once_per_event_across_messages_and_requests() -> None:
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"].startswith("bad") else None
    _, dead, writer, intake = _setup(store)  # requests of at most 100 documents
    first = FakeDelivery(_batch(*(_event(f"a{n}") for n in range(150)), _event("bad1")))
    second = FakeDelivery(_batch(_event("a7"), _event(""), _event("b1"), _event("bad2")))
    await intake.handle(first)
    await intake.handle(second)
    await writer.drain()
    assert (first.settled, second.settled) == (["ack"], ["ack"])
    assert _counted(intake) == {"created": 151.0, "duplicate": 1.0, "rejected": 3.0}
    assert sorted(letter.reason for letter in dead.letters) == [
        "event_id is empty",
        "forced: status 400",
        "forced: status 400",
    ]
    assert max(store.requests) == 100  # the first message spanned two requests


async def test_a_redelivery_after_a_failed_dead_letter_counts_each_rejection_once() -> None:
    # Two rejected events: the first one's dead letter is stored, the second's fails, so the
    # message is nak'ed and comes back; the first is dead-lettered again (a duplicate).
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"].startswith("bad") else None
    _, dead, writer, intake = _setup(store)
    data = _batch(_event("ok"), _event("bad1"), _event("bad2"))
    stored = dead.publish

    async def second_fails(**letter: Any) -> bool:
        if letter["msg_id"].endswith(":2"):
            raise ConnectionError("nats away")
        return await stored(**letter)

    dead.publish = second_fails  # type: ignore[method-assign]
    first = FakeDelivery(data)
    await intake.handle(first)
    await writer.drain()
    dead.publish = stored  # type: ignore[method-assign]
    again = FakeDelivery(data, deliveries=2)
    await intake.handle(again)
    await writer.drain()

    assert (first.settled, again.settled) == (["nak"], ["ack"])
    assert len(dead.letters) == 2
    registry = intake._metrics.registry
    assert registry.get_sample_value("indexer_dlq_total", {"reason": "rejected"}) == 2.0
    assert _counted(intake)["rejected"] == 2.0


@pytest.mark.parametrize(
    ("data", "deliveries", "label"),
    [
        (b"\xff garbage", 1, "undecodable"),
        (b"", 1, "empty_batch"),
        (_batch(_event("a")), 4, "max_deliveries"),
    ],
    ids=["undecodable", "empty_batch", "max_deliveries"],
)
async def test_a_message_whose_dead_letter_is_refused_for_good_is_terminated_not_nakked(
    caplog: pytest.LogCaptureFixture, data: bytes, deliveries: int, label: str
) -> None:
    # Nak'd, it would come back every NAK_DELAY_S and be refused again, for ever.
    _, dead, _, intake = _setup()
    dead.refuse = lambda msg_id: True
    delivery = FakeDelivery(data, deliveries=deliveries, stream_seq=9)
    with caplog.at_level(logging.WARNING, logger="indexer.intake"):
        await intake.handle(delivery)

    assert delivery.settled == ["term"]
    assert dead.letters == []
    assert intake.in_progress == 0
    registry = intake._metrics.registry
    assert registry.get_sample_value("indexer_dlq_refused_total") == 1.0
    assert registry.get_sample_value("indexer_dlq_total", {"reason": label}) == 0
    assert registry.get_sample_value("indexer_messages_total", {"outcome": "termed"}) == 1.0
    assert registry.get_sample_value("indexer_messages_total", {"outcome": "nakked"}) == 0
    [line] = caplog.records
    assert line.levelno == logging.ERROR
    assert line.getMessage() == (
        "message dropped: its dead letter was refused:"
        " the DLQ refused it: nats: maximum payload exceeded"
    )
    assert (line.reason, line.subject, line.message_id, line.deliveries) == (
        label,
        "telemetry.enriched.v1.shop",
        "TELEMETRY_ENRICHED:9",
        deliveries,
    )


async def test_a_rejected_event_whose_dead_letter_is_refused_for_good_lets_the_message_be_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The event after it is still dead-lettered, and the message acked as if both had been.
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"].startswith("bad") else None
    _, dead, writer, intake = _setup(store)
    dead.refuse = lambda msg_id: msg_id.endswith(":1")
    delivery = FakeDelivery(_batch(_event("ok"), _event("bad1"), _event("bad2")), stream_seq=9)
    with caplog.at_level(logging.WARNING, logger="indexer.intake"):
        await intake.handle(delivery)
        await writer.drain()

    assert delivery.settled == ["ack"]
    [letter] = dead.letters
    assert event_pb2.EnrichedEvent.FromString(letter.data).event.event_id == "bad2"
    registry = intake._metrics.registry
    assert registry.get_sample_value("indexer_dlq_refused_total") == 1.0
    assert registry.get_sample_value("indexer_dlq_total", {"reason": "rejected"}) == 1.0
    assert _counted(intake) == {"created": 1.0, "duplicate": 0.0, "rejected": 2.0}
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith("rejected event dropped: its dead letter was refused:")
    assert (line.reason, line.message_id, line.position) == ("rejected", "TELEMETRY_ENRICHED:9", 1)


async def test_a_refused_dead_letter_of_a_message_nakked_for_another_is_counted_once() -> None:
    # Another dead letter of the message is not taken for now: the message is nak'd and
    # comes back, and the refused one is counted with the delivery that is acked.
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"].startswith("bad") else None
    _, dead, writer, intake = _setup(store)
    dead.refuse = lambda msg_id: msg_id.endswith(":1")
    data = _batch(_event("ok"), _event("bad1"), _event("bad2"))
    stored = dead.publish

    async def second_fails(**letter: Any) -> bool:
        if letter["msg_id"].endswith(":2"):
            raise ConnectionError("nats away")
        return await stored(**letter)

    dead.publish = second_fails  # type: ignore[method-assign]
    first = FakeDelivery(data)
    await intake.handle(first)
    await writer.drain()
    registry = intake._metrics.registry
    assert first.settled == ["nak"]
    assert registry.get_sample_value("indexer_dlq_refused_total") == 0.0
    dead.publish = stored  # type: ignore[method-assign]
    again = FakeDelivery(data, deliveries=2)
    await intake.handle(again)
    await writer.drain()

    assert again.settled == ["ack"]
    assert registry.get_sample_value("indexer_dlq_refused_total") == 1.0
    assert _counted(intake) == {"created": 0.0, "duplicate": 1.0, "rejected": 2.0}


async def test_a_message_of_only_unusable_events_is_dead_lettered_without_a_request() -> None:
    store, dead, _, intake = _setup()
    delivery = FakeDelivery(_batch(_event(""), _event("x" * 600)))
    await intake.handle(delivery)
    assert delivery.settled == ["ack"]
    assert intake.in_progress == 0
    assert store.requests == []
    assert [letter.reason for letter in dead.letters] == [
        "event_id is empty",
        "event_id is 600 bytes, longer than 512",
    ]
    assert _counted(intake)["rejected"] == 2.0


async def test_a_message_is_settled_only_when_its_retried_events_are_written() -> None:
    store = FakeStore()
    attempts: dict[str, int] = {}

    def busy_once(doc: dict[str, str]) -> int | None:
        attempts[doc["event_id"]] = attempts.get(doc["event_id"], 0) + 1
        return 429 if doc["event_id"] == "slow" and attempts["slow"] == 1 else None

    store.item_status = busy_once
    _, _, writer, intake = _setup(store)
    delivery = FakeDelivery(_batch(_event("a"), _event("slow"), _event("b")))
    await intake.handle(delivery)
    await writer.flush()
    for _ in range(100):
        await asyncio.sleep(0)
        if store.requests:
            break
    assert delivery.settled == []  # "slow" still to be retried
    await writer.drain()
    assert delivery.settled == ["ack"]
    assert attempts["slow"] == 2
    assert _counted(intake)["created"] == 3.0


async def test_a_message_whose_request_was_answered_short_is_acked_once_all_are_written() -> None:
    port = ShortAnswerPort()
    _, dead, writer, intake = _setup(port.store, port=port)
    delivery = FakeDelivery(_batch(_event("a"), _event("b"), _event("c")))
    await intake.handle(delivery)
    await writer.drain()
    assert port.sizes == [3, 3]
    assert delivery.settled == ["ack"]
    assert dead.letters == []
    assert set(port.store.docs) == {("t-2026-05-01", e) for e in "abc"}
    assert _counted(intake) == {"created": 3.0, "duplicate": 0.0, "rejected": 0.0}


async def test_dead_letters_stop_at_the_first_that_fails() -> None:
    # The message is nak'd anyway; every further publish would wait its own timeout in the
    # writer's answer loop, delaying the acks of other messages.
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"].startswith("bad") else None
    _, dead, writer, intake = _setup(store)
    dead.fail = True
    tried: list[str] = []
    failing = dead.publish

    async def counted(**letter: Any) -> bool:
        tried.append(letter["msg_id"])
        return await failing(**letter)

    dead.publish = counted  # type: ignore[method-assign]
    delivery = FakeDelivery(_batch(_event("ok"), _event("bad1"), _event("bad2"), _event("bad3")))
    await intake.handle(delivery)
    await writer.drain()
    assert delivery.settled == ["nak"]
    assert len(tried) == 1


async def test_documents_of_a_nakked_message_are_counted_once_with_its_redelivery() -> None:
    # The dead letter fails: the message is nak'd and comes back; its written documents
    # answer 409 then. Each document counts once, with the delivery that is acked.
    store = FakeStore()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    _, dead, writer, intake = _setup(store)
    data = _batch(_event("a"), _event("b"), _event("bad"))
    dead.fail = True
    first = FakeDelivery(data)
    await intake.handle(first)
    await writer.drain()
    assert first.settled == ["nak"]
    assert _counted(intake) == {"created": 0.0, "duplicate": 0.0, "rejected": 0.0}
    dead.fail = False
    again = FakeDelivery(data, deliveries=2)
    await intake.handle(again)
    await writer.drain()
    assert again.settled == ["ack"]
    assert _counted(intake) == {"created": 0.0, "duplicate": 2.0, "rejected": 1.0}


async def test_documents_of_a_message_whose_ack_fails_are_not_counted_yet() -> None:
    store, _, writer, intake = _setup()
    delivery = FakeDelivery(_batch(_event("a")))

    async def nats_away() -> None:
        raise ConnectionError("nats away")

    delivery.ack = nats_away  # type: ignore[method-assign]
    await intake.handle(delivery)
    await writer.drain()
    assert _counted(intake)["created"] == 0.0
    assert len(store.docs) == 1


async def test_release_naks_what_is_waiting_then_what_is_unsettled() -> None:
    store = FakeStore()
    store.down = True  # every request fails: the handed-over message stays open
    _, _, writer, intake = _setup(store)
    handed, waiting = FakeDelivery(_batch(_event("a"))), FakeDelivery(_batch(_event("b")))
    intake.received([handed, waiting])
    await intake.handle(handed)
    await writer.flush()
    assert await intake.release_waiting() == 1
    assert (handed.settled, waiting.settled) == ([], ["nak"])
    await writer.close()
    assert await intake.release_unsettled() == 1
    assert (handed.settled, waiting.settled) == (["nak"], ["nak"])
    assert intake.in_progress == 0
    await asyncio.wait_for(intake.wait_idle(), 1)
