"""Validation of a batch: JSON from the Swift client, or Event messages from gRPC/Connect.

Plain functions over generated messages. Valid events are added to a RawBatch's
`events` with one `add` call each, their timestamp and metadata then set in place
(cheaper than passing them to `add`); every invalid event becomes an
EventRejection naming its index, its id (when readable) and the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2

from gateway.config import GatewayConfig
from gateway.errors import SEND_SMALLER, InvalidRequest, TooLarge
from pipeline import rfc3339

R = event_pb2.RejectionReason
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_REQUIRED = ("event_id", "session_id", "user_id", "event_name")
_OPTIONAL = ("app_version", "device_os")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a batch and on each event."""

    max_events: int
    max_field_chars: int
    max_event_id_chars: int
    max_metadata_entries: int
    max_metadata_key_chars: int
    max_metadata_value_chars: int

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Limits:
        """The limits configured for the gateway."""
        return cls(
            max_events=config.max_events_per_batch,
            max_field_chars=config.max_field_chars,
            max_event_id_chars=config.max_event_id_chars,
            max_metadata_entries=config.max_metadata_entries,
            max_metadata_key_chars=config.max_metadata_key_chars,
            max_metadata_value_chars=config.max_metadata_value_chars,
        )

    def largest_event_bytes(self) -> int:
        """The most bytes a valid Event can take serialised: every string at its longest,
        at 4 bytes a character, with each field's framing and the longest timestamp."""
        strings = _string_field(self.max_event_id_chars) + len(_REQUIRED[1:] + _OPTIONAL) * (
            _string_field(self.max_field_chars)
        )
        entry = _string_field(self.max_metadata_key_chars) + _string_field(
            self.max_metadata_value_chars
        )
        metadata = self.max_metadata_entries * _field(entry)
        return strings + _TIMESTAMP_FIELD_BYTES + metadata

    def most_json_values(self) -> int:
        """The most values a JSON batch body may hold, object members included: every event
        at its largest (its fields, its metadata object and entries), with room for a few
        fields this gateway does not read. Parsing a body is then bounded by what a real
        batch holds, not by its bytes alone (`[[],[],...]` is a value per 3 bytes)."""
        per_event = self.max_metadata_entries + JSON_VALUES_PER_EVENT
        return self.max_events * per_event + JSON_VALUES_PER_BODY


# Values of one JSON event besides its metadata entries: the event, its eight fields and the
# metadata object take ten; the rest is room for fields of a newer client, which are ignored.
JSON_VALUES_PER_EVENT = 32
# Values of the envelope around the events: the object, sent_at and the events array.
JSON_VALUES_PER_BODY = 16


# A Timestamp field: key and length, then seconds (a negative int64 takes 10 bytes) and nanos.
_TIMESTAMP_FIELD_BYTES = 2 + 11 + 6


def _field(size: int) -> int:
    """Bytes of a length-delimited field holding `size` bytes: key, length, content."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def _string_field(chars: int) -> int:
    return _field(4 * chars)


class EventSink(Protocol):
    """Where valid events go: the `events` field of a RawBatch."""

    def add(self, **kwargs: Any) -> event_pb2.Event: ...


class _Reject(Exception):
    def __init__(self, reason: int, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def go_float(value: float) -> str:
    """A float as Go's fmt %v prints a float64 (shortest digits, %e past 1e+06 and below 1e-04)."""
    if math.isnan(value) or math.isinf(value):
        return repr(value)
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    count = len(digits)
    point = count + exponent
    exp10 = point - 1
    neg = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if count > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{digits}"
    if point >= count:
        return f"{neg}{digits}{'0' * (point - count)}"
    return f"{neg}{digits[:point]}.{digits[point:]}"


