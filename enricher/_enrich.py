"""Enrichment: a RawBatch in, an EnrichedBatch out. Plain functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from telemetry.v1 import event_pb2

from enricher._clock import NANOS_PER_MS, NANOS_PER_S, correct_clock, measure_skew
from enricher._device import parse_device_os
from enricher._geo import GeoLookup, geo_of
from enricher._message import DEFAULT_MAX_CHARS, event_message

DEFAULT_MAX_SKEW_S = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class EnrichOptions:
    """How enrichment judges clocks and bounds texts."""

    max_skew_ns: int = DEFAULT_MAX_SKEW_S * NANOS_PER_S
    """max_skew_ns: a skew or a correction larger than this is absurd."""
    event_message_max_chars: int = DEFAULT_MAX_CHARS
    """event_message_max_chars bounds the length of event_message."""


def timestamp_ns(ts: timestamp_pb2.Timestamp) -> int:
    """A Timestamp as integer nanoseconds since the epoch."""
    return ts.seconds * NANOS_PER_S + ts.nanos


def timestamp_of(ns: int) -> timestamp_pb2.Timestamp:
    """Integer nanoseconds since the epoch as a Timestamp."""
    seconds, nanos = divmod(ns, NANOS_PER_S)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def received_ns(raw: event_pb2.RawBatch, *, fallback_ns: int) -> int:
    """When the gateway received the batch; `fallback_ns` for a batch without context.

    A payload of the original pipeline (an EventBatch) has no context: the caller
    passes the time the broker stored it.
    """
    context = raw.context
    if context.HasField("received_at"):
        return timestamp_ns(context.received_at)
    return fallback_ns


def _varint(value: int) -> bytes:
    """A non-negative int in protobuf's base-128 varint encoding."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # the usual length of an event: two bytes
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited_tag(
    message: type[event_pb2.EnrichedEvent | event_pb2.EnrichedBatch], name: str
) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[name].number
    return _varint((number << 3) | 2)


_EVENT_TAG = _length_delimited_tag(event_pb2.EnrichedEvent, "event")
_EVENTS_TAG = _length_delimited_tag(event_pb2.EnrichedBatch, "events")


def skew_ms(skew_ns: int) -> int:
    """Nanoseconds to whole milliseconds, truncated toward zero."""
    return skew_ns // NANOS_PER_MS if skew_ns >= 0 else -(-skew_ns // NANOS_PER_MS)


def enrich_batch_bytes(
    raw: event_pb2.RawBatch,
    *,
    app_id: str,
    fallback_received_ns: int,
    now_ns: int,
    geo: GeoLookup,
    options: EnrichOptions,
) -> bytes:
    """Enriches every event of `raw`, in order; returns the serialised EnrichedBatch.

    What is the same for the whole batch (times, geo, ids) is computed and
    serialised once; per event there remain the clock correction, the OS parse
    (cached) and the event_message. Each EnrichedEvent is assembled from three
    serialised parts, the event, the batch's common fields and the event's own
    fields, which protobuf decodes as one message because their fields are
    disjoint (concatenated encodings merge). That avoids building and copying
    one message tree per event, the bulk of the cost otherwise.
    """
    context = raw.context
    received = received_ns(raw, fallback_ns=fallback_received_ns)
    sent = timestamp_ns(context.sent_at) if context.HasField("sent_at") else None
    skew = measure_skew(sent_ns=sent, received_ns=received)
    common = event_pb2.EnrichedEvent(
        received_at=timestamp_of(received),
        enriched_at=timestamp_of(now_ns),
        geo=geo_of(context.client_ip, geo),
        app_id=app_id,
        request_id=context.request_id,
    ).SerializeToString()
    max_skew = options.max_skew_ns
    max_chars = options.event_message_max_chars
    enriched_event = event_pb2.EnrichedEvent
    timestamp = timestamp_pb2.Timestamp

    parts: list[bytes] = []
    for event in raw.events:
        client = event.client_timestamp
        fix = correct_clock(
            client_ns=client.seconds * NANOS_PER_S + client.nanos,
            skew_ns=skew,
            received_ns=received,
            max_skew_ns=max_skew,
        )
        os_name, os_version = parse_device_os(event.device_os)
        seconds, nanos = divmod(fix.corrected_ns, NANOS_PER_S)
        own = enriched_event(
            corrected_timestamp=timestamp(seconds=seconds, nanos=nanos),
            clock_skew_ms=skew_ms(fix.skew_ns),
            clock_status=fix.status,
            os_name=os_name,
            os_version=os_version,
            event_message=event_message(event.event_name, event.metadata, max_chars=max_chars),
        ).SerializeToString()
        event_bytes = event.SerializeToString()
        body = b"".join((_EVENT_TAG, _varint(len(event_bytes)), event_bytes, common, own))
        parts.append(_EVENTS_TAG)
        parts.append(_varint(len(body)))
        parts.append(body)
    parts.append(
        event_pb2.EnrichedBatch(batch_id=context.batch_id, app_id=app_id).SerializeToString()
    )
    return b"".join(parts)


def enrich_batch(
    raw: event_pb2.RawBatch,
    *,
    app_id: str,
    fallback_received_ns: int,
    now_ns: int,
    geo: GeoLookup,
    options: EnrichOptions,
) -> event_pb2.EnrichedBatch:
    """Enriches every event of `raw`, in order (see `enrich_batch_bytes`)."""
    return event_pb2.EnrichedBatch.FromString(
        enrich_batch_bytes(
            raw,
            app_id=app_id,
            fallback_received_ns=fallback_received_ns,
            now_ns=now_ns,
            geo=geo,
            options=options,
        )
    )
