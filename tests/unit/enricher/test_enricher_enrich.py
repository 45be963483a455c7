"""enrich_batch: every field the enricher adds, over generated messages."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry.v1 import event_pb2

from enricher import EnrichOptions, enrich_batch
from enricher._clock import correct_clock
from enricher._device import MAX_DEVICE_OS_CHARS, _parse, parse_device_os
from enricher._enrich import (
    _CACHE_SIZE,
    _os_fields,
    _seconds_field,
    enrich_batch_bytes,
    enriched_at_slack,
    skew_ms,
    split_enriched,
    timestamp_ns,
    timestamp_of,
)
from enricher._geo import OfflineGeo, geo_of
from enricher._message import event_message
from enricher._wire import varint as _varint

S = 1_000_000_000
RECEIVED_S = 1_700_000_000
NOW_NS = (RECEIVED_S + 2) * S


def _raw(*, client_ip: str = "81.2.69.142", sent_offset_s: int | None = 30) -> event_pb2.RawBatch:
    raw = event_pb2.RawBatch()
    ctx = raw.context
    ctx.received_at.seconds = RECEIVED_S
    if sent_offset_s is not None:
        ctx.sent_at.seconds = RECEIVED_S + sent_offset_s
    ctx.client_ip = client_ip
    ctx.app_id = "shop"
    ctx.request_id = "req-1"
    ctx.batch_id = "batch-1"
    event = raw.events.add(
        event_id="e1",
        session_id="s1",
        user_id="u1",
        event_name="item_purchased",
        app_version="1.2.3",
        device_os="iOS 17.2",
    )
    event.client_timestamp.seconds = RECEIVED_S + 20
    event.client_timestamp.nanos = 5
    event.metadata["sku"] = "A-1"
    raw.events.add(event_id="e2", event_name="app_open", device_os="Android 14")
    return raw


def _enrich(raw: event_pb2.RawBatch, fallback_ns: int = 0) -> event_pb2.EnrichedBatch:
    return enrich_batch(
        raw,
        app_id="shop",
        fallback_received_ns=fallback_ns,
        now_ns=NOW_NS,
        geo=OfflineGeo(),
        options=EnrichOptions(),
    )


def test_every_added_field() -> None:
    raw = _raw()
    out = _enrich(raw)
    assert (out.batch_id, out.app_id) == ("batch-1", "shop")
    first = out.events[0]
    assert first.event == raw.events[0]
    assert first.received_at.seconds == RECEIVED_S
    assert timestamp_ns(first.enriched_at) == NOW_NS
    # Device 30 s ahead: the event at device time +20 s happened 10 s before receipt.
    assert first.corrected_timestamp.seconds == RECEIVED_S - 10
    assert first.corrected_timestamp.nanos == 5
    assert first.clock_skew_ms == 30_000
    assert first.clock_status == event_pb2.CLOCK_STATUS_CORRECTED
    assert first.geo.country_code == "GB"
    assert (first.os_name, first.os_version) == ("iOS", "17.2")
    assert first.event_message == "item_purchased sku A-1"
    assert (first.app_id, first.request_id) == ("shop", "req-1")


def test_unset_client_time_is_absurd_and_uses_receipt() -> None:
    second = _enrich(_raw()).events[1]
    assert second.clock_status == event_pb2.CLOCK_STATUS_ABSURD
    assert timestamp_ns(second.corrected_timestamp) == RECEIVED_S * S
    assert (second.os_name, second.os_version) == ("Android", "14")


def test_without_sent_at_client_time_is_kept() -> None:
    first = _enrich(_raw(sent_offset_s=None)).events[0]
    assert first.clock_status == event_pb2.CLOCK_STATUS_UNCORRECTED
    assert first.clock_skew_ms == 0
    assert first.corrected_timestamp == first.event.client_timestamp


def test_private_ip_gets_no_geo() -> None:
    out = _enrich(_raw(client_ip="127.0.0.1"))
    assert not out.events[0].HasField("geo")


def test_original_payload_uses_the_fallback_receipt_time() -> None:
    legacy = event_pb2.EventBatch()
    event = legacy.events.add(event_id="old", device_os="iOS 16.1", event_name="open")
    event.client_timestamp.seconds = RECEIVED_S - 60
    raw = event_pb2.RawBatch.FromString(legacy.SerializeToString())
    stored_ns = RECEIVED_S * S + 123
    out = _enrich(raw, fallback_ns=stored_ns)
    only = out.events[0]
    assert timestamp_ns(only.received_at) == stored_ns
    assert only.clock_status == event_pb2.CLOCK_STATUS_UNCORRECTED
    assert only.corrected_timestamp.seconds == RECEIVED_S - 60
    assert not only.HasField("geo")
    assert (only.os_name, only.os_version) == ("iOS", "16.1")


def test_timestamps_round_trip_before_the_epoch() -> None:
    for ns in (0, 1, -1, -S - 1, 1_700_000_000 * S + 999_999_999):
        assert timestamp_ns(timestamp_of(ns)) == ns


def _reference(
    raw: event_pb2.RawBatch, *, app_id: str, now_ns: int, options: EnrichOptions
) -> event_pb2.EnrichedBatch:
    """The enriched batch built field by field with the message API, for comparison."""
    ctx = raw.context
    received = timestamp_ns(ctx.received_at)
    skew = timestamp_ns(ctx.sent_at) - received if ctx.HasField("sent_at") else None
    out = event_pb2.EnrichedBatch(batch_id=ctx.batch_id, app_id=app_id)
    for event in raw.events:
        fix = correct_clock(
            client_ns=timestamp_ns(event.client_timestamp),
            skew_ns=skew,
            received_ns=received,
            max_skew_ns=options.max_skew_ns,
        )
        name, version = parse_device_os(event.device_os)
        enriched = out.events.add(
            event=event,
            received_at=timestamp_of(received),
            enriched_at=timestamp_of(now_ns),
            corrected_timestamp=timestamp_of(fix.corrected_ns),
            clock_skew_ms=skew_ms(fix.skew_ns),
            clock_status=fix.status,
            os_name=name,
            os_version=version,
            event_message=event_message(
                event.event_name, event.metadata, max_chars=options.event_message_max_chars
            ),
            app_id=app_id,
            request_id=ctx.request_id,
        )
        location = geo_of(ctx.client_ip, OfflineGeo())
        if location is not None:
            enriched.geo.CopyFrom(location)
    return out


_text = st.text(max_size=12)
_seconds = st.integers(min_value=1, max_value=4_000_000_000)
_events = st.lists(
    st.fixed_dictionaries(
        {
            "event_id": _text,
            "event_name": _text,
            "device_os": st.sampled_from(["iOS 17.2", "Android 14", "", "watchOS 10", "x"]),
            "metadata": st.dictionaries(_text, _text, max_size=3),
            "client_s": st.one_of(st.just(0), _seconds),
            "client_nanos": st.integers(min_value=0, max_value=999_999_999),
        }
    ),
    min_size=1,
    max_size=5,
)


@given(
    events=_events,
    received_s=_seconds,
    sent_offset_ms=st.one_of(st.none(), st.integers(min_value=-(10**12), max_value=10**12)),
    client_ip=st.sampled_from(["81.2.69.142", "127.0.0.1", "8.8.8.8", "bogus", ""]),
    request_id=_text,
    batch_id=_text,
)
@settings(max_examples=200)
def test_enrichment_matches_the_field_by_field_reference(
    events: list[dict[str, Any]],
    received_s: int,
    sent_offset_ms: int | None,
    client_ip: str,
    request_id: str,
    batch_id: str,
) -> None:
    raw = event_pb2.RawBatch()
    ctx = raw.context
    ctx.received_at.seconds = received_s
    if sent_offset_ms is not None:
        sent = received_s * S + sent_offset_ms * 1_000_000
        ctx.sent_at.CopyFrom(timestamp_of(sent))
    ctx.client_ip, ctx.request_id, ctx.batch_id = client_ip, request_id, batch_id
    for spec in events:
        event = raw.events.add(
            event_id=spec["event_id"], event_name=spec["event_name"], device_os=spec["device_os"]
        )
        event.metadata.update(spec["metadata"])
        if spec["client_s"]:
            event.client_timestamp.seconds = spec["client_s"]
            event.client_timestamp.nanos = spec["client_nanos"]
    options = EnrichOptions()
    got = enrich_batch(
        raw, app_id="app", fallback_received_ns=0, now_ns=NOW_NS, geo=OfflineGeo(), options=options
    )
    assert got == _reference(raw, app_id="app", now_ns=NOW_NS, options=options)


def test_negative_skew_is_truncated_toward_zero() -> None:
    assert skew_ms(-1) == 0
    assert skew_ms(-1_500_000) == -1
    assert skew_ms(1_500_000) == 1


# The key of EnrichedBatch.events and of EnrichedEvent.event: field 1, length-delimited.
_FIELD_1_LEN = b"\x0a"


class _FixedGeo:
    """Answers every public address with one Geo (None: unknown)."""

    def __init__(self, geo: event_pb2.Geo | None) -> None:
        self._geo = geo

    def lookup(self, ip: str) -> event_pb2.Geo | None:
        return self._geo


def _assembled_reference(
    raw: event_pb2.RawBatch,
    *,
    app_id: str,
    fallback_received_ns: int,
    now_ns: int,
    geo: _FixedGeo,
    options: EnrichOptions,
) -> bytes:
    """The batch as serialised messages put together: the event, the common fields, its own.

    The layout the enricher publishes; each part is serialised by protobuf here.
    """
    ctx = raw.context
    received = (
        timestamp_ns(ctx.received_at) if ctx.HasField("received_at") else fallback_received_ns
    )
    skew = timestamp_ns(ctx.sent_at) - received if ctx.HasField("sent_at") else None
    common = event_pb2.EnrichedEvent(
        received_at=timestamp_of(received),
        enriched_at=timestamp_of(now_ns),
        geo=geo_of(ctx.client_ip, geo),
        app_id=app_id,
        request_id=ctx.request_id,
    ).SerializeToString()
    out = b""
    for event in raw.events:
        fix = correct_clock(
            client_ns=timestamp_ns(event.client_timestamp),
            skew_ns=skew,
            received_ns=received,
            max_skew_ns=options.max_skew_ns,
        )
        name, version = parse_device_os(event.device_os)
        own = event_pb2.EnrichedEvent(
            corrected_timestamp=timestamp_of(fix.corrected_ns),
            clock_skew_ms=skew_ms(fix.skew_ns),
            clock_status=fix.status,
            os_name=name,
            os_version=version,
            event_message=event_message(
                event.event_name, event.metadata, max_chars=options.event_message_max_chars
            ),
        ).SerializeToString()
        # Serialised as it is: a copy may order its metadata map differently.
        event_bytes = event.SerializeToString()
        wrapped = _FIELD_1_LEN + _varint(len(event_bytes)) + event_bytes
        out += (
            _FIELD_1_LEN + _varint(len(wrapped) + len(common) + len(own)) + wrapped + common + own
        )
    return out + event_pb2.EnrichedBatch(batch_id=ctx.batch_id, app_id=app_id).SerializeToString()


_any_text = st.text(max_size=20)
_ns = st.integers(min_value=-(10**18), max_value=4 * 10**18)


@given(
    events=st.lists(
        st.fixed_dictionaries(
            {
                "event": st.fixed_dictionaries(
                    {"event_id": _any_text, "event_name": _any_text, "device_os": _any_text}
                ),
                "metadata": st.dictionaries(_any_text, _any_text, max_size=4),
                "client_ns": st.one_of(st.just(0), _ns),
            }
        ),
        min_size=1,
        max_size=6,
    ),
    received_ns=st.one_of(st.none(), _ns),
    sent_ns=st.one_of(st.none(), _ns),
    fallback_ns=_ns,
    now_ns=_ns,
    max_skew_s=st.integers(min_value=0, max_value=3 * 365 * 24 * 3600),
    max_chars=st.integers(min_value=0, max_value=40),
    location=st.sampled_from(
        [None, event_pb2.Geo(), event_pb2.Geo(country_code="GB", city="Zürich")]
    ),
    ids=st.tuples(_any_text, _any_text, st.sampled_from(["a", "shop", "ä" * 3])),
)
@settings(max_examples=300)
def test_bytes_equal_the_serialised_parts_put_together(
    events: list[dict[str, Any]],
    received_ns: int | None,
    sent_ns: int | None,
    fallback_ns: int,
    now_ns: int,
    max_skew_s: int,
    max_chars: int,
    location: event_pb2.Geo | None,
    ids: tuple[str, str, str],
) -> None:
    raw = event_pb2.RawBatch()
    ctx = raw.context
    if received_ns is not None:
        ctx.received_at.CopyFrom(timestamp_of(received_ns))
    if sent_ns is not None:
        ctx.sent_at.CopyFrom(timestamp_of(sent_ns))
    ctx.client_ip = "81.2.69.142"
    ctx.request_id, ctx.batch_id, app_id = ids
    for spec in events:
        event = raw.events.add(**spec["event"])
        event.metadata.update(spec["metadata"])
        if spec["client_ns"]:
            event.client_timestamp.CopyFrom(timestamp_of(spec["client_ns"]))
    given_args: dict[str, Any] = {
        "app_id": app_id,
        "fallback_received_ns": fallback_ns,
        "now_ns": now_ns,
        "geo": _FixedGeo(location),
        "options": EnrichOptions(max_skew_ns=max_skew_s * S, event_message_max_chars=max_chars),
    }
    cut: set[int] = set()
    assert enrich_batch_bytes(raw, **given_args, cut=cut) == _assembled_reference(raw, **given_args)
    whole = [event_message(e.event_name, e.metadata, max_chars=10**9) for e in raw.events]
    assert cut == {index for index, text in enumerate(whole) if len(text) > max_chars}


def test_a_device_os_is_read_and_cached_only_up_to_the_gateways_limit() -> None:
    # Texts past the gateway's limit reach NATS only from elsewhere; kept whole as cache
    # keys, 4096 of them of a megabyte each would take gigabytes.
    _os_fields.cache_clear()
    _parse.cache_clear()
    head = "iOS 17.2 " + "x" * MAX_DEVICE_OS_CHARS
    raw = _raw()
    for n, event in enumerate(raw.events):
        event.device_os = head + f"-{n}" * 100_000
    assert len(raw.events) > 1

    batch = _enrich(raw)

    assert {(e.os_name, e.os_version) for e in batch.events} == {parse_device_os(head)}
    assert parse_device_os(head) == ("iOS", "17.2")
    assert _os_fields.cache_info().currsize == 1
    assert _parse.cache_info().currsize == 1


def test_caches_of_encoded_values_are_bounded() -> None:
    for cached in (_os_fields, _seconds_field):
        assert cached.cache_info().maxsize == _CACHE_SIZE
    for n in range(_CACHE_SIZE + 10):
        _seconds_field(n)
    assert _seconds_field.cache_info().currsize == _CACHE_SIZE


def _cuts(data: bytes, limit: int, *, events: int, now_ns: int) -> list[tuple[int, int]] | None:
    split = split_enriched(data, limit, events=events, slack=enriched_at_slack(now_ns))
    return None if split is None else [(first, end) for first, end, _ in split]


def test_an_event_cut_to_fit_a_message_is_added_to_those_cut() -> None:
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    raw.events.add(event_id="e0", event_name="open").metadata["k"] = "x" * 200  # cut: 100
    raw.events.add(event_id="e1", event_name="open")
    # 96 characters, not cut at 100, but mostly of 3 bytes each: about 550 bytes enriched.
    raw.events.add(event_id="e2", event_name="open").metadata["k"] = " ".join(["語" * 9] * 9)
    cut: set[int] = set()
    data = enrich_batch_bytes(
        raw,
        app_id="shop",
        fallback_received_ns=1_700_000_000 * S,
        now_ns=NOW_NS,
        geo=OfflineGeo(),
        options=EnrichOptions(event_message_max_chars=100),
        cut=cut,
    )
    assert cut == {0}

    split = split_enriched(data, 450, events=3, slack=enriched_at_slack(NOW_NS), cut=cut)

    assert split is not None
    texts = [
        e.event_message
        for *_, part in split
        for e in event_pb2.EnrichedBatch.FromString(part).events
    ]
    # Each cut at a word's end: a piece of "xxx…" or "語語…" would be a word of its own.
    assert texts[:2] == ["open k", "open"]
    assert texts[2].startswith("open k 語")
    assert len(texts[2]) < len("open k ") + 89
    assert set(texts[2].split()[2:]) == {"語" * 9}
    assert cut == {0, 2}


def test_every_delivery_splits_alike_whatever_enriched_at_takes() -> None:
    # A whole second (no nanoseconds field) against five bytes of nanoseconds: each event's
    # length prefix can differ too, when its size crosses 128 bytes.
    clocks = (1_700_000_002 * S, 1_700_000_001 * S + 999_999_999)
    checked = 0
    for pad in range(0, 120, 3):
        raw = event_pb2.RawBatch()
        raw.context.app_id = "shop"
        for n in range(20):
            raw.events.add(event_id=f"e{n:03d}", event_name="open").metadata["b"] = "x" * pad
        datas = [
            enrich_batch_bytes(
                raw,
                app_id="shop",
                fallback_received_ns=1_700_000_000 * S,
                now_ns=now,
                geo=OfflineGeo(),
                options=EnrichOptions(),
            )
            for now in clocks
        ]
        for limit in range(min(map(len, datas)) - 40, max(map(len, datas)) + 200, 2):
            first, second = (
                _cuts(data, limit, events=20, now_ns=now)
                for data, now in zip(datas, clocks, strict=True)
            )
            assert first == second, (pad, limit)
            checked += first is not None
    assert checked > 100  # the limits above cut some batches, not only fit them whole