def parse_envelope(doc: object, *, max_events: int) -> tuple[list[Any], tuple[int, int] | None]:
    """The events and the optional sent_at of a decoded JSON body; raises for a non-batch."""
    sent_at = None
    items: object
    if isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict):
        items = doc.get("events")
        if not isinstance(items, list):
            raise InvalidRequest('an object body needs "events": [...]')
        raw = doc.get("sent_at")
        if raw is not None:
            sent_at = rfc3339.parse(raw) if isinstance(raw, str) else None
            if sent_at is None:
                if isinstance(raw, str) and rfc3339.out_of_range(raw):
                    raise InvalidRequest(f"sent_at {rfc3339.OUT_OF_RANGE}")
                raise InvalidRequest("sent_at is not an RFC 3339 timestamp")
    else:
        raise InvalidRequest("the body must be a JSON array of events or an object with events")
    assert isinstance(items, list)
    check_count(len(items), max_events=max_events)
    return items, sent_at


def check_count(count: int, *, max_events: int) -> None:
    """Raises for an empty batch or one with too many events."""
    if count == 0:
        raise InvalidRequest("the batch has no events")
    if count > max_events:
        raise TooLarge(
            f"the batch has {count} events; at most {max_events} are accepted: {SEND_SMALLER}"
        )


# Parsing 64,000 events (empty ones, at 2 bytes each) takes about 6 ms; past that many
# 0x0a bytes per 1,000 events allowed, events are counted on the wire first.
_COUNTED_PAST = 64


def check_proto_count(data: bytes, *, max_events: int) -> None:
    """Raises TooLarge when a serialised IngestEventsRequest holds more than `max_events`
    events, before it is parsed: an empty event takes two bytes on the wire and a Python
    object once parsed, so bytes alone do not bound what parsing costs.

    Counts the message's top-level `events` fields (field 1), reading tags and lengths only,
    and stops past `max_events`; a message that does not read as protobuf is left to the
    parser to refuse. Each event starts with the byte 0x0a: a message with no more of those
    than `_COUNTED_PAST` times `max_events` is left to the parser, which refuses too many
    events after a few milliseconds at most, and real batches skip the slower count here.
    """
    if data.count(b"\x0a") <= _COUNTED_PAST * max_events:
        return
    count, pos, end = 0, 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = _varint(data, pos)
            if tag >> 3 == 1:
                count += 1
                if count > max_events:
                    raise TooLarge(
                        f"the batch has more than {max_events} events; at most {max_events} "
                        f"are accepted: {SEND_SMALLER}"
                    )
            pos += length
        elif wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:  # groups, or not protobuf: the parser says what is wrong
            return


def _varint(data: bytes, start: int) -> tuple[int, int]:
    """The varint at `start` and the position after it (past the end for a cut one)."""
    result = shift = 0
    for index in range(start, min(start + 10, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, index + 1
        shift += 7
    return 0, len(data) + 1


def _text(value: str, name: str, limit: int, required: bool) -> None:
    if not value:
        if required:
            raise _Reject(R.REJECTION_REASON_MISSING_FIELD, f"{name} is required")
        return
    if len(value) > limit:
        raise _Reject(
            R.REJECTION_REASON_FIELD_TOO_LONG, f"{name} is longer than {limit} characters"
        )


def _event_id(value: str, limits: Limits) -> None:
    _text(value, "event_id", limits.max_event_id_chars, True)
    if _EVENT_ID.fullmatch(value) is None:
        raise _Reject(
            R.REJECTION_REASON_INVALID_EVENT_ID,
            "event_id may hold only letters, digits and . _ : - (starting with a letter or digit)",
        )


def _metadata_bounds(count: int, limits: Limits) -> None:
    if count > limits.max_metadata_entries:
        raise _Reject(
            R.REJECTION_REASON_METADATA_TOO_LARGE,
            f"metadata has {count} entries; at most {limits.max_metadata_entries}",
        )


def _metadata_key(key: str, limits: Limits) -> None:
    """Raises for an empty or too long key; checked before any detail quotes the key."""
    if not key:
        raise _Reject(R.REJECTION_REASON_INVALID_METADATA, "metadata keys must not be empty")
    if len(key) > limits.max_metadata_key_chars:
        raise _Reject(
            R.REJECTION_REASON_METADATA_TOO_LARGE,
            f"metadata key longer than {limits.max_metadata_key_chars} characters",
        )


def _metadata_entry(key: str, value: str, limits: Limits) -> None:
    _metadata_key(key, limits)
    _metadata_value(key, value, limits)


def _metadata_value(key: str, value: str, limits: Limits) -> None:
    if len(value) > limits.max_metadata_value_chars:
        raise _Reject(
            R.REJECTION_REASON_METADATA_TOO_LARGE,
            f"metadata value of {key!r} longer than {limits.max_metadata_value_chars} characters",
        )


def _json_metadata(raw: object, limits: Limits) -> dict[str, str] | None:
    if raw is None:
        return None
    if type(raw) is not dict:
        raise _Reject(R.REJECTION_REASON_INVALID_TYPE, "metadata must be an object")
    _metadata_bounds(len(raw), limits)
    out: dict[str, str] = {}
    for key, value in raw.items():
        _metadata_key(key, limits)
        kind = type(value)
        if kind is str:
            text = value
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is int:
            text = str(value)
        elif kind is float:
            text = go_float(value)
        else:
            what = (
                "null" if value is None else "a nested " + ("array" if kind is list else "object")
            )
            raise _Reject(
                R.REJECTION_REASON_INVALID_METADATA,
                f"metadata value of {key!r} is {what}; only strings, numbers and booleans",
            )
        _metadata_value(key, text, limits)
        out[key] = text
    return out


def _checked_fields(item: dict[str, Any], limits: Limits) -> dict[str, str]:
    """The string fields of an event, field by field, raising the first problem found."""
    fields: dict[str, str] = {}
    for name in _REQUIRED + _OPTIONAL:
        value = item.get(name)
        if value is None:
            value = ""
        elif type(value) is not str:
            raise _Reject(R.REJECTION_REASON_INVALID_TYPE, f"{name} must be a string")
        if name == "event_id":
            _event_id(value, limits)
        else:
            _text(value, name, limits.max_field_chars, name in _REQUIRED)
        fields[name] = value
    return fields


def _checked_timestamp(stamp: object) -> tuple[int, int]:
    if stamp is None or stamp == "":
        raise _Reject(R.REJECTION_REASON_MISSING_FIELD, "client_timestamp is required")
    if type(stamp) is not str:
        raise _Reject(R.REJECTION_REASON_INVALID_TYPE, "client_timestamp must be a string")
    parsed = rfc3339.parse(stamp)
    if parsed is None:
        raise _Reject(
            R.REJECTION_REASON_INVALID_TIMESTAMP,
            f"client_timestamp {rfc3339.OUT_OF_RANGE}"
            if rfc3339.out_of_range(stamp)
            else "client_timestamp is not an RFC 3339 date-time with its offset, such as"
            " 2026-11-27T08:00:00.000Z",
        )
    return parsed


def _json_event(
    item: object, limits: Limits
) -> tuple[dict[str, str], tuple[int, int], dict[str, str] | None]:
    """An Event's string fields, its timestamp as (seconds, nanos) and its metadata.

    The common valid case takes the fast path.
    """
    if type(item) is not dict:
        raise _Reject(R.REJECTION_REASON_NOT_AN_OBJECT, "the event is not a JSON object")
    get = item.get
    event_id = get("event_id")
    session_id = get("session_id")
    user_id = get("user_id")
    event_name = get("event_name")
    app_version = get("app_version", "")
    device_os = get("device_os", "")
    most = limits.max_field_chars
    if (
        type(event_id) is str
        and type(session_id) is str
        and type(user_id) is str
        and type(event_name) is str
        and type(app_version) is str
        and type(device_os) is str
        and 0 < len(event_id) <= limits.max_event_id_chars
        and 0 < len(session_id) <= most
        and 0 < len(user_id) <= most
        and 0 < len(event_name) <= most
        and len(app_version) <= most
        and len(device_os) <= most
        and _EVENT_ID.fullmatch(event_id) is not None
    ):
        fields: dict[str, str] = {
            "event_id": event_id,
            "session_id": session_id,
            "user_id": user_id,
            "event_name": event_name,
            "app_version": app_version,
            "device_os": device_os,
        }
    else:
        fields = _checked_fields(item, limits)
    stamp = get("client_timestamp")
    parsed = rfc3339.parse(stamp) if type(stamp) is str else None
    if parsed is None:
        parsed = _checked_timestamp(stamp)
    metadata = get("metadata")
    if metadata is not None:
        if type(metadata) is dict and len(metadata) <= limits.max_metadata_entries:
            longest_key = limits.max_metadata_key_chars
            longest_value = limits.max_metadata_value_chars
            for key, value in metadata.items():
                if (
                    type(value) is not str
                    or not key
                    or len(key) > longest_key
                    or len(value) > longest_value
                ):
                    metadata = _json_metadata(metadata, limits)
                    break
        else:
            metadata = _json_metadata(metadata, limits)
    return fields, parsed, metadata


def _readable_id(item: object) -> str:
    if isinstance(item, dict):
        value = item.get("event_id")
        if isinstance(value, str) and len(value) <= 256:
            return value
    return ""


def _duplicate(event_id: str) -> _Reject:
    return _Reject(
        R.REJECTION_REASON_DUPLICATE_EVENT_ID,
        f"event_id {event_id!r} appears earlier in the batch",
    )


def read_json_events(
    items: Sequence[Any], limits: Limits, sink: EventSink
) -> list[event_pb2.EventRejection]:
    """Adds the valid events of a JSON batch to `sink`; returns the rejections."""
    rejections: list[event_pb2.EventRejection] = []
    seen: set[str] = set()
    add = sink.add
    for index, item in enumerate(items):
        try:
            fields, when, metadata = _json_event(item, limits)
            event_id = fields["event_id"]
            if event_id in seen:
                raise _duplicate(event_id)
        except _Reject as problem:
            rejections.append(
                event_pb2.EventRejection(
                    index=index,
                    event_id=_readable_id(item),
                    reason=problem.reason,  # type: ignore[arg-type]
                    detail=problem.detail,
                )
            )
            continue
        seen.add(event_id)
        event = add(**fields)
        stamp = event.client_timestamp
        stamp.seconds, stamp.nanos = when
        if metadata:
            entries = event.metadata
            for key, value in metadata.items():
                entries[key] = value
    return rejections


def _in_range(stamp: Timestamp) -> bool:
    """Whether a Timestamp is one RFC 3339 can write (0001-01-01 to 9999-12-31, valid nanos)."""
    return (
        rfc3339.MIN_SECONDS <= stamp.seconds <= rfc3339.MAX_SECONDS
        and 0 <= stamp.nanos <= 999_999_999
    )


def check_sent_at(stamp: Timestamp) -> None:
    """Raises for a batch's sent_at out of range, as the JSON route does for its sent_at."""
    if not _in_range(stamp):
        raise InvalidRequest("sent_at is out of range")


def _proto_event(event: event_pb2.Event, limits: Limits) -> None:
    _event_id(event.event_id, limits)
    for name in _REQUIRED[1:]:
        _text(getattr(event, name), name, limits.max_field_chars, True)
    for name in _OPTIONAL:
        _text(getattr(event, name), name, limits.max_field_chars, False)
    if not event.HasField("client_timestamp"):
        raise _Reject(R.REJECTION_REASON_MISSING_FIELD, "client_timestamp is required")
    if not _in_range(event.client_timestamp):
        raise _Reject(R.REJECTION_REASON_INVALID_TIMESTAMP, "client_timestamp is out of range")
    _metadata_bounds(len(event.metadata), limits)
    for key, value in event.metadata.items():
        _metadata_entry(key, value, limits)


def read_proto_events(
    events: Iterable[event_pb2.Event], limits: Limits, sink: EventSink
) -> list[event_pb2.EventRejection]:
    """Adds the valid events of a gRPC/Connect batch to `sink`; returns the rejections."""
    rejections: list[event_pb2.EventRejection] = []
    seen: set[str] = set()
    for index, event in enumerate(events):
        try:
            _proto_event(event, limits)
            if event.event_id in seen:
                raise _duplicate(event.event_id)
        except _Reject as problem:
            rejections.append(
                event_pb2.EventRejection(
                    index=index,
                    event_id=event.event_id if len(event.event_id) <= 256 else "",
                    reason=problem.reason,  # type: ignore[arg-type]
                    detail=problem.detail,
                )
            )
            continue
        seen.add(event.event_id)
        sink.add().CopyFrom(event)
    return rejections
