"""The ingest core every protocol shares: admit, validate, stamp the context, publish, receipt."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, ingest_service_pb2

from gateway._metrics import Metrics
from gateway._validate import (
    Limits,
    check_count,
    check_sent_at,
    parse_envelope,
    read_json_events,
    read_proto_events,
)
from gateway.errors import (
    SEND_SMALLER,
    InvalidRequest,
    Overloaded,
    TooLarge,
    Unavailable,
    Unconfirmed,
)
from pipeline import tracing
from pipeline.subjects import RAW_STREAM, raw_subject

# Room left in a message for its headers and framing, below the broker's max_payload.
PAYLOAD_HEADROOM_BYTES = 4096
MAX_IDEMPOTENCY_KEY_CHARS = 256


class Publisher(Protocol):
    """The port to the broker (JetStream in production, a fake in unit tests)."""

    @property
    def max_payload(self) -> int:
        """Largest message the broker takes, bytes."""
        ...

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        """Publishes and waits for the ack; True when the broker already had `msg_id`.

        Raises Unavailable when the message is not stored, Unconfirmed (an Unavailable) when
        it may be stored without an ack.
        """
        ...


@dataclass(frozen=True, slots=True)
class Origin:
    """What the transport knows about a request."""

    app_id: str
    client_ip: str
    user_agent: str
    request_id: str
    protocol: int
    received_at: float
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What happened to a batch."""

    accepted: int
    rejected: list[event_pb2.EventRejection]
    duplicate: bool
    batch_id: str

    def to_json(self) -> dict[str, object]:
        """The JSON receipt of POST /v1/track."""
        return {
            "accepted": self.accepted,
            "rejected": [
                {
                    "index": r.index,
                    "event_id": r.event_id,
                    "reason": event_pb2.RejectionReason.Name(r.reason),
                    "detail": r.detail,
                }
                for r in self.rejected
            ],
            "duplicate": self.duplicate,
            "batch_id": self.batch_id,
        }

    def to_proto(self) -> ingest_service_pb2.IngestEventsResponse:
        """The receipt as IngestEventsResponse."""
        return ingest_service_pb2.IngestEventsResponse(
            accepted=self.accepted,
            rejected=self.rejected,
            duplicate=self.duplicate,
            batch_id=self.batch_id,
        )


def annotate(span: tracing.Span, receipt: Receipt) -> None:
    """Puts what happened to a batch on its request span (counts, never content)."""
    span.set_attribute("pipeline.events.accepted", receipt.accepted)
    span.set_attribute("pipeline.events.rejected", len(receipt.rejected))
    span.set_attribute("pipeline.duplicate", receipt.duplicate)
    span.set_attribute("pipeline.batch_id", receipt.batch_id)


