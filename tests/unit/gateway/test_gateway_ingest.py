"""The ingest core with a fake broker: batch ids, splitting, duplicates, admission."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, ingest_service_pb2

from gateway._ingest import IngestCore, Origin, batch_id, load_json
from gateway._metrics import Metrics
from gateway._validate import Limits
from gateway.errors import InvalidRequest, Overloaded, Unavailable, Unconfirmed
from tests.unit.gateway.conftest import FakeBroker
from tests.unit.polling import until

LIMITS = Limits(
    max_events=1000,
    max_field_chars=256,
    max_event_id_chars=128,
    max_metadata_entries=64,
    max_metadata_key_chars=128,
    max_metadata_value_chars=2048,
)


def origin(**overrides: object) -> Origin:
    values: dict[str, object] = {
        "app_id": "app-1",
        "client_ip": "192.0.2.1",
        "user_agent": "ua",
        "request_id": "r-1",
        "protocol": event_pb2.INGEST_PROTOCOL_HTTP_JSON,
        "received_at": time.time(),
    }
    values.update(overrides)
    return Origin(**values)  # type: ignore[arg-type]


def body(count: int, *, blob: str = "") -> bytes:
    events = [
        {
            "event_id": f"e-{n}",
            "session_id": "s",
            "user_id": "u",
            "event_name": "tap",
            "client_timestamp": "2024-01-01T00:00:00Z",
            "metadata": {"blob": blob} if blob else {},
        }
        for n in range(count)
    ]
    return orjson.dumps(events)


def core(
    broker: FakeBroker, *, max_in_flight: int = 10, max_in_flight_bytes: int = 0
) -> IngestCore:
    return IngestCore(
        publisher=broker,
        limits=LIMITS,
        metrics=Metrics(),
        max_in_flight=max_in_flight,
        max_in_flight_bytes=max_in_flight_bytes,
    )


def test_batch_ids_are_per_app_and_per_key_or_events() -> None:
    ids = [event_pb2.Event(event_id="e-1"), event_pb2.Event(event_id="e-2")]
    other = [event_pb2.Event(event_id="e-1", user_id="u"), ids[1]]
    a = batch_id("app-1", idempotency_key="", events=ids)
    assert a == batch_id("app-1", idempotency_key="", events=list(ids))
    assert a != batch_id("app-2", idempotency_key="", events=ids)
    assert a != batch_id("app-1", idempotency_key="", events=other)
    keyed = batch_id("app-1", idempotency_key="k", events=ids)
    assert keyed == batch_id("app-1", idempotency_key="k", events=other)
    assert keyed != batch_id("app-2", idempotency_key="k", events=ids)
    assert keyed != batch_id("app-1", idempotency_key="k", events=ids[:1])
    # Order counts (the README says so): the same events reordered are another batch.
    assert keyed != batch_id("app-1", idempotency_key="k", events=ids[::-1])
    assert a != batch_id("app-1", idempotency_key="", events=ids[::-1])


async def test_batch_past_max_payload_is_split_with_derived_ids() -> None:
    broker = FakeBroker(max_payload=4096 + 20_000)
    receipt = await core(broker).ingest_json(body(60, blob="v" * 1000), origin())

    assert receipt.accepted == 60
    # Each part is named by its events: `<batch id>:<first>-<end>`, the ranges end to end.
    ranges = sorted(
        tuple(int(n) for n in msg_id.removeprefix(f"{receipt.batch_id}:").split("-"))
        for msg_id in broker.stored
    )
    assert len(ranges) >= 3
    assert ranges[0][0] == 0
    assert ranges[-1][1] == 60
    assert all(end == first for (_, end), (first, _) in itertools.pairwise(ranges))
    batches = broker.batches()
    assert [e.event_id for b in batches for e in b.events] == [f"e-{n}" for n in range(60)]
    assert all(b.context.batch_id == receipt.batch_id for b in batches)


# The part published first or last is missing: whichever it is, the retry is not a duplicate.
@pytest.mark.parametrize("lost", [0, -1])
async def test_a_retry_after_a_partial_failure_stores_only_the_missing_parts(lost: int) -> None:
    broker = FakeBroker(max_payload=4096 + 20_000)
    ingest = core(broker)
    data = body(60, blob="v" * 1000)
    first = await ingest.ingest_json(data, origin())
    stored = dict(broker.stored)
    missing = list(broker.stored)[lost]  # in the order published
    del broker.stored[missing]

    again = await ingest.ingest_json(data, origin())

    assert again.duplicate is False  # one part was new
    assert again.batch_id == first.batch_id
    assert broker.stored.keys() == stored.keys()
    restored = event_pb2.RawBatch.FromString(broker.stored[missing][1])
    assert restored.events == event_pb2.RawBatch.FromString(stored[missing][1]).events


class BrokerFailingAfter(FakeBroker):
    """Stores the first `good` publishes, then fails every one after them."""

    def __init__(self, *, max_payload: int, good: int, error: Unavailable | None = None) -> None:
        super().__init__(max_payload=max_payload)
        self.good = good
        self.error = error or Unavailable("no ack")

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        if self.calls >= self.good:
            self.calls += 1
            raise self.error
        return await super().publish(subject, payload, msg_id=msg_id)


def stored_ids(broker: FakeBroker) -> list[str]:
    return sorted(e.event_id for b in broker.batches() for e in b.events)


async def test_a_split_batch_stored_in_part_is_answered_so_and_counted_unconfirmed() -> None:
    # Its first part is stored, the second refused: the 503 must not say the batch is not
    # stored, and its events count as unconfirmed, as those of a batch whose ack came late.
    broker = BrokerFailingAfter(max_payload=4096 + 20_000, good=1)
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)
    with pytest.raises(Unconfirmed) as caught:
        await ingest.ingest_json(body(60, blob="v" * 1000), origin(idempotency_key="k"))

    [stored] = broker.batches()
    assert 0 < len(stored.events) < 60
    assert str(caught.value) == (
        f"the broker stored {len(stored.events)} of the batch's 60 events but not the rest:"
        " retry it with the same Idempotency-Key (or the same events), and the rest is stored"
        f" (the {len(stored.events)} are not stored again)"
    )
    labels = {"outcome": "unconfirmed", "reason": ""}
    assert metrics.registry.get_sample_value("gateway_events_total", labels) == 60

    # Its first part refused, nothing of it is stored: a plain 503, and nothing counted.
    ingest = IngestCore(
        publisher=BrokerFailingAfter(max_payload=4096 + 20_000, good=0),
        limits=LIMITS,
        metrics=metrics,
        max_in_flight=10,
    )
    with pytest.raises(Unavailable) as caught:
        await ingest.ingest_json(body(60, blob="v" * 1000), origin(idempotency_key="k"))
    assert not isinstance(caught.value, Unconfirmed)
    assert metrics.registry.get_sample_value("gateway_events_total", labels) == 60


async def test_a_split_batch_whose_later_part_is_not_confirmed_says_it_may_be_stored() -> None:
    # Its first part stored, the second not acked in time: the publisher's own message (it
    # may be stored, the retry tells) stands, and every event counts as unconfirmed.
    late = Unconfirmed("the broker did not confirm the batch within 5 s; it may be stored")
    broker = BrokerFailingAfter(max_payload=4096 + 20_000, good=1, error=late)
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)

    with pytest.raises(Unconfirmed) as caught:
        await ingest.ingest_json(body(60, blob="v" * 1000), origin(idempotency_key="k"))

    assert caught.value is late
    assert len(broker.stored) == 1
    labels = {"outcome": "unconfirmed", "reason": ""}
    assert metrics.registry.get_sample_value("gateway_events_total", labels) == 60
    assert (
        metrics.registry.get_sample_value("gateway_events_total", {**labels, "outcome": "accepted"})
        == 0
    )


async def test_a_retry_from_another_address_splits_alike_and_stores_every_event() -> None:
    # The context (address, user agent, receipt time) differs between attempts, here by
    # more than two events' worth; where the batch is cut must not.
    broker = BrokerFailingAfter(max_payload=4096 + 24_024, good=1)
    ingest = core(broker)
    data = body(60, blob="v" * 1000)
    first_origin = origin(
        client_ip="2001:db8:85a3:8d3:1319:8a2e:370:7348",
        user_agent="\N{GRINNING FACE}" * 512,  # the longest the gateway keeps: 2 KiB
        received_at=1_800_000_000.999999,
    )
    with pytest.raises(Unavailable):
        await ingest.ingest_json(data, first_origin)
    assert len(broker.stored) == 1  # the first part made it

    broker.good = 1_000
    again = await ingest.ingest_json(
        data, origin(client_ip="192.0.2.1", user_agent="", received_at=1_800_000_100.0)
    )

    assert again.accepted == 60
    assert stored_ids(broker) == sorted(f"e-{n}" for n in range(60))
    assert sum(len(b.events) for b in broker.batches()) == 60  # split alike: nothing twice


async def test_a_retry_split_otherwise_stores_events_again_rather_than_lose_them() -> None:
    # The broker's largest message changed between attempts (a new server): other parts.
    broker = BrokerFailingAfter(max_payload=4096 + 30_000, good=1)
    data = body(60, blob="v" * 1000)
    with pytest.raises(Unavailable):
        await core(broker).ingest_json(data, origin())
    first_part = set(broker.stored)

    broker.good, broker.max_payload = 1_000, 4096 + 20_000
    again = await core(broker).ingest_json(data, origin())

    assert again.accepted == 60
    assert set(broker.stored) - first_part  # parts of other names, stored anew
    assert set(stored_ids(broker)) == {f"e-{n}" for n in range(60)}
    # The first part's events went again in the new parts: stored twice, none lost (the
    # indexer keeps one document of each).
    assert len(stored_ids(broker)) > 60


async def test_a_full_retry_is_a_duplicate_and_counted_once() -> None:
    broker = FakeBroker()
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)
    first = await ingest.ingest_json(body(3), origin(idempotency_key="key-1"))
    # The same events, encoded otherwise: a key survives re-encoding.
    again = orjson.dumps(orjson.loads(body(3)), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    second = await ingest.ingest_json(again, origin(idempotency_key="key-1"))

    assert (first.duplicate, second.duplicate) == (False, True)
    assert (first.accepted, second.accepted) == (3, 3)
    assert len(broker.stored) == 1
    assert (
        metrics.registry.get_sample_value(
            "gateway_events_total", {"outcome": "accepted", "reason": ""}
        )
        == 3
    )
    assert metrics.registry.get_sample_value("gateway_duplicate_batches_total") == 1


async def test_a_key_reused_for_other_events_stores_them() -> None:
    # A client bug, but the second batch's events must not be dropped as a "retry".
    broker = FakeBroker()
    ingest = core(broker)
    first = await ingest.ingest_json(body(3), origin(idempotency_key="key-1"))
    other = orjson.dumps([{**e, "event_id": "x-" + e["event_id"]} for e in orjson.loads(body(2))])
    second = await ingest.ingest_json(other, origin(idempotency_key="key-1"))

    assert (first.duplicate, second.duplicate) == (False, False)
    assert first.batch_id != second.batch_id
    stored = sorted(e.event_id for b in broker.batches() for e in b.events)
    assert stored == ["e-0", "e-1", "e-2", "x-e-0", "x-e-1"]


async def test_nothing_is_published_when_every_event_is_invalid() -> None:
    broker = FakeBroker()
    receipt = await core(broker).ingest_json(b'[{"event_id": "x"}, 3]', origin())

    assert receipt.accepted == 0
    assert len(receipt.rejected) == 2
    assert broker.calls == 0
    assert receipt.batch_id == ""  # none stored: not one id every such batch would share


async def test_broker_failure_propagates_as_unavailable() -> None:
    broker = FakeBroker()
    broker.fail = Unavailable("down")

    with pytest.raises(Unavailable):
        await core(broker).ingest_json(body(1), origin())


class SlowBroker(FakeBroker):
    """Answers (or fails) each publish after `delay_s`, or never when it is None."""

    def __init__(self, delay_s: float | None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.waiting = 0

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        self.waiting += 1
        if self.delay_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(self.delay_s)
        self.waiting -= 1
        return await super().publish(subject, payload, msg_id=msg_id)


def publishes(metrics: Metrics, outcome: str) -> tuple[float | None, float | None]:
    """(count, sum of seconds) of gateway_publish_seconds{outcome}."""
    sample = metrics.registry.get_sample_value
    labels = {"outcome": outcome}
    return sample("gateway_publish_seconds_count", labels), sample(
        "gateway_publish_seconds_sum", labels
    )


async def test_publishes_are_timed_by_outcome_failed_ones_too() -> None:
    broker = SlowBroker(0.05)
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)
    assert publishes(metrics, "failed") == (0, 0)  # a failure rate reads 0, not absent

    await ingest.ingest_json(body(1), origin())
    broker.fail = Unavailable("timed out")
    with pytest.raises(Unavailable):
        await ingest.ingest_json(body(2), origin())

    assert publishes(metrics, "acked")[0] == 1
    failed, seconds = publishes(metrics, "failed")
    assert failed == 1
    assert seconds is not None
    assert seconds >= 0.04  # the time the failing publish took


async def test_a_cancelled_publish_is_not_timed() -> None:
    broker = SlowBroker(None)
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)
    task = asyncio.create_task(ingest.ingest_json(body(1), origin()))

    async def publishing() -> bool:
        return broker.waiting == 1

    await until(publishing, "published")
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert publishes(metrics, "acked")[0] == publishes(metrics, "failed")[0] == 0


def proto_request(**fields: object) -> ingest_service_pb2.IngestEventsRequest:
    event = event_pb2.Event(
        event_id="e-1",
        session_id="s",
        user_id="u",
        event_name="n",
        client_timestamp=Timestamp(seconds=1),
    )
    return ingest_service_pb2.IngestEventsRequest(events=[event], **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["x" * 257, "x" * 300, "a\nb", "tab\there", "\x7f"])
async def test_bad_idempotency_key_is_invalid(key: str) -> None:
    broker = FakeBroker()
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        await core(broker).ingest_json(body(1), origin(idempotency_key=key))
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        await core(broker).ingest_proto(proto_request(), origin(idempotency_key=key))
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        await core(broker).ingest_proto(proto_request(idempotency_key=key), origin())
    assert broker.calls == 0


@pytest.mark.parametrize("key", ["x" * 256, "Ünïcode key with spaces"])
async def test_an_idempotency_key_within_the_limits_names_the_batch(key: str) -> None:
    broker = FakeBroker()
    receipt = await core(broker).ingest_json(body(1), origin(idempotency_key=key))
    event = event_pb2.Event(event_id="e-0")
    assert receipt.batch_id == batch_id("app-1", idempotency_key=key, events=[event])

    proto = await core(broker).ingest_proto(proto_request(idempotency_key=key), origin())
    event = event_pb2.Event(event_id="e-1")
    assert proto.batch_id == batch_id("app-1", idempotency_key=key, events=[event])


async def test_the_request_field_idempotency_key_wins_over_the_header() -> None:
    # A gRPC/Connect request may carry a key in its idempotency_key field and in its
    # Idempotency-Key metadata; the field, part of the message the client built, names it.
    broker = FakeBroker()
    request = proto_request(idempotency_key="from-field")

    receipt = await core(broker).ingest_proto(request, origin(idempotency_key="from-header"))

    events = list(request.events)
    assert receipt.batch_id == batch_id("app-1", idempotency_key="from-field", events=events)
    assert receipt.batch_id != batch_id("app-1", idempotency_key="from-header", events=events)


async def test_proto_batches_get_content_ids_unless_keyed() -> None:
    broker = FakeBroker()
    ingest = core(broker)
    events = [
        event_pb2.Event(
            event_id="e-1",
            session_id="s",
            user_id="u",
            event_name="n",
            client_timestamp=Timestamp(seconds=1),
        )
    ]
    plain = ingest_service_pb2.IngestEventsRequest(events=events)
    keyed = ingest_service_pb2.IngestEventsRequest(events=events, idempotency_key="k")

    one = await ingest.ingest_proto(plain, origin())
    two = await ingest.ingest_proto(plain, origin())
    three = await ingest.ingest_proto(keyed, origin())

    assert (one.duplicate, two.duplicate, three.duplicate) == (False, True, False)
    assert three.batch_id == batch_id("app-1", idempotency_key="k", events=events)


@pytest.mark.parametrize(
    "sent_at",
    [Timestamp(seconds=10**15), Timestamp(seconds=1, nanos=-7), Timestamp(seconds=-(10**12))],
)
async def test_a_proto_sent_at_out_of_range_is_invalid(sent_at: Timestamp) -> None:
    broker = FakeBroker()
    request = proto_request(sent_at=sent_at)

    with pytest.raises(InvalidRequest, match="sent_at is out of range"):
        await core(broker).ingest_proto(request, origin())
    assert broker.calls == 0


async def test_bytes_in_flight_are_bounded_per_admitted_request() -> None:
    ingest = core(FakeBroker(), max_in_flight=10, max_in_flight_bytes=1000)

    with ingest.admit() as first:
        first.charge(2000)  # a request alone in flight always fits
        with ingest.admit() as second:
            with pytest.raises(Overloaded, match="bytes in flight"):
                second.charge(1)
            assert second.held == 0
    with ingest.admit() as first:
        first.charge(600)
        with ingest.admit() as second:
            second.charge(400)
            with pytest.raises(Overloaded):
                second.charge(1)
            with pytest.raises(Overloaded):
                first.charge(1)
        first.charge(400)  # the second's bytes went with it
    with ingest.admit() as again:
        again.charge(1000)
        assert again.held == 1000


def test_admission_is_bounded_and_closes() -> None:
    ingest = core(FakeBroker(), max_in_flight=2)
    with ingest.admit(), ingest.admit():
        assert ingest.in_flight == 2
        with pytest.raises(Overloaded), ingest.admit():
            pass
    assert ingest.in_flight == 0
    ingest.close()
    with pytest.raises(Unavailable), ingest.admit():
        pass


async def test_half_a_surrogate_pair_becomes_a_replacement_character_not_a_400() -> None:
    # Code that cuts a string inside an emoji sends half of its UTF-16 pair.
    broker = FakeBroker()
    data = (
        b'[{"event_id":"e-1","session_id":"s","user_id":"u","event_name":"tap",'
        b'"client_timestamp":"2024-01-01T00:00:00Z","metadata":{"title":"ok \\ud83d",'
        b'"whole":"\\ud83d\\ude00"}}]'
    )
    receipt = await core(broker).ingest_json(data, origin())

    assert receipt.accepted == 1
    (stored,) = broker.batches()[0].events
    assert stored.metadata["title"] == "ok \N{REPLACEMENT CHARACTER}"
    assert stored.metadata["whole"] == "\N{GRINNING FACE}"


async def test_the_slow_path_reads_numbers_as_orjson_does() -> None:
    # Integers past 64 bits are floats, as on the fast path (the README says so).
    big = b'{"big": 18446744073709551617, "max": 18446744073709551615, "min": -9223372036854775808}'
    slow = load_json(b"\xef\xbb\xbf" + big)
    assert slow == orjson.loads(big)
    assert [type(v) for v in slow.values()] == [float, int, int]


async def test_a_byte_order_mark_before_the_json_is_skipped() -> None:
    broker = FakeBroker()
    receipt = await core(broker).ingest_json(b"\xef\xbb\xbf" + body(2), origin())
    assert receipt.accepted == 2


@pytest.mark.parametrize(
    "data",
    [
        b'[{"event_id": NaN}]',
        b"[1,",
        b"\xff[]",
        b"[" * 50_000,  # nested past the parsers' depth, within the values a batch holds
        b'["\xed\xa0\xbd"]',
        # Past the float range: orjson refuses them, and so must the slow path (here taken
        # for the byte order mark and the lone surrogate).
        b'\xef\xbb\xbf[{"event_id": "e-1", "metadata": {"n": 1e400}}]',
        b'[{"event_id": "\\ud83d", "metadata": {"n": -1E+400}}]',
        b'\xef\xbb\xbf[{"event_id": "e-1", "metadata": {"n": 1' + b"0" * 400 + b"}}]",
    ],
)
async def test_what_is_not_json_in_utf8_is_still_a_400(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        await core(FakeBroker()).ingest_json(data, origin())


async def test_broken_json_is_refused_with_where_it_breaks() -> None:
    body = b'[\n  {"event_id": "e-1",\n   "user_id": "u" "x"}\n]'
    with pytest.raises(InvalidRequest, match=r"not valid JSON \(.*: line 3 column 19\)"):
        await core(FakeBroker()).ingest_json(body, origin())


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'[{"event_id": NaN}]', "(NaN is not JSON)"),
        (b'[{"event_id": -Infinity}]', "(-Infinity is not JSON)"),
        (b'[{"metadata": {"n": 1e400}}]', "(1e400 is past the float range)"),
        (b'[{"event_id": "e\xff"}]', "(not UTF-8: byte 16 is 0xff)"),
        (b'{"bad json', "(Unterminated string starting at: line 1 column 2)"),
        (b"[" * 50_000, "(nested too deeply)"),
    ],
)
async def test_what_is_not_json_is_refused_saying_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await core(FakeBroker()).ingest_json(data, origin())
    assert str(refused.value) == f"the body is not valid JSON {says}"


BIG_METADATA = {f"k{n}": "v" * 2000 for n in range(12)}  # within LIMITS, 24 KB


async def test_an_event_larger_than_any_message_is_rejected_and_the_rest_stored() -> None:
    # One message holds events of at most 24 KiB - 8200 bytes here; splitting cannot help
    # e-2, and it must not cost its batch the other events.
    broker = FakeBroker(max_payload=24 * 1024)
    events = orjson.loads(body(4))
    events[1] = "not an event"
    events[2]["metadata"] = BIG_METADATA
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)

    receipt = await ingest.ingest_json(orjson.dumps(events), origin())

    assert receipt.accepted == 2
    assert [(r.index, r.event_id, r.reason) for r in receipt.rejected] == [
        (1, "", event_pb2.REJECTION_REASON_NOT_AN_OBJECT),
        (2, "e-2", event_pb2.REJECTION_REASON_EVENT_TOO_LARGE),
    ]
    assert "less metadata" in receipt.rejected[1].detail
    assert stored_ids(broker) == ["e-0", "e-3"]
    reason = {"outcome": "rejected", "reason": "REJECTION_REASON_EVENT_TOO_LARGE"}
    assert metrics.registry.get_sample_value("gateway_events_total", reason) == 1

    proto = ingest_service_pb2.IngestEventsRequest()
    for item in orjson.loads(body(3)):
        event = proto.events.add(
            event_id=item["event_id"],
            session_id="s",
            user_id="u",
            event_name="tap",
            client_timestamp=Timestamp(seconds=1),
        )
        if item["event_id"] == "e-0":
            event.metadata.update(BIG_METADATA)
    receipt = await ingest.ingest_proto(proto, origin())

    assert receipt.accepted == 2
    assert [(r.index, r.reason) for r in receipt.rejected] == [
        (0, event_pb2.REJECTION_REASON_EVENT_TOO_LARGE)
    ]


async def test_rejections_are_counted_once_when_the_batch_is_answered_for_good() -> None:
    broker = FakeBroker()
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)
    data = orjson.dumps([*orjson.loads(body(2)), {"event_id": "bad"}])

    def counted() -> tuple[float | None, float | None]:
        sample = metrics.registry.get_sample_value
        accepted = sample("gateway_events_total", {"outcome": "accepted", "reason": ""})
        reason = "REJECTION_REASON_MISSING_FIELD"
        return accepted, sample("gateway_events_total", {"outcome": "rejected", "reason": reason})

    broker.fail = Unavailable("no ack")
    with pytest.raises(Unavailable):
        await ingest.ingest_json(data, origin(idempotency_key="k"))
    assert counted() == (0, 0)  # answered 503: nothing judged for good

    broker.fail = None
    await ingest.ingest_json(data, origin(idempotency_key="k"))
    assert counted() == (2, 1)

    again = await ingest.ingest_json(data, origin(idempotency_key="k"))
    assert again.duplicate
    assert counted() == (2, 1)  # a retry of a stored batch counts nothing again

    await ingest.ingest_json(b'[{"event_id": "x"}]', origin())
    assert counted() == (2, 2)  # nothing to publish: final at once


async def test_events_of_a_batch_that_may_be_stored_are_counted_unconfirmed() -> None:
    # Unlike a batch known not to be stored, one that may be (no ack in time) is counted: its
    # retry answers duplicate and counts nothing, while the enricher counts its events.
    broker = FakeBroker()
    metrics = Metrics()
    ingest = IngestCore(publisher=broker, limits=LIMITS, metrics=metrics, max_in_flight=10)

    def unconfirmed() -> float | None:
        labels = {"outcome": "unconfirmed", "reason": ""}
        return metrics.registry.get_sample_value("gateway_events_total", labels)

    assert unconfirmed() == 0  # exported from the start
    broker.fail = Unavailable("the broker did not store the batch: APIError")
    with pytest.raises(Unavailable):
        await ingest.ingest_json(body(2), origin(idempotency_key="k"))
    assert unconfirmed() == 0
    broker.fail = Unconfirmed("the broker did not confirm the batch within 5 s")
    with pytest.raises(Unconfirmed):
        await ingest.ingest_json(body(2), origin(idempotency_key="k"))
    assert unconfirmed() == 2


async def test_events_of_a_request_cut_off_while_publishing_are_counted_unconfirmed() -> None:
    # A gRPC deadline or a stop's grace run out cancels the request while JetStream may be
    # storing its batch: as unknown as an ack that did not come.
    publishing = asyncio.Event()

    class Hanging(FakeBroker):
        async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
            publishing.set()
            await asyncio.Event().wait()
            return False

    metrics = Metrics()
    ingest = IngestCore(publisher=Hanging(), limits=LIMITS, metrics=metrics, max_in_flight=10)
    request = asyncio.create_task(ingest.ingest_json(body(3), origin(idempotency_key="k")))
    await asyncio.wait_for(publishing.wait(), 5)

    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request

    labels = {"outcome": "unconfirmed", "reason": ""}
    assert metrics.registry.get_sample_value("gateway_events_total", labels) == 3


async def test_unknown_protobuf_fields_are_not_stored() -> None:
    broker = FakeBroker()
    junk = b"smuggled" * 1000
    # Field 99, length-delimited: unknown to Event, to its Timestamp and to the request.
    unknown = bytes([0x9A, 0x06]) + _varint(len(junk)) + junk
    event = event_pb2.Event(
        event_id="e-1", session_id="s", user_id="u", event_name="tap"
    ).SerializeToString()
    stamp = Timestamp(seconds=1).SerializeToString() + unknown
    event += b"\x2a" + _varint(len(stamp)) + stamp + unknown  # client_timestamp = 5
    request = ingest_service_pb2.IngestEventsRequest.FromString(
        b"\x0a" + _varint(len(event)) + event + unknown
    )
    assert junk in request.SerializeToString()

    receipt = await core(broker).ingest_proto(request, origin(idempotency_key="k"))

    assert receipt.accepted == 1
    [(_, payload)] = broker.stored.values()
    assert b"smuggled" not in payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
