"""What the people commands print: event tables, JSON lines, counts with text bars."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict, SerializeToJsonError
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, query_service_pb2

from tpipe._timeparse import rfc3339

BAR = "█"
BAR_WIDTH = 40
MAX_CELL = 32

# (header, getter) of the table columns, left to right.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("TIME", "time"),
    ("EVENT", "event_name"),
    ("USER", "user_id"),
    ("SESSION", "session_id"),
    ("APP", "app_id"),
    ("VERSION", "app_version"),
    ("OS", "device_os"),
    ("CC", "country"),
    ("EVENT ID", "event_id"),
)


def event_json(event: event_pb2.EnrichedEvent) -> bytes:
    """One event as a JSON object (proto field names, RFC 3339 times), without a newline.

    A time outside the years 1-9999, which the JSON mapping cannot write (a producer that
    skipped validation), is written as its {"seconds", "nanos"} instead of failing.
    """
    try:
        data = MessageToDict(event, preserving_proto_field_name=True)
    except SerializeToJsonError:
        data = _with_raw_times(event)
    return orjson.dumps(data)


def _with_raw_times(event: event_pb2.EnrichedEvent) -> dict[str, Any]:
    copy = event_pb2.EnrichedEvent()
    copy.CopyFrom(event)
    raw: list[tuple[str | None, str, dict[str, int]]] = []
    holders: tuple[tuple[Message, str | None], ...] = ((copy.event, "event"), (copy, None))
    for holder, path in holders:
        for field in holder.DESCRIPTOR.fields:
            if field.message_type is not Timestamp.DESCRIPTOR or not holder.HasField(field.name):
                continue
            stamp = getattr(holder, field.name)
            try:
                stamp.ToJsonString()
            except ValueError:
                raw.append((path, field.name, {"seconds": stamp.seconds, "nanos": stamp.nanos}))
                holder.ClearField(field.name)
    data = MessageToDict(copy, preserving_proto_field_name=True)
    for path, name, value in raw:
        (data.setdefault(path, {}) if path else data)[name] = value
    return data


def _cell(event: event_pb2.EnrichedEvent, key: str) -> str:
    base = event.event
    if key == "time":
        stamp = event.corrected_timestamp if event.HasField("corrected_timestamp") else None
        if stamp is None and base.HasField("client_timestamp"):
            stamp = base.client_timestamp
        return rfc3339(stamp) if stamp is not None else ""
    if key == "app_id":
        return event.app_id
    if key == "country":
        return event.geo.country_code
    value: str = getattr(base, key)
    return value


def _char_width(char: str) -> int:
    """Columns a terminal gives `char`: 2 for East Asian wide and fullwidth characters, 0 for
    a combining mark (it sits on the character before), else 1."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal, which `len` miscounts for `ユーザー` (8, not 4)."""
    return sum(_char_width(char) for char in text)


def _pad(text: str, width: int) -> str:
    """`text` with spaces after it to fill `width` columns (ljust counts characters)."""
    return text + " " * (width - display_width(text))


def _clip(text: str, width: int) -> str:
    """`text` in at most `width` columns: cut with … when it takes more."""
    if display_width(text) <= width:
        return text
    kept, used = [], 1  # the … takes one column
    for char in text:
        used += _char_width(char)
        if used > width:
            break
        kept.append(char)
    return "".join(kept) + "…"


def table(events: Sequence[event_pb2.EnrichedEvent]) -> list[str]:
    """Events as an aligned text table: a header line, then one line per event.

    Long cells are clipped (with …) except the event id, which stays whole so it can be
    copied; columns empty in every row are left out. Widths are terminal columns, so wide
    characters (`ユーザー`) keep the columns aligned.
    """
    rows = [[_cell(event, key) for _, key in _COLUMNS] for event in events]
    keep = [
        i
        for i, (_, key) in enumerate(_COLUMNS)
        if key in ("time", "event_name", "event_id") or any(row[i] for row in rows)
    ]
    header = [_COLUMNS[i][0] for i in keep]
    body = [
        [row[i] if _COLUMNS[i][1] == "event_id" else _clip(row[i], MAX_CELL) for i in keep]
        for row in rows
    ]
    widths = [max(display_width(line[j]) for line in [header, *body]) for j in range(len(keep))]
    return [
        "  ".join(_pad(cell, widths[j]) for j, cell in enumerate(line)).rstrip()
        for line in [header, *body]
    ]


def bars(items: Iterable[tuple[str, int]], *, width: int = BAR_WIDTH) -> list[str]:
    """`label  count  ████` lines, bars scaled to the largest count; a count above 0 shows a bar."""
    pairs = list(items)
    if not pairs:
        return []
    top = max(count for _, count in pairs) or 1
    label_w = max(display_width(label) for label, _ in pairs)
    count_w = max(len(str(count)) for _, count in pairs)
    lines = []
    for label, count in pairs:
        size = round(count / top * width)
        if count and not size:
            size = 1
        lines.append(f"{_pad(label, label_w)}  {str(count).rjust(count_w)}  {BAR * size}".rstrip())
    return lines


def aggregate(
    response: query_service_pb2.AggregateEventsResponse, *, by: str, interval: str
) -> list[str]:
    """The aggregate answer: total, counts by field, histogram."""
    lines = [f"total: {response.total_count}"]
    if by:
        lines += ["", f"by {by}:"]
        counts = [(term.value or "(empty)", term.count) for term in response.counts]
        lines += ["  " + line for line in bars(counts)] or ["  (none)"]
        if response.count_error_upper_bound:
            lines.append(
                f"  (approximate: each count may be short by up to"
                f" {response.count_error_upper_bound})"
            )
    if interval:
        lines += ["", f"per {interval}:"]
        buckets = [(rfc3339(b.start_time), b.count) for b in response.histogram]
        lines += ["  " + line for line in bars(buckets)] or ["  (none)"]
    return lines


def aggregate_json(response: query_service_pb2.AggregateEventsResponse) -> bytes:
    """The aggregate answer as one JSON object."""
    return orjson.dumps(
        MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )
