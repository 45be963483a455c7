"""EnrichedEvent <-> OpenSearch document, and which daily index an event belongs to.

The index rule (effectively-once indexing):

- The document `_id` is the event's `event_id` and documents are written with
  `op_type=create`, so a second write of the same event answers 409 and changes nothing.
- The index is `<prefix>YYYY-MM-DD`, the UTC day of the event's own `client_timestamp`.
  That value is the one thing that never changes between deliveries of the same event:
  a device resends the same stored event, a redelivery or restart replays the same
  bytes, while `received_at`, `corrected_timestamp` and `enriched_at` all differ from
  one attempt to the next (a retry the next day would otherwise land in another index).
- Only days near the event's arrival get an index of their own: a client day more than
  `DatedWindow.past_days` before the UTC day of `received_at`, or more than
  `future_days` after it, goes to the fixed index `<prefix>undated`, as does an unset
  client timestamp or one outside 2000-2099. Otherwise every distinct day a client
  sends (a device clock reset to 2001, a client stamping random dates) would create an
  index, and with it a shard, until OpenSearch's shard limit stops every write. The
  rule is stable for a retry whose client day stays on one side of the window's edges:
  a day behind it only falls further behind with a later retry, and a day in it stays
  in it unless the retry comes after the day has left it (an event first sent when
  `past_days` old), or one ahead of it comes into it (a clock more than `future_days`
  ahead, retried after it is no longer that far ahead): then the retry is a second
  document.

Queries search `<prefix>*` and filter on `corrected_timestamp`, so the index an event
sits in does not decide whether it is found. Retention deletes whole daily indices once
both the date in their name and the day they were created are past it: an event from a
device whose clock runs days behind goes with its day's index (or, when that index was
deleted already, is kept the retention's days in the one it creates again), and one whose
clock runs ahead is kept longer. In `<prefix>undated` it deletes the events that arrived
(`ingestion_timestamp`) before the retention's days.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2

from indexer.errors import DocumentError
from pipeline.rfc3339 import MAX_SECONDS, MIN_SECONDS, format_utc

UNDATED = "undated"
EARLIEST_DATED = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_DATED = datetime(2100, 1, 1, tzinfo=UTC)
MAX_ID_BYTES = 512  # OpenSearch's limit on `_id`

DEFAULT_PAST_DAYS = 30
DEFAULT_FUTURE_DAYS = 7


class DatedWindow(NamedTuple):
    """The client days that get a daily index: from `past_days` before the UTC day of the
    event's arrival (`received_at`) to `future_days` after it; the others go undated."""

    past_days: int = DEFAULT_PAST_DAYS
    future_days: int = DEFAULT_FUTURE_DAYS


DEFAULT_WINDOW = DatedWindow()

_EPOCH = datetime(1970, 1, 1)  # naive: isoformat() without an offset
_DAY_S = 86400
_EARLIEST_S = int(EARLIEST_DATED.timestamp())
_LATEST_S = int(LATEST_DATED.timestamp())

# Plain string fields, named alike in the message and the document.
_EVENT_STRINGS = (
    "event_id",
    "session_id",
    "user_id",
    "event_name",
    "app_version",
    "device_os",
)
_ENRICHED_STRINGS = ("os_name", "os_version", "event_message", "app_id", "request_id")
_ENRICHED_TIMES = {
    "ingestion_timestamp": "received_at",
    "enriched_at": "enriched_at",
    "corrected_timestamp": "corrected_timestamp",
}


def index_name(
    event: event_pb2.EnrichedEvent, *, prefix: str, window: DatedWindow = DEFAULT_WINDOW
) -> str:
    """The daily index of `event`: `<prefix>YYYY-MM-DD` of its client timestamp, or undated."""
    inner = event.event
    if not inner.HasField("client_timestamp"):
        return prefix + UNDATED
    received_s = event.received_at.seconds if event.HasField("received_at") else None
    return _dated_index(inner.client_timestamp.seconds, received_s, prefix, window)