def batch_id(
    app_id: str,
    *,
    idempotency_key: str,
    events: Iterable[event_pb2.Event],
) -> str:
    """The batch's id, per app: from the client's idempotency key and the ids of the events
    it accepted, else from those events' content.

    The event ids make a key reused for another batch (a client bug) name a new batch, stored
    like any other, instead of a retry whose events would be dropped as already stored.
    Without a key, only the accepted events count, never the envelope: a retry carries a
    fresh `sent_at` (the device clock when sending), and is the same batch all the same.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(app_id.encode())
    if idempotency_key:
        digest.update(b"\x00key\x00" + idempotency_key.encode("utf-8", "surrogateescape"))
        for event in events:
            digest.update(b"\x00" + event.event_id.encode("utf-8", "surrogateescape"))
    else:
        digest.update(b"\x00events")
        for event in events:
            content = event.SerializeToString(deterministic=True)
            digest.update(b"\x00" + len(content).to_bytes(4, "big") + content)
    return digest.hexdigest()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# A JSON string, escapes included: what `check_json_values` does not count inside.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def check_json_values(body: bytes, most: int) -> None:
    """Raises TooLarge when the JSON in `body` holds more than `most` values (object members
    counted too), before anything is parsed.

    Every value but the first of an array or object follows a comma, and every array or
    object opens with a bracket, so those bytes bound the values. Counted outside strings
    only when the bytes alone are too many (commas and brackets in metadata values).
    """
    if _json_values_at_most(body) <= most:
        return
    if _json_values_at_most(_JSON_STRING.sub(b'""', body)) <= most:
        return
    raise TooLarge(
        f"the body holds more than {most} JSON values, more than a batch of the largest events"
        f" does: {SEND_SMALLER}"
    )


def _json_values_at_most(body: bytes) -> int:
    return 1 + body.count(b",") + body.count(b"[") + body.count(b"{")


def load_json(body: bytes, *, most_values: int = 0) -> Any:
    """The body's JSON; raises InvalidRequest for anything that is not JSON in UTF-8, and
    TooLarge for JSON of more than `most_values` values (when set).

    A string with half a surrogate pair (`"\\ud83d"`: code that cut an emoji in two) is
    JSON all the same; each such half becomes U+FFFD, as most JSON decoders do, instead of
    the whole batch being refused for one broken character. A leading byte order mark is
    skipped.
    """
    if most_values:
        check_json_values(body, most_values)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # The slow path, for what orjson refuses: lone surrogates, a UTF-8 byte order mark
    # (some HTTP libraries write one), and real errors.
    try:
        text = body.decode("utf-8-sig")
        return _mend(
            json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_integer)
        )
    except json.JSONDecodeError as err:
        raise InvalidRequest(
            f"the body is not valid JSON ({err.msg}: line {err.lineno} column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise InvalidRequest(
            f"the body is not valid JSON (not UTF-8: byte {err.start} is {byte:#04x})"
        ) from None
    except RecursionError:
        raise InvalidRequest("the body is not valid JSON (nested too deeply)") from None
    except ValueError as err:  # NaN, Infinity, a number past the float range, huge integers
        raise InvalidRequest(f"the body is not valid JSON ({err})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; raises for one past the float range (`1e400`), as orjson
    does and as NaN is refused, rather than keeping it as infinity."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is past the float range")
    return value


def _integer(text: str) -> int | float:
    """A JSON integer as orjson reads it: an int within 64 bits, else a float (refused past
    the float range)."""
    value = int(text)
    return value if _INT_MIN <= value <= _UINT_MAX else _finite(text)


_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1


def _mend(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_mend(item) for item in value]
    if isinstance(value, dict):
        return {_mend(key): _mend(item) for key, item in value.items()}
    return value


def check_idempotency_key(key: str) -> None:
    """Raises for a key that is too long or not printable."""
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be printable and at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )


# Room kept in every message for the batch's context, whatever it holds: user agent (512
# characters, up to 4 bytes each), request id, client IP, app and batch ids, two timestamps.
# Whether a batch is split, and where, then depends on its events alone, not on the request
# that carried it: a retry from another address, or received a moment later, splits alike.
CONTEXT_ALLOWANCE_BYTES = 4096
_EVENT_FRAMING_BYTES = 8  # the events field's key and length, generously


def split(
    batch: event_pb2.RawBatch, limit: int, *, payload: bytes
) -> list[tuple[int, int, bytes]] | None:
    """None when the batch (serialised: `payload`) goes in one message of at most `limit`
    bytes; else its events in parts `(first, end, part)`, each part at most `limit` bytes
    with the context.

    Decided from the events' sizes only (see CONTEXT_ALLOWANCE_BYTES), so every attempt to
    store a batch splits it the same way.
    """
    context_size = batch.context.ByteSize()
    if context_size > CONTEXT_ALLOWANCE_BYTES:  # cannot happen with the gateway's own limits
        raise TooLarge("the batch's context is larger than the room kept for it")
    room = limit - CONTEXT_ALLOWANCE_BYTES
    # The payload is the events, then the context field (key, length, message).
    context_field = 1 + _varint_size(context_size) + context_size
    if len(payload) - context_field <= room:
        return None
    sizes = [event.ByteSize() + _EVENT_FRAMING_BYTES for event in batch.events]
    parts: list[tuple[int, int, bytes]] = []
    start, size = 0, 0
    for index, one in enumerate(sizes):
        if one > room:  # the core rejects such events before (see event_room)
            raise TooLarge(
                "an event is larger than the broker's largest message: send it with less metadata"
            )
        if size + one > room:
            parts.append((start, index, _part(batch, start, index)))
            start, size = index, 0
        size += one
    parts.append((start, len(sizes), _part(batch, start, len(sizes))))
    return parts


def partly_stored(stored: int, events: int) -> str:
    """What the client is told of a split batch whose first `stored` events JetStream stored
    before it failed to store the rest."""
    return (
        f"the broker stored {stored} of the batch's {events} events but not the rest: retry it"
        " with the same Idempotency-Key (or the same events), and the rest is stored (the"
        f" {stored} are not stored again)"
    )


def event_room(max_payload: int) -> int:
    """The most bytes one event (serialised, with its framing) may take for a broker whose
    largest message is `max_payload`: larger, no split of its batch could store it."""
    return max_payload - PAYLOAD_HEADROOM_BYTES - CONTEXT_ALLOWANCE_BYTES - _EVENT_FRAMING_BYTES


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _part(batch: event_pb2.RawBatch, start: int, end: int) -> bytes:
    return event_pb2.RawBatch(
        events=batch.events[start:end], context=batch.context
    ).SerializeToString()


def _timestamp(at: float) -> Timestamp:
    frac, whole = math.modf(at)
    return Timestamp(seconds=int(whole), nanos=int(frac * 1e9))


class Reservation:
    """One admitted request's share of the in-flight bytes budget, released when the
    request leaves `IngestCore.admit`."""

    __slots__ = ("_core", "held")

    def __init__(self, core: IngestCore) -> None:
        self._core = core
        self.held = 0

    def charge(self, size: int) -> None:
        """Counts `size` more bytes held for the request; raises Overloaded when they do not
        fit beside other requests' (the request is then refused before it reads more)."""
        self._core._charge(self, size)


