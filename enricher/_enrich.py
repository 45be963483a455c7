"""Enrichment: a RawBatch in, an EnrichedBatch out. Plain functions, no I/O."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from telemetry.v1 import event_pb2

from enricher import _wire as wire
from enricher._clock import (
    ABSURD,
    NANOS_PER_MS,
    NANOS_PER_S,
    BatchClock,
    measure_skew,
)
from enricher._device import MAX_DEVICE_OS_CHARS, parse_device_os
from enricher._geo import GeoLookup, geo_of
from enricher._message import DEFAULT_MAX_CHARS, cut_at_word, whole_event_message
from enricher.errors import PoisonMessageError
from pipeline import logs

log = logging.getLogger(__name__)
# Events cut to fit: a line at most this often (a NATS max_payload below the gateway's limits
# would otherwise write one per large event, and again per redelivery).
_CUT_LOG = logs.Throttle(30.0)

DEFAULT_MAX_SKEW_S = 365 * 24 * 3600
# The dead-letter reason of an event that no message can hold, even without its event_message.
REASON_TOO_LARGE = "too_large"


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


_EVENTS = wire.tag(event_pb2.EnrichedBatch, "events", wire.WIRE_LEN)
_EVENT = wire.tag(event_pb2.EnrichedEvent, "event", wire.WIRE_LEN)
_BATCH_ID = wire.tag(event_pb2.EnrichedBatch, "batch_id", wire.WIRE_LEN)
_BATCH_APP_ID = wire.tag(event_pb2.EnrichedBatch, "app_id", wire.WIRE_LEN)
_RECEIVED_AT = wire.tag(event_pb2.EnrichedEvent, "received_at", wire.WIRE_LEN)
_ENRICHED_AT = wire.tag(event_pb2.EnrichedEvent, "enriched_at", wire.WIRE_LEN)
_GEO = wire.tag(event_pb2.EnrichedEvent, "geo", wire.WIRE_LEN)
_APP_ID = wire.tag(event_pb2.EnrichedEvent, "app_id", wire.WIRE_LEN)
_REQUEST_ID = wire.tag(event_pb2.EnrichedEvent, "request_id", wire.WIRE_LEN)
_CORRECTED_TIMESTAMP = wire.tag(event_pb2.EnrichedEvent, "corrected_timestamp", wire.WIRE_LEN)
_CLOCK_SKEW_MS = wire.tag(event_pb2.EnrichedEvent, "clock_skew_ms", wire.WIRE_VARINT)
_CLOCK_STATUS = wire.tag(event_pb2.EnrichedEvent, "clock_status", wire.WIRE_VARINT)
_OS_NAME = wire.tag(event_pb2.EnrichedEvent, "os_name", wire.WIRE_LEN)
_OS_VERSION = wire.tag(event_pb2.EnrichedEvent, "os_version", wire.WIRE_LEN)
_EVENT_MESSAGE = wire.tag(event_pb2.EnrichedEvent, "event_message", wire.WIRE_LEN)
_SECONDS = wire.tag(timestamp_pb2.Timestamp, "seconds", wire.WIRE_VARINT)
_NANOS = wire.tag(timestamp_pb2.Timestamp, "nanos", wire.WIRE_VARINT)

# Bounds of the caches of encoded values that recur from event to event.
_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _seconds_field(seconds: int) -> bytes:
    """Timestamp.seconds; the events of a while share their seconds."""
    return wire.int_field(_SECONDS, seconds)


def _timestamp_field(key: bytes, ns: int) -> bytes:
    """A Timestamp field of `ns` nanoseconds since the epoch."""
    seconds, nanos = divmod(ns, NANOS_PER_S)
    return wire.message_field(key, _seconds_field(seconds) + wire.int_field(_NANOS, nanos))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _os_fields(device_os: str) -> bytes:
    """os_name and os_version of a device_os text, encoded."""
    name, version = parse_device_os(device_os)
    return wire.string_field(_OS_NAME, name) + wire.string_field(_OS_VERSION, version)


def skew_ms(skew_ns: int) -> int:
    """Nanoseconds to whole milliseconds, truncated toward zero."""
    return skew_ns // NANOS_PER_MS if skew_ns >= 0 else -(-skew_ns // NANOS_PER_MS)


def _common_fields(
    raw: event_pb2.RawBatch, *, app_id: str, received_ns: int, now_ns: int, geo: GeoLookup
) -> bytes:
    """The EnrichedEvent fields that are the same for every event of the batch, encoded."""
    context = raw.context
    location = geo_of(context.client_ip, geo)
    return b"".join(
        (
            _timestamp_field(_RECEIVED_AT, received_ns),
            _timestamp_field(_ENRICHED_AT, now_ns),
            b"" if location is None else wire.message_field(_GEO, location.SerializeToString()),
            wire.string_field(_APP_ID, app_id),
            wire.string_field(_REQUEST_ID, context.request_id),
        )
    )


def enrich_batch_bytes(
    raw: event_pb2.RawBatch,
    *,
    app_id: str,
    fallback_received_ns: int,
    now_ns: int,
    geo: GeoLookup,
    options: EnrichOptions,
    cut: set[int] | None = None,
) -> bytes:
    """Enriches every event of `raw`, in order; returns the serialised EnrichedBatch.

    The output is encoded here field by field (`enricher._wire`) instead of
    building one message tree per event and serialising it, the bulk of the
    cost otherwise. What is the same for the whole batch (times, geo, ids, the
    clock skew) is encoded once; per event there remain the clock correction,
    the OS fields (cached per device_os) and the event_message. Each
    EnrichedEvent is the event, the batch's common fields, then the event's own.

    The index of each event whose event_message is cut to
    `options.event_message_max_chars` (at a word's end, `cut_at_word`) is added to
    `cut`, when given: free-text search finds no word past the cut.
    """
    context = raw.context
    received = received_ns(raw, fallback_ns=fallback_received_ns)
    sent = timestamp_ns(context.sent_at) if context.HasField("sent_at") else None
    clock = BatchClock(
        skew_ns=measure_skew(sent_ns=sent, received_ns=received),
        received_ns=received,
        max_skew_ns=options.max_skew_ns,
    )
    common = _common_fields(raw, app_id=app_id, received_ns=received, now_ns=now_ns, geo=geo)
    max_chars = options.event_message_max_chars
    # Every event of the batch has its skew and, unless its clock is absurd, its
    # status; an absurd clock also takes the receipt time. So clock_skew_ms and
    # clock_status are encoded once, and the three clock fields of absurd events too.
    skew_field = wire.int_field(_CLOCK_SKEW_MS, skew_ms(clock.skew_ns))
    status_fields = skew_field + wire.int_field(_CLOCK_STATUS, clock.status)
    absurd_fields = b"".join(
        (
            _timestamp_field(_CORRECTED_TIMESTAMP, received),
            skew_field,
            wire.int_field(_CLOCK_STATUS, ABSURD),
        )
    )
    fixed_length = len(_EVENT) + len(common)
    corrected_ns = clock.corrected

    parts: list[bytes] = []
    append = parts.append
    for index, event in enumerate(raw.events):
        client = event.client_timestamp
        corrected = corrected_ns(client.seconds * NANOS_PER_S + client.nanos)
        if corrected is None:
            clock_fields = absurd_fields
        else:
            clock_fields = _timestamp_field(_CORRECTED_TIMESTAMP, corrected) + status_fields
        os_fields = _os_fields(event.device_os[:MAX_DEVICE_OS_CHARS])  # a bounded cache key
        message = whole_event_message(event.event_name, event.metadata)
        if len(message) > max_chars:
            message = cut_at_word(message, max_chars)
            if cut is not None:
                cut.add(index)
        message_field = wire.string_field(_EVENT_MESSAGE, message)
        event_bytes = event.SerializeToString()
        event_length = wire.varint(len(event_bytes))
        length = (
            fixed_length
            + len(event_length)
            + len(event_bytes)
            + len(clock_fields)
            + len(os_fields)
            + len(message_field)
        )
        append(_EVENTS)
        append(wire.varint(length))
        append(_EVENT)
        append(event_length)
        append(event_bytes)
        append(common)
        append(clock_fields)
        append(os_fields)
        append(message_field)
    append(wire.string_field(_BATCH_ID, context.batch_id))
    append(wire.string_field(_BATCH_APP_ID, app_id))
    return b"".join(parts)


# An enriched_at field at its largest: its key and length, then the seconds' key and a
# 10-byte varint, the nanoseconds' key and a 5-byte varint.
_ENRICHED_AT_MAX_BYTES = 2 + 11 + 6


def enriched_at_slack(now_ns: int) -> int:
    """How many bytes an enriched_at of `now_ns` takes below the largest one may take."""
    return _ENRICHED_AT_MAX_BYTES - len(_timestamp_field(_ENRICHED_AT, now_ns))


def split_enriched(
    data: bytes, limit: int, *, events: int, slack: int, cut: set[int] | None = None
) -> list[tuple[int, int, bytes]] | None:
    """A serialised EnrichedBatch of `events` events as batches of at most `limit` bytes,
    each with the range of its events, `(first, end, part)`; None when it fits as it is.

    Enrichment makes a batch about twice its raw size, so a raw message near the broker's
    largest can enrich to more than it takes. Each delivery of a raw message stamps its own
    enriched_at (the same in every event of the batch), whose encoding is `slack` bytes below
    its largest: sizes are counted as if it took the largest, so every delivery splits at the
    same events, into parts of the same names. An event too large for a message of its own
    has its event_message cut to fit (the gateway takes events up to what one message holds
    before enrichment, which adds up to four bytes a character of event_message), its index
    added to `cut` when given; raises PoisonMessageError for one that does not fit even
    without it.
    """
    # Each event counts its size with the largest enriched_at and 8 bytes for its key and
    # length: the same on every delivery. Its key and length take 2 to 7 bytes of `data`, so
    # the whole is at most this much, and when that fits no delivery splits.
    if len(data) + events * (slack + 6) <= limit:
        return None
    batch = event_pb2.EnrichedBatch.FromString(data)
    base = event_pb2.EnrichedBatch(batch_id=batch.batch_id, app_id=batch.app_id).ByteSize()
    items = batch.events
    sizes = [event.ByteSize() + slack + 8 for event in items]
    if base + sum(sizes) <= limit:
        return None
    parts: list[tuple[int, int, bytes]] = []
    start, size = 0, base
    for index, (event, one) in enumerate(zip(items, sizes, strict=True)):
        if base + one > limit:
            one = _cut_to_fit(event, one, limit - base, index=index)
            if cut is not None:
                cut.add(index)
        if size + one > limit:
            parts.append((start, index, _part(batch, start, index)))
            start, size = index, base
        size += one
    parts.append((start, len(items), _part(batch, start, len(items))))
    return parts


def _cut_to_fit(event: event_pb2.EnrichedEvent, one: int, room: int, *, index: int) -> int:
    """Cuts the event's event_message (at a word's end, `cut_at_word`) so that its counted size
    `one` comes within `room`; returns the size after. PoisonMessageError when even an empty
    text would not do."""
    over = one - room
    text = event.event_message.encode()
    if over > len(text):
        raise PoisonMessageError(
            REASON_TOO_LARGE,
            f"event {index} ({event.event.event_id!r}) enriched is {one} bytes, more than a"
            f" message may hold ({room}) even without its event_message",
        )
    before = event.ByteSize()
    # The characters whose bytes fit (a character the cut splits is left out), then whole words.
    fits = len(text[: len(text) - over].decode(errors="ignore"))
    event.event_message = cut_at_word(event.event_message, fits)
    held_back = _CUT_LOG.admit()
    if held_back is not None:
        log.warning(
            "event %r enriched was %d bytes, more than a message holds (%d): its event_message "
            "is cut to %d characters (NATS max_payload below what the gateway accepts?)%s",
            event.event.event_id[:128],
            one,
            room,
            len(event.event_message),
            logs.since_last_line(held_back, what="more events cut"),
        )
    return one - (before - event.ByteSize())


def _part(batch: event_pb2.EnrichedBatch, start: int, end: int) -> bytes:
    return event_pb2.EnrichedBatch(
        events=batch.events[start:end], batch_id=batch.batch_id, app_id=batch.app_id
    ).SerializeToString()


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