def _dated_index(seconds: int, received_s: int | None, prefix: str, window: DatedWindow) -> str:
    """The index rule for a set client timestamp of `seconds`, of an event that arrived at
    `received_s` (None: not known, then the client day alone decides)."""
    if not _EARLIEST_S <= seconds < _LATEST_S:
        return prefix + UNDATED
    day = seconds // _DAY_S
    if received_s is not None:
        arrived = received_s // _DAY_S
        if not arrived - window.past_days <= day <= arrived + window.future_days:
            return prefix + UNDATED
    return prefix + _day(day)


@functools.lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return (_EPOCH + timedelta(days=days)).date().isoformat()


def _format_time(seconds: int, nanos: int, field: str) -> str:
    """RFC 3339 in UTC with 0, 3, 6 or 9 fraction digits, as protobuf's JSON mapping writes it."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS or not 0 <= nanos < 1_000_000_000:
        raise DocumentError(f"{field} is out of range: {seconds} s {nanos} ns")
    return format_utc(seconds, nanos)


# Texts of recent timestamps by (seconds, nanos). The events of one batch share
# received_at and enriched_at, and corrected_timestamp often equals client_timestamp:
# many lookups hit. Cleared whole when full, which keeps it bounded and cheap.
_TIME_TEXTS: dict[tuple[int, int], str] = {}
_TIME_TEXTS_MAX = 65536


def _time_text(stamp: Timestamp, field: str) -> str:
    key = (stamp.seconds, stamp.nanos)
    text = _TIME_TEXTS.get(key)
    if text is None:
        text = _format_time(key[0], key[1], field)
        if len(_TIME_TEXTS) >= _TIME_TEXTS_MAX:
            _TIME_TEXTS.clear()
        _TIME_TEXTS[key] = text
    return text


_CLOCK_STATUS_NAMES = {
    value.number: value.name for value in event_pb2.ClockStatus.DESCRIPTOR.values
}


def to_document(event: event_pb2.EnrichedEvent) -> dict[str, Any]:
    """The OpenSearch `_source` of `event`; empty strings and unset times are left out.

    Raises DocumentError when the event cannot be a document at all (no usable event_id,
    a timestamp outside 0001-9999).
    """
    return placed_document(event, prefix="")[1]


def placed_document(
    event: event_pb2.EnrichedEvent, *, prefix: str, window: DatedWindow = DEFAULT_WINDOW
) -> tuple[str, dict[str, Any]]:
    """`index_name` and `to_document` of `event` at once (they share its timestamps)."""
    # Written out field by field: this runs once per event and is the indexer's hot path.
    client_s: int | None = None
    received_s: int | None = None
    inner = event.event
    event_id = inner.event_id
    if not event_id:
        raise DocumentError("event_id is empty")
    if len(event_id) > MAX_ID_BYTES // 4:  # only then can its UTF-8 form be too long
        size = len(event_id.encode())
        if size > MAX_ID_BYTES:
            raise DocumentError(f"event_id is {size} bytes, longer than {MAX_ID_BYTES}")
    doc: dict[str, Any] = {"event_id": event_id}
    if value := inner.session_id:
        doc["session_id"] = value
    if value := inner.user_id:
        doc["user_id"] = value
    if value := inner.event_name:
        doc["event_name"] = value
    if value := inner.app_version:
        doc["app_version"] = value
    if value := inner.device_os:
        doc["device_os"] = value
    if inner.HasField("client_timestamp"):
        stamp = inner.client_timestamp
        doc["client_timestamp"] = _time_text(stamp, "client_timestamp")
        client_s = stamp.seconds
    if metadata := inner.metadata:
        # Iterating the map's keys runs in C; dict(map) and items() go through Python.
        doc["metadata"] = {key: metadata[key] for key in metadata}
    if value := event.os_name:
        doc["os_name"] = value
    if value := event.os_version:
        doc["os_version"] = value
    if value := event.event_message:
        doc["event_message"] = value
    if value := event.app_id:
        doc["app_id"] = value
    if value := event.request_id:
        doc["request_id"] = value
    if event.HasField("received_at"):
        stamp = event.received_at
        doc["ingestion_timestamp"] = _time_text(stamp, "received_at")
        received_s = stamp.seconds
    if event.HasField("enriched_at"):
        doc["enriched_at"] = _time_text(event.enriched_at, "enriched_at")
    if event.HasField("corrected_timestamp"):
        doc["corrected_timestamp"] = _time_text(event.corrected_timestamp, "corrected_timestamp")
    doc["clock_skew_ms"] = event.clock_skew_ms
    # A status this build does not know (a newer enricher) is kept as its number.
    status = event.clock_status
    doc["clock_status"] = _CLOCK_STATUS_NAMES.get(status) or str(status)
    geo = event.geo
    if value := geo.country_code:
        doc["geo_country"] = value
    if value := geo.city:
        doc["geo_city"] = value
    if client_s is None:
        return prefix + UNDATED, doc
    return _dated_index(client_s, received_s, prefix, window), doc


_SECOND = timedelta(seconds=1)


@functools.lru_cache(maxsize=16384)
def _seconds_nanos(value: str) -> tuple[int, int]:
    """(seconds, nanos) of what `_time_text` writes; anything else the slow, general way.

    Cached: the events of one batch share received_at, and pages repeat across calls.
    """
    size = len(value)
    # YYYY-MM-DDTHH:MM:SS[.f{3,6,9}]Z
    if value[-1:] == "Z" and (size == 20 or (size in (24, 27, 30) and value[19] == ".")):
        try:
            seconds = (datetime.fromisoformat(value[:19]) - _EPOCH) // _SECOND
            nanos = int(value[20:-1].ljust(9, "0")) if size > 20 else 0
        except ValueError:
            pass
        else:
            return seconds, nanos
    stamp = Timestamp()
    stamp.FromJsonString(value)
    return stamp.seconds, stamp.nanos


def _time_fields(text: Any) -> dict[str, int]:
    # A Timestamp as constructor keywords: protobuf builds a nested message from a dict
    # several times faster than it copies a Timestamp object in.
    seconds, nanos = _seconds_nanos(text if type(text) is str else str(text))
    return {"seconds": seconds, "nanos": nanos}


_CLOCK_STATUS = {value.name: value.number for value in event_pb2.ClockStatus.DESCRIPTOR.values}


def _clock_status(value: Any) -> int:
    text = str(value or "")
    number = _CLOCK_STATUS.get(text)
    if number is not None:
        return number
    return int(text) if text.isdigit() else 0


def from_document(source: Mapping[str, Any]) -> event_pb2.EnrichedEvent:
    """The EnrichedEvent a document's `_source` was built from (inverse of `to_document`)."""
    return event_pb2.EnrichedEvent(**event_fields(source))