class IngestCore:
    """Validates batches, publishes the valid events and answers with a receipt."""

    def __init__(
        self,
        *,
        publisher: Publisher,
        limits: Limits,
        metrics: Metrics,
        max_in_flight: int,
        max_in_flight_bytes: int = 0,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        self._tracing = tracer or tracing.Tracing.disabled()
        self._publisher = publisher
        self._limits = limits
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._max_bytes = max_in_flight_bytes
        self._largest_event = limits.largest_event_bytes()
        self._most_json_values = limits.most_json_values()
        self._in_flight = 0
        self._bytes = 0
        self._closed = False

    def events_may_not_fit(self) -> tuple[int, int] | None:
        """(largest event the limits allow, most one message holds) when the first is more:
        such events are rejected one by one (REJECTION_REASON_EVENT_TOO_LARGE); else None."""
        room = event_room(self._publisher.max_payload)
        return (self._largest_event, room) if self._largest_event > room else None

    def _drop_oversized(
        self, batch: event_pb2.RawBatch, rejections: list[event_pb2.EventRejection]
    ) -> list[event_pb2.EventRejection]:
        """Moves the events too large for any broker message from `batch` to the rejections
        (splitting the batch could never store them; the other events are stored)."""
        room = event_room(self._publisher.max_payload)
        if self._largest_event <= room:  # the limits keep every event small enough
            return rejections
        events = batch.events
        too_large = [n for n, event in enumerate(events) if event.ByteSize() > room]
        if not too_large:
            return rejections
        # Every item of the batch was either added to it or rejected, in order.
        rejected = {r.index for r in rejections}
        indexes = [n for n in range(len(events) + len(rejections)) if n not in rejected]
        added = [
            event_pb2.EventRejection(
                index=indexes[n],
                event_id=events[n].event_id,
                reason=event_pb2.REJECTION_REASON_EVENT_TOO_LARGE,
                detail=f"the event takes {events[n].ByteSize()} bytes; one broker message "
                f"holds events of at most {room}: send it with less metadata",
            )
            for n in too_large
        ]
        for n in reversed(too_large):
            del events[n]
        return sorted(rejections + added, key=lambda r: r.index)

    @property
    def max_events(self) -> int:
        """The most events a batch may hold."""
        return self._limits.max_events

    @property
    def most_json_values(self) -> int:
        """The most values a JSON batch body may hold (see Limits.most_json_values)."""
        return self._most_json_values

    @property
    def in_flight(self) -> int:
        """Ingest requests being handled now."""
        return self._in_flight

    def close(self) -> None:
        """Refuses new batches (503) from now on; those in flight finish."""
        self._closed = True

    @contextmanager
    def admit(self) -> Iterator[Reservation]:
        """Holds one in-flight slot for a request, and its share of the bytes budget as the
        request charges it (body read, inflated); raises Overloaded when no slot is free."""
        if self._closed:
            raise Unavailable("the gateway is stopping")
        if self._in_flight >= self._max_in_flight:
            raise Overloaded("too many requests in flight")
        self._in_flight += 1
        self._metrics.in_flight.inc()
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            self._bytes -= reservation.held
            self._in_flight -= 1
            self._metrics.in_flight.dec()

    def _charge(self, reservation: Reservation, size: int) -> None:
        # A request alone in flight always fits: only others' bytes can push it over.
        others = self._bytes - reservation.held
        if self._max_bytes and others and self._bytes + size > self._max_bytes:
            raise Overloaded("too many bytes in flight")
        self._bytes += size
        reservation.held += size

    async def ingest_json(self, body: bytes, origin: Origin) -> Receipt:
        """Ingests a POST /v1/track body (already decompressed)."""
        # Read in a call of its own: the parsed document is gone before the publish is awaited.
        batch, rejections, bid = self._read_json(body, origin)
        return await self._finish(batch, rejections, origin, bid)

    def _read_json(
        self, body: bytes, origin: Origin
    ) -> tuple[event_pb2.RawBatch, list[event_pb2.EventRejection], str]:
        """The batch of a JSON body, its rejections and its id."""
        doc = load_json(body, most_values=self._most_json_values)
        items, sent_at = parse_envelope(doc, max_events=self._limits.max_events)
        batch = event_pb2.RawBatch()
        rejections = self._drop_oversized(
            batch, read_json_events(items, self._limits, batch.events)
        )
        if sent_at is not None:
            batch.context.sent_at.seconds, batch.context.sent_at.nanos = sent_at
        if origin.idempotency_key:
            check_idempotency_key(origin.idempotency_key)
        bid = batch_id(origin.app_id, idempotency_key=origin.idempotency_key, events=batch.events)
        return batch, rejections, bid

    async def ingest_proto(
        self, request: ingest_service_pb2.IngestEventsRequest, origin: Origin
    ) -> Receipt:
        """Ingests an IngestEventsRequest (gRPC or Connect)."""
        # Fields of a newer schema (or made up) would ride into the raw stream unbounded by
        # any limit: only the fields this gateway validates are kept.
        request.DiscardUnknownFields()
        check_count(len(request.events), max_events=self._limits.max_events)
        batch = event_pb2.RawBatch()
        rejections = self._drop_oversized(
            batch, read_proto_events(request.events, self._limits, batch.events)
        )
        if request.HasField("sent_at"):
            check_sent_at(request.sent_at)
            batch.context.sent_at.CopyFrom(request.sent_at)
        key = request.idempotency_key or origin.idempotency_key
        if key:
            check_idempotency_key(key)
        bid = batch_id(origin.app_id, idempotency_key=key, events=batch.events)
        return await self._finish(batch, rejections, origin, bid)

    async def _finish(
        self,
        batch: event_pb2.RawBatch,
        rejections: list[event_pb2.EventRejection],
        origin: Origin,
        bid: str,
    ) -> Receipt:
        accepted = len(batch.events)
        if accepted == 0:
            # Nothing to store: the receipt says so, and a retry would be rejected the same way.
            # No batch id either: none is stored, and every such batch would share one.
            self._metrics.rejected(rejections)
            return Receipt(accepted=0, rejected=rejections, duplicate=False, batch_id="")
        context = batch.context
        context.received_at.CopyFrom(_timestamp(origin.received_at))
        context.client_ip = origin.client_ip
        context.user_agent = origin.user_agent
        context.app_id = origin.app_id
        context.request_id = origin.request_id
        context.batch_id = bid
        context.protocol = origin.protocol  # type: ignore[assignment]
        try:
            duplicate = await self._publish(batch, raw_subject(origin.app_id), bid)
        except (Unconfirmed, asyncio.CancelledError):
            # Answered 503, yet JetStream may hold it (its retry then answers duplicate and
            # counts nothing): counted apart, so what the enricher counts stays explained. So
            # is a request cut off while it waited (a gRPC deadline, a stop's grace run out).
            self._metrics.unconfirmed(accepted)
            raise
        # Counted once the batch's fate is final: not for an attempt answered 503, and not
        # again for a retry of a stored batch (its events were counted when first stored).
        if duplicate:
            self._metrics.duplicate_batches.inc()
        else:
            self._metrics.accepted(accepted)
            self._metrics.rejected(rejections)
        return Receipt(accepted=accepted, rejected=rejections, duplicate=duplicate, batch_id=bid)

    async def _publish(self, batch: event_pb2.RawBatch, subject: str, bid: str) -> bool:
        limit = self._publisher.max_payload - PAYLOAD_HEADROOM_BYTES
        payload = batch.SerializeToString()
        pieces = split(batch, limit, payload=payload)
        # The publisher writes this span's traceparent into the messages' headers. A batch
        # not stored (refused, timed out, not connected) is timed too, as failed.
        with (
            self._metrics.publishing(),
            self._tracing.span(
                f"publish {RAW_STREAM}",
                kind=tracing.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": subject,
                    "pipeline.app_id": batch.context.app_id,
                    "pipeline.events": len(batch.events),
                },
            ) as span,
        ):
            if pieces is None:
                parts = 1
                duplicate = await self._publisher.publish(subject, payload, msg_id=bid)
            else:
                # Each part is named by the events it holds: were a retry ever split
                # otherwise, its parts would be stored again, never taken for parts that
                # hold fewer events.
                duplicate = True
                parts = len(pieces)
                for first, end, part in pieces:
                    msg_id = f"{bid}:{first}-{end}"
                    try:
                        one = await self._publisher.publish(subject, part, msg_id=msg_id)
                    except Unconfirmed:
                        raise
                    except Unavailable as err:
                        if first == 0:
                            raise
                        # The parts before it are stored: the batch is, in part.
                        raise Unconfirmed(partly_stored(first, len(batch.events))) from err
                    duplicate = duplicate and one
            span.set_attribute("pipeline.messages", parts)
            span.set_attribute("pipeline.duplicate", duplicate)
        return duplicate
