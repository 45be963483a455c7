"""The handler with fake broker ports: publish before ack, DLQ for poison, a publish NATS
does not take tried again in place, nak for other trouble."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
from telemetry.v1 import event_pb2

from enricher import _enrich
from enricher._enrich import EnrichOptions
from enricher._geo import GeoLookup, OfflineGeo
from enricher._handler import Delivery, Handler
from enricher._metrics import Metrics
from enricher._policy import RetryPolicy
from enricher.errors import BrokerError, DeadLetterRefusedError, PublishRefusedError
from pipeline import logs, subjects

S = 1_000_000_000
RETRY = RetryPolicy(max_deliver=3, base_delay_s=0.01, max_delay_s=0.04)
PATIENT = RetryPolicy(max_deliver=5, base_delay_s=0.01, max_delay_s=0.04)


@dataclass
class FakeDelivery:
    data: bytes
    subject: str = "telemetry.raw.v1.shop"
    headers: Mapping[str, str] = field(default_factory=dict)
    stream_seq: int = 7
    deliveries: int = 1
    stored_ns: int = 1_700_000_000 * S
    log: list[str] = field(default_factory=list)
    touched: asyncio.Event = field(default_factory=asyncio.Event)

    async def ack(self) -> None:
        self.log.append("ack")

    async def nak(self, delay_s: float) -> None:
        self.log.append(f"nak {delay_s}")

    async def term(self) -> None:
        self.log.append("term")

    async def in_progress(self) -> None:
        self.log.append("touch")
        self.touched.set()

    async def touches(self, count: int) -> None:
        """Returns once the message has been touched `count` more times."""
        for _ in range(count):
            self.touched.clear()
            await self.touched.wait()


FOREVER = 1 << 60


@dataclass
class FakeSink:
    """`fail_publish` and `fail_dlq`: how many calls NATS does not take (BrokerError) before
    it takes them; `publish_error`: raised by every publish (a failure not NATS's)."""

    fail_publish: int = 0
    fail_dlq: int = 0
    publish_error: Exception | None = None
    dlq_error: Exception | None = None
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    dead: list[tuple[bytes, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
        if self.publish_error is not None:
            raise self.publish_error
        if self.fail_publish:
            self.fail_publish -= 1
            raise BrokerError("no ack")
        duplicate = any(h == dict(headers) for _, _, h in self.published)
        self.published.append((subject, data, dict(headers)))
        self.log.append("publish")
        return duplicate

    async def dead_letter(self, delivery: Delivery, *, reason: str, detail: str) -> bool:
        if self.dlq_error is not None:
            raise self.dlq_error
        if self.fail_dlq:
            self.fail_dlq -= 1
            raise BrokerError("dlq down")
        self.log.append("dlq")
        if (delivery.data, reason) in self.dead:  # one per message, as JetStream keeps
            return True
        self.dead.append((delivery.data, reason))
        return False


def _handler(
    sink: FakeSink,
    metrics: Metrics | None = None,
    *,
    max_message_bytes: int | Callable[[], int] = 0,
    max_events: int = 0,
    geo: GeoLookup | None = None,
    clock_ns: Callable[[], int] = lambda: 1_700_000_001 * S,
    retry_log: logs.Throttle | None = None,
    dead_letter_log: logs.Throttle | None = None,
    retry: RetryPolicy = RETRY,
    touch_every_s: float = 10.0,
    options: EnrichOptions | None = None,
) -> Handler:
    return Handler(
        sink=sink,
        geo=geo or OfflineGeo(),
        options=options or EnrichOptions(),
        retry=retry,
        metrics=metrics or Metrics(),
        clock_ns=clock_ns,
        max_message_bytes=max_message_bytes,
        max_events=max_events,
        retry_log=retry_log,
        dead_letter_log=dead_letter_log,
        touch_every_s=touch_every_s,
    )


def _good() -> bytes:
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    raw.context.client_ip = "81.2.69.142"
    raw.events.add(event_id="e1", event_name="open", device_os="iOS 17.2")
    raw.events.add(event_id="e2", event_name="close")
    return raw.SerializeToString()


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_good_message_is_published_then_acked() -> None:
    sink, metrics = FakeSink(), Metrics()
    shared: list[str] = []
    sink.log = shared
    delivery = FakeDelivery(
        _good(),
        headers={subjects.MSG_ID_HEADER: "raw-1", subjects.TRACEPARENT_HEADER: "00-abc-def-01"},
        log=shared,
    )
    await _handler(sink, metrics).handle([delivery])
    assert shared == ["publish", "ack"]
    subject, data, headers = sink.published[0]
    assert subject == "telemetry.enriched.v1.shop"
    assert headers == {
        subjects.MSG_ID_HEADER: "enr:7:raw-1",
        subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA,
        subjects.TRACEPARENT_HEADER: "00-abc-def-01",
    }
    batch = event_pb2.EnrichedBatch.FromString(data)
    assert [e.event.event_id for e in batch.events] == ["e1", "e2"]
    assert batch.events[0].geo.country_code == "GB"
    assert _sample(metrics, "enricher_messages_total", outcome="enriched") == 1
    assert _sample(metrics, "enricher_events_total") == 2
    assert _sample(metrics, "enricher_batch_seconds_count") == 1


async def test_no_deliveries_are_no_batch_and_not_timed() -> None:
    # enricher_batch_seconds is fetch to ack of a fetched batch: an idle pipeline's count rose
    # while enricher_messages_total stayed 0.
    metrics = Metrics()
    await _handler(FakeSink(), metrics).handle([])
    assert _sample(metrics, "enricher_batch_seconds_count") == 0


async def test_a_replayed_message_passes_on_the_dlq_entry_it_came_from() -> None:
    # So that `tpipe dlq replay --wait` recognises it when the indexer rejects it.
    sink = FakeSink()
    delivery = FakeDelivery(_good(), headers={subjects.DLQ_REPLAY_OF_HEADER: "17"})

    await _handler(sink).handle([delivery])

    assert sink.published[0][2][subjects.DLQ_REPLAY_OF_HEADER] == "17"


async def test_redelivery_publishes_with_the_same_msg_id() -> None:
    sink, metrics = FakeSink(), Metrics()
    handler = _handler(sink, metrics)
    await handler.handle([FakeDelivery(_good(), deliveries=1)])
    await handler.handle([FakeDelivery(_good(), deliveries=2)])
    ids = {headers[subjects.MSG_ID_HEADER] for _, _, headers in sink.published}
    assert len(ids) == 1
    assert ids.pop().startswith("enr:7:sha256-")  # no raw id: the digest of its bytes
    assert _sample(metrics, "enricher_duplicates_total") == 1
    assert _sample(metrics, "enricher_events_total") == 2  # counted once, not per delivery


async def test_garbage_goes_to_the_dlq_and_is_terminated() -> None:
    sink, metrics = FakeSink(), Metrics()
    garbage = FakeDelivery(b"\xff\xfe garbage")
    good = FakeDelivery(_good(), stream_seq=8)
    await _handler(sink, metrics).handle([garbage, good])
    assert sink.dead == [(b"\xff\xfe garbage", "undecodable")]
    assert garbage.log == ["term"]
    assert good.log == ["ack"]
    assert len(sink.published) == 1
    assert _sample(metrics, "enricher_dlq_total", reason="undecodable") == 1
    assert _sample(metrics, "enricher_messages_total", outcome="dead_lettered") == 1


async def test_a_message_of_more_events_than_allowed_goes_to_the_dlq() -> None:
    sink, metrics = FakeSink(), Metrics()
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    for i in range(4):
        raw.events.add(event_id=f"e{i}")
    many, two = FakeDelivery(raw.SerializeToString()), FakeDelivery(_good(), stream_seq=8)

    await _handler(sink, metrics, max_events=3).handle([many, two])

    assert sink.dead == [(many.data, "too_many_events")]
    assert many.log == ["term"]
    assert two.log == ["ack"]
    assert _sample(metrics, "enricher_dlq_total", reason="too_many_events") == 1


async def test_each_message_is_published_before_the_next_is_enriched() -> None:
    # The first message's publish (and ack) need not wait for the whole fetch's CPU.
    shared: list[str] = []

    class Geo:
        def lookup(self, ip: str) -> event_pb2.Geo | None:
            shared.append(f"enrich {ip}")
            return None

    def good(ip: str) -> bytes:
        raw = event_pb2.RawBatch.FromString(_good())
        raw.context.client_ip = ip
        return raw.SerializeToString()

    sink = FakeSink(log=shared)
    first = FakeDelivery(good("81.2.69.1"), stream_seq=1)
    second = FakeDelivery(good("81.2.69.2"), stream_seq=2)

    await _handler(sink, geo=Geo()).handle([first, second])

    assert shared == ["enrich 81.2.69.1", "publish", "enrich 81.2.69.2", "publish"]


async def test_a_failure_not_natss_naks_with_a_growing_delay() -> None:
    sink, metrics = FakeSink(publish_error=RuntimeError("bug")), Metrics()
    handler = _handler(sink, metrics, retry=PATIENT)
    first, third = FakeDelivery(_good(), deliveries=1), FakeDelivery(_good(), deliveries=3)
    await handler.handle([first])
    await handler.handle([third])
    assert first.log == ["nak 0.01"]
    assert third.log == ["nak 0.04"]
    assert sink.dead == []
    assert _sample(metrics, "enricher_messages_total", outcome="retried") == 2


async def test_a_publish_nats_does_not_take_is_tried_in_place_and_spends_no_delivery() -> None:
    # On its last allowed delivery: a nak would have sent it to the DLQ next time.
    sink, metrics = FakeSink(fail_publish=3), Metrics()
    delivery = FakeDelivery(_good(), deliveries=3)

    await _handler(sink, metrics).handle([delivery])

    assert delivery.log == ["touch", "touch", "touch", "ack"]
    assert len(sink.published) == 1
    assert sink.dead == []
    # One message retried, in three attempts.
    assert _sample(metrics, "enricher_messages_total", outcome="retried") == 1
    assert _sample(metrics, "enricher_publish_retries_total") == 3
    assert _sample(metrics, "enricher_messages_total", outcome="enriched") == 1
    assert _sample(metrics, "enricher_messages_held") == 0


async def test_a_held_message_is_touched_within_ack_wait_and_naked_at_once_on_stop() -> None:
    sink, metrics = FakeSink(fail_publish=FOREVER), Metrics()
    slow = RetryPolicy(max_deliver=3, base_delay_s=60.0, max_delay_s=60.0)
    handler = _handler(sink, metrics, retry=slow, touch_every_s=0.01)
    delivery = FakeDelivery(_good())
    handling = asyncio.create_task(handler.handle([delivery]))
    await asyncio.wait_for(delivery.touches(3), 1.0)
    assert _sample(metrics, "enricher_messages_held") == 1

    handler.stop()
    await asyncio.wait_for(handling, 1.0)

    assert set(delivery.log[:-1]) == {"touch"}
    assert delivery.log[-1] == "nak 0.0"
    assert _sample(metrics, "enricher_messages_held") == 0
    assert sink.published == []
    assert await handler.release_unsettled() == 0  # nak'ed already: not again


async def test_a_message_leaves_in_progress_as_it_settles_not_with_its_fetch() -> None:
    sink, metrics = FakeSink(fail_dlq=FOREVER), Metrics()
    handler = _handler(sink, metrics, touch_every_s=0.01)
    held, good = FakeDelivery(b"\xff garbage"), FakeDelivery(_good(), stream_seq=8)
    handling = asyncio.create_task(handler.handle([held, good]))
    await asyncio.wait_for(held.touches(2), 1.0)

    assert good.log == ["ack"]
    assert _sample(metrics, "enricher_messages_in_progress") == 1
    assert _sample(metrics, "enricher_messages_held") == 1

    handler.stop()
    await asyncio.wait_for(handling, 1.0)
    assert held.log[-1] == "nak 0.0"
    assert _sample(metrics, "enricher_messages_in_progress") == 0


async def test_a_cancelled_fetch_leaves_nothing_in_progress() -> None:
    sink, metrics = FakeSink(fail_publish=FOREVER), Metrics()
    handler = _handler(sink, metrics, touch_every_s=0.01)
    first = FakeDelivery(_good(), stream_seq=1)
    handling = asyncio.create_task(
        handler.handle([first, *(FakeDelivery(_good(), stream_seq=n) for n in range(2, 5))])
    )
    await asyncio.wait_for(first.touches(1), 1.0)

    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling
    assert _sample(metrics, "enricher_messages_in_progress") == 0
    assert _sample(metrics, "enricher_messages_held") == 0


@dataclass
class HangingSink(FakeSink):
    """Takes the first `takes` publishes; every later one never returns (no PubAck, ever)."""

    takes: int = 1
    attempts: int = 0
    hanging: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
        self.attempts += 1
        if self.attempts > self.takes:
            self.hanging.set()
            await asyncio.Event().wait()
        return await super().publish(subject, data, headers=headers)


async def test_what_a_cancelled_handle_left_unsettled_is_released_with_naks_at_once() -> None:
    sink = HangingSink(takes=1)
    handler = _handler(sink)
    deliveries = [FakeDelivery(_good(), stream_seq=n) for n in range(1, 21)]
    handling = asyncio.create_task(handler.handle(deliveries))
    await asyncio.wait_for(sink.hanging.wait(), 1.0)  # the second one's publish hangs

    handling.cancel()  # as a stop past its time cancels a fetch loop
    with pytest.raises(asyncio.CancelledError):
        await handling
    assert sink.attempts < len(deliveries)  # the last ones never had their turn
    assert handler.unsettled == len(deliveries) - 1

    assert await handler.release_unsettled() == len(deliveries) - 1
    published, *rest = deliveries
    assert published.log == ["ack"]  # published before the cancel: acked, not given back
    assert [d.log for d in rest] == [["nak 0.0"]] * len(rest)
    assert handler.unsettled == 0
    assert await handler.release_unsettled() == 0  # each given back once


async def test_a_dead_letter_stored_before_is_not_counted_again() -> None:
    # Its term was lost (NATS away): the message comes back and is dead-lettered again.
    sink, metrics = FakeSink(), Metrics()
    handler = _handler(sink, metrics)
    first, again = FakeDelivery(b"\xff garbage"), FakeDelivery(b"\xff garbage", deliveries=2)
    await handler.handle([first])
    await handler.handle([again])

    assert first.log == again.log == ["term"]
    assert len(sink.dead) == 1
    assert _sample(metrics, "enricher_dlq_total", reason="undecodable") == 1


async def test_restarts_while_nats_does_not_take_publishes_send_nothing_to_the_dlq() -> None:
    # Each stop gives the held message back (a nak, counted as a delivery by the broker);
    # past ENRICHER_MAX_DELIVER (3) it is still tried, and held again, not dead-lettered.
    sink = FakeSink(fail_publish=FOREVER)
    for deliveries in range(1, 7):
        handler = _handler(sink, touch_every_s=0.01)
        delivery = FakeDelivery(_good(), deliveries=deliveries)
        handling = asyncio.create_task(handler.handle([delivery]))
        await asyncio.wait_for(delivery.touches(1), 1.0)
        handler.stop()
        await asyncio.wait_for(handling, 1.0)
        assert delivery.log[-1] == "nak 0.0"
    assert sink.dead == []

    sink.fail_publish = 0  # NATS takes publishes again
    delivery = FakeDelivery(_good(), deliveries=7)
    await _handler(sink).handle([delivery])
    assert delivery.log == ["ack"]
    assert len(sink.published) == 1
    assert sink.dead == []


async def test_a_message_that_never_settles_is_given_up_unprocessed_far_past_the_limit() -> None:
    # As a message that kills the process as it is handled would be, delivery after delivery.
    sink = FakeSink()
    delivery = FakeDelivery(_good(), deliveries=13)  # the limit is 3
    await _handler(sink).handle([delivery])
    assert sink.published == []
    assert sink.dead == [(delivery.data, "max_deliveries")]
    assert delivery.log == ["term"]


async def test_past_max_deliveries_a_failure_not_natss_goes_to_the_dlq_with_it() -> None:
    sink = FakeSink(publish_error=RuntimeError("bug"))
    delivery = FakeDelivery(_good(), deliveries=4)
    await _handler(sink).handle([delivery])
    assert sink.published == []
    assert sink.dead == [(delivery.data, "max_deliveries")]
    assert delivery.log == ["term"]


async def test_a_dead_letter_nats_does_not_take_is_tried_in_place_never_terminated_first() -> None:
    sink = FakeSink(fail_dlq=2)
    delivery = FakeDelivery(b"\xff garbage", deliveries=3)
    await _handler(sink).handle([delivery])
    assert delivery.log == ["touch", "touch", "term"]
    assert sink.dead == [(delivery.data, "undecodable")]


async def test_a_dead_letter_refused_for_good_is_logged_and_the_message_terminated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Tried again, it would hold its fetch loop forever.
    sink, metrics = FakeSink(dlq_error=DeadLetterRefusedError("too large")), Metrics()
    delivery = FakeDelivery(b"\xff garbage")
    other = FakeDelivery(_good(), stream_seq=8)

    await asyncio.wait_for(_handler(sink, metrics).handle([delivery, other]), 5.0)

    assert delivery.log == ["term"]
    assert other.log == ["ack"]
    assert _sample(metrics, "enricher_dlq_refused_total") == 1
    assert _sample(metrics, "enricher_dlq_total", reason="undecodable") == 0
    assert _sample(metrics, "enricher_messages_held") == 0
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "its dead letter was refused: too large" in record.getMessage()


async def test_dead_letters_log_one_line_per_interval_with_its_first_ones_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 250 poison messages wrote 250 warnings, and a replay failing again as many: each is in
    # the DLQ with its reason, and counted.
    now = [100.0]
    sink = FakeSink()
    handler = _handler(sink, dead_letter_log=logs.Throttle(30.0, clock=lambda: now[0]))

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "dead-lettered" in r.getMessage()]

    poison = [FakeDelivery(b"\xff poison %d" % n, stream_seq=n) for n in range(1, 251)]
    await handler.handle(poison)
    assert len(sink.dead) == 250
    [first] = lines()
    assert first.getMessage() == "raw message dead-lettered"
    assert (first.reason, first.subject, first.stream_sequence, first.held_back) == (
        "undecodable",
        "telemetry.raw.v1.shop",
        1,
        0,
    )

    now[0] += 30.0
    await handler.handle([FakeDelivery(b"\xff poison 300", stream_seq=300)])
    assert lines()[1].getMessage() == (
        "raw message dead-lettered (249 more dead-lettered since the last line)"
    )
    assert (lines()[1].stream_sequence, lines()[1].held_back) == (300, 249)


async def test_every_dead_letter_refused_for_good_is_logged_each_message_its_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A message lost: each must be identifiable, however many there are.
    sink = FakeSink(dlq_error=DeadLetterRefusedError("too large"))
    handler = _handler(sink, dead_letter_log=logs.Throttle(30.0, clock=lambda: 100.0))

    await handler.handle([FakeDelivery(b"\xff garbage", stream_seq=n) for n in range(1, 4)])

    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.stream_sequence for r in errors] == [1, 2, 3]


@pytest.mark.parametrize("failing", ["ack", "nak", "term"])
async def test_a_failing_settle_is_counted_not_raised(failing: str) -> None:
    class Broken(FakeDelivery):
        async def ack(self) -> None:
            if failing == "ack":
                raise BrokerError("closed")

        async def nak(self, delay_s: float) -> None:
            if failing == "nak":
                raise BrokerError("closed")

        async def term(self) -> None:
            if failing == "term":
                raise BrokerError("closed")

    metrics = Metrics()
    data = {"ack": _good(), "nak": _good(), "term": b"\xff"}[failing]
    sink = FakeSink(publish_error=RuntimeError("bug") if failing == "nak" else None)
    await _handler(sink, metrics).handle([Broken(data)])
    assert _sample(metrics, "enricher_ack_failures_total") == 1


def _big(n: int) -> bytes:
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    for i in range(n):
        event = raw.events.add(event_id=f"e{i:03d}", event_name="open", device_os="iOS 17.2")
        event.metadata["blob"] = "x" * 200
    return raw.SerializeToString()


async def test_an_enriched_batch_past_the_limit_is_published_in_parts_then_acked() -> None:
    sink = FakeSink()
    shared: list[str] = []
    sink.log = shared
    delivery = FakeDelivery(_big(40), headers={subjects.MSG_ID_HEADER: "raw-1"}, log=shared)

    await _handler(sink, max_message_bytes=4000).handle([delivery])

    assert shared == ["publish"] * len(sink.published) + ["ack"]  # acked after every part
    assert len(sink.published) >= 3
    assert all(len(data) <= 4000 for _, data, _ in sink.published)
    batches = [event_pb2.EnrichedBatch.FromString(data) for _, data, _ in sink.published]
    assert [e.event.event_id for b in batches for e in b.events] == [f"e{i:03d}" for i in range(40)]
    assert all(b.app_id == "shop" for b in batches)
    # Each part is named by its range of events, `<first>-<end>`.
    ranges, first = [], 0
    for b in batches:
        ranges.append(f"{first}-{first + len(b.events)}")
        first += len(b.events)
    assert [h[subjects.MSG_ID_HEADER] for _, _, h in sink.published] == [
        f"enr:7:raw-1:{r}" for r in ranges
    ]


async def test_a_publish_refused_for_its_size_is_given_back_and_split_to_the_new_limit() -> None:
    # The server's max_payload fell (a reconnect to another node): the publish prepared for
    # the old one is refused for good, so it is not tried again in place; the redelivery
    # reads the limit again and splits to it.
    class Shrunk(FakeSink):
        async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
            if len(data) > 4000:
                raise PublishRefusedError("maximum payload exceeded")
            return await super().publish(subject, data, headers=headers)

    sink, limits = Shrunk(), iter([1_000_000, 4000])
    handler = _handler(sink, max_message_bytes=lambda: next(limits))
    first = FakeDelivery(_big(40))
    await asyncio.wait_for(handler.handle([first]), 5.0)
    again = FakeDelivery(_big(40), deliveries=2)
    await handler.handle([again])

    assert first.log[0].startswith("nak")
    assert again.log == ["ack"]
    assert len(sink.published) > 1
    stored = [
        e.event.event_id
        for _, data, _ in sink.published
        for e in event_pb2.EnrichedBatch.FromString(data).events
    ]
    assert stored == [f"e{i:03d}" for i in range(40)]


async def test_a_redelivered_split_batch_is_all_duplicates() -> None:
    sink, metrics = FakeSink(), Metrics()
    handler = _handler(sink, metrics, max_message_bytes=4000)
    await handler.handle([FakeDelivery(_big(40))])
    first = len(sink.published)
    await handler.handle([FakeDelivery(_big(40), deliveries=2)])

    assert len(sink.published) == 2 * first
    assert _sample(metrics, "enricher_duplicates_total") == 1


@dataclass
class SinkFailingAfter(FakeSink):
    """Keeps one message per message id, as JetStream's duplicate window does; fails every
    publish after the first `good`."""

    good: int = 1_000
    by_id: dict[str, bytes] = field(default_factory=dict)

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
        if len(self.published) >= self.good:
            raise BrokerError("no ack")
        msg_id = headers[subjects.MSG_ID_HEADER]
        duplicate = msg_id in self.by_id
        self.by_id.setdefault(msg_id, data)
        await super().publish(subject, data, headers=headers)
        return duplicate


@pytest.mark.parametrize("limit", range(2900, 3200, 7))
async def test_a_redelivery_with_another_clock_splits_alike_and_stores_each_event_once(
    limit: int,
) -> None:
    # Each delivery stamps its own enriched_at, whose encoding is up to 4 bytes shorter
    # (nanoseconds of one byte instead of five), 160 bytes over 40 events. The first process
    # stops after one part was taken; the message goes to the next, with another clock.
    sink, metrics = SinkFailingAfter(), Metrics()
    sink.good = 1
    clock = [1_700_000_001 * S + 999_999_999]
    stopping = _handler(
        sink, metrics, clock_ns=lambda: clock[0], max_message_bytes=limit, touch_every_s=0.01
    )
    first = FakeDelivery(_big(40))
    handling = asyncio.create_task(stopping.handle([first]))
    await asyncio.wait_for(first.touches(1), 1.0)
    stopping.stop()
    await handling
    assert first.log[-1] == "nak 0.0"

    sink.good = 1_000
    clock[0] = 1_700_000_002 * S + 5
    again = FakeDelivery(_big(40), deliveries=2)
    await _handler(sink, metrics, clock_ns=lambda: clock[0], max_message_bytes=limit).handle(
        [again]
    )

    assert again.log == ["ack"]
    assert len(sink.published) == len(sink.by_id) + 1  # the first part, again: a duplicate
    stored = [
        e.event.event_id
        for data in sink.by_id.values()
        for e in event_pb2.EnrichedBatch.FromString(data).events
    ]
    assert sorted(stored) == [f"e{i:03d}" for i in range(40)]  # each once
    assert _sample(metrics, "enricher_events_total") == 40  # and counted once
    assert all(len(data) <= limit for _, data, _ in sink.published)


async def test_an_event_too_large_only_for_its_event_message_has_that_text_cut(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_enrich, "_CUT_LOG", logs.Throttle(30.0))  # none written yet
    # Its raw size fits a message; enriched, its event_message (the metadata again, 3 bytes
    # a character) does not. The other events of the batch must not be lost with it.
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    big = raw.events.add(event_id="e-big", event_name="open", device_os="iOS 17.2")
    big.metadata["text"] = "語 " * 600
    raw.events.add(event_id="e-small", event_name="open", device_os="iOS 17.2")
    sink, limit, metrics = FakeSink(), 4000, Metrics()

    handler = _handler(sink, metrics, max_message_bytes=limit)
    await handler.handle([FakeDelivery(raw.SerializeToString())])
    first_ids = [h[subjects.MSG_ID_HEADER] for _, _, h in sink.published]
    await handler.handle([FakeDelivery(raw.SerializeToString(), deliveries=2)])

    assert sink.dead == []
    assert all(len(data) <= limit for _, data, _ in sink.published)
    events = [
        e
        for _, data, _ in sink.published[: len(first_ids)]
        for e in event_pb2.EnrichedBatch.FromString(data).events
    ]
    assert [e.event.event_id for e in events] == ["e-big", "e-small"]
    text = events[0].event_message
    assert text.startswith("open text 語")
    assert len(text) < len("open text ") + 1200
    assert set(text.split()[2:]) == {"語"}  # whole words
    assert events[0].event.metadata["text"] == "語 " * 600  # the event itself is whole
    # A redelivery cuts alike: the same part names, dropped as duplicates.
    assert [h[subjects.MSG_ID_HEADER] for _, _, h in sink.published[len(first_ids) :]] == first_ids
    # One line, not one per delivery (the second within the throttle's 30 s), and the first
    # line counts none held back.
    assert caplog.text.count("its event_message is cut to") == 1
    assert "since the last line" not in caplog.text
    assert _sample(metrics, TRUNCATED) == 1  # counted too, once


TRUNCATED = "enricher_event_message_truncated_total"
_CUT_AT = EnrichOptions(event_message_max_chars=100)


def _texts(*lengths: int) -> bytes:
    """A raw message of one event per length, whose event_message ("open k " and a value)
    has that many characters before it is cut."""
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    for i, length in enumerate(lengths):
        event = raw.events.add(event_id=f"e{i:03d}", event_name="open")
        event.metadata["k"] = "v" * (length - len("open k "))
    return raw.SerializeToString()


async def test_each_event_whose_event_message_is_cut_is_counted_once() -> None:
    sink, metrics = FakeSink(), Metrics()
    handler = _handler(sink, metrics, options=_CUT_AT)

    await handler.handle([FakeDelivery(_texts(20, 101, 99, 100, 5000))])

    texts = [
        e.event_message for e in event_pb2.EnrichedBatch.FromString(sink.published[0][1]).events
    ]
    assert [len(text) for text in texts] == [20, len("open k"), 99, 100, len("open k")]
    assert _sample(metrics, TRUNCATED) == 2  # 101 and 5000; 100 is whole
    assert _sample(metrics, "enricher_events_total") == 5

    await handler.handle([FakeDelivery(_texts(20, 101, 99, 100, 5000), deliveries=2)])
    assert _sample(metrics, "enricher_duplicates_total") == 1
    assert _sample(metrics, TRUNCATED) == 2  # a redelivery's events are not counted again


async def test_a_message_none_of_whose_event_messages_is_cut_leaves_the_count_alone() -> None:
    sink, metrics = FakeSink(), Metrics()
    handler = _handler(sink, metrics, options=_CUT_AT)
    assert metrics.registry.get_sample_value(TRUNCATED) == 0  # there from the start

    await handler.handle([FakeDelivery(_texts(101), stream_seq=1)])
    await handler.handle([FakeDelivery(_texts(7, 99, 100, 100), stream_seq=2)])

    assert _sample(metrics, "enricher_events_total") == 5
    assert _sample(metrics, TRUNCATED) == 1  # the first message's


async def test_the_cut_events_of_a_split_message_are_counted_once_as_their_part_is_taken() -> None:
    # The first process publishes one part and stops; the next publishes that part again
    # (a duplicate) and the rest. Each cut event counts as its own part is taken.
    lengths = (150, 20, 150, 150, 20, 20, 150, 20)
    limit = 700  # parts of 2 to 4 events
    sink, metrics = SinkFailingAfter(), Metrics()
    sink.good = 1
    stopping = _handler(sink, metrics, options=_CUT_AT, max_message_bytes=limit, touch_every_s=0.01)
    first = FakeDelivery(_texts(*lengths))
    handling = asyncio.create_task(stopping.handle([first]))
    await asyncio.wait_for(first.touches(1), 1.0)
    stopping.stop()
    await handling
    taken = event_pb2.EnrichedBatch.FromString(sink.published[0][1]).events
    cut = sum(len(e.event.metadata["k"]) > 100 - len("open k ") for e in taken)
    assert 0 < cut < 4
    assert _sample(metrics, TRUNCATED) == cut

    sink.good = 1_000
    again = FakeDelivery(_texts(*lengths), deliveries=2)
    await _handler(sink, metrics, options=_CUT_AT, max_message_bytes=limit).handle([again])

    assert again.log == ["ack"]
    assert len(sink.by_id) > 2
    assert _sample(metrics, "enricher_events_total") == len(lengths)
    assert _sample(metrics, TRUNCATED) == 4


async def test_an_event_too_large_for_any_message_goes_to_the_dlq() -> None:
    sink = FakeSink()
    delivery = FakeDelivery(_big(3))

    await _handler(sink, max_message_bytes=300).handle([delivery])

    assert delivery.log == ["term"]
    assert sink.dead == [(delivery.data, "too_large")]
    assert sink.published == []


async def test_publishes_nats_does_not_take_log_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 50 messages held through 150 failed attempts during an outage of the enriched stream.
    sink = FakeSink(fail_publish=150)
    handler = _handler(sink, retry_log=logs.Throttle(30.0, clock=lambda: 100.0))

    await handler.handle([FakeDelivery(_good(), stream_seq=n) for n in range(50)])

    lines = [r.getMessage() for r in caplog.records if "not enriched" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].endswith("BrokerError('no ack')")  # the first: none held back to count
    assert len(sink.published) == 50


async def test_retries_of_other_failures_log_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    sink = FakeSink(publish_error=RuntimeError("bug"))
    handler = _handler(sink, retry=PATIENT, retry_log=logs.Throttle(30.0, clock=lambda: now[0]))

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not enriched" in r.getMessage()]

    await handler.handle([FakeDelivery(_good(), stream_seq=n) for n in range(50)])
    assert len(lines()) == 1
    now[0] += 29.0
    await handler.handle([FakeDelivery(_good(), stream_seq=n, deliveries=2) for n in range(50)])
    assert len(lines()) == 1  # 99 retries, one line
    now[0] += 1.0
    await handler.handle([FakeDelivery(_good(), stream_seq=1, deliveries=3)])
    assert len(lines()) == 2
    assert lines()[1].endswith("(99 more retried since the last line)")
    assert caplog.records[-1].held_back == 99


async def test_a_retried_message_logs_why_and_its_dead_letter_keeps_the_last_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FakeSink(publish_error=RuntimeError("no ack"))
    handler = _handler(sink)
    for deliveries in (1, 2):
        await handler.handle([FakeDelivery(_good(), deliveries=deliveries)])
    assert "raw message not enriched; retrying" in caplog.text
    assert "no ack" in caplog.text

    reasons: list[str] = []

    async def keep(delivery: Delivery, *, reason: str, detail: str) -> None:
        reasons.append(f"{reason}: {detail}")

    sink.dead_letter = keep  # type: ignore[method-assign]
    last = FakeDelivery(_good(), deliveries=3)
    await handler.handle([last])

    assert last.log == ["term"]
    assert len(reasons) == 1
    assert reasons[0].startswith("max_deliveries: delivered 3 times, the limit is 3")
    assert "last error: RuntimeError('no ack')" in reasons[0]