def event_fields(source: Mapping[str, Any]) -> dict[str, Any]:
    """`from_document` as the EnrichedEvent's constructor keywords (nested as dicts), so a
    reply can build many events in one constructor call."""
    get = source.get
    inner: dict[str, Any] = {}
    for name in _EVENT_STRINGS:
        value = get(name)
        if value is not None:
            inner[name] = value if type(value) is str else str(value)
    value = get("client_timestamp")
    if value is not None:
        inner["client_timestamp"] = _time_fields(value)
    metadata = get("metadata")
    if isinstance(metadata, Mapping):
        if all(type(key) is str and type(item) is str for key, item in metadata.items()):
            inner["metadata"] = metadata
        else:
            inner["metadata"] = {str(key): str(item) for key, item in metadata.items()}
    outer: dict[str, Any] = {"event": inner}
    for name in _ENRICHED_STRINGS:
        value = get(name)
        if value is not None:
            outer[name] = value if type(value) is str else str(value)
    for name, target in _ENRICHED_TIMES.items():
        value = get(name)
        if value is not None:
            outer[target] = _time_fields(value)
    outer["clock_skew_ms"] = int(get("clock_skew_ms", 0))
    outer["clock_status"] = _clock_status(get("clock_status"))
    country, city = get("geo_country"), get("geo_city")
    if country is not None or city is not None:
        outer["geo"] = {"country_code": str(country or ""), "city": str(city or "")}
    return outer
