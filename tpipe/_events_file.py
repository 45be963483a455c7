"""Reading events to send: a JSON array, a {"sent_at", "events"} object, one event object,
or NDJSON."""

from __future__ import annotations

import codecs
from typing import Any

import orjson

from tpipe.errors import UsageError

EXPECTED = "expected a JSON array or one event per line"


def parse_events(data: bytes, *, source: str) -> list[Any]:
    """The events in `data`: the items of a JSON array (or of an object's "events"), one
    event object, or one JSON value per non-empty line. Items are passed on as they are: the
    gateway judges them. A leading UTF-8 byte order mark is skipped, as the gateway does.
    """
    data = data.removeprefix(codecs.BOM_UTF8)
    text = data.lstrip()
    if not text:
        raise UsageError(f"{source}: no events (the input is empty)")
    if text[:1] in (b"[", b"{") and not _ndjson(text):
        try:
            whole = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise _not_json(source, err.lineno, err) from None
        if isinstance(whole, dict) and isinstance(whole.get("events"), list):
            whole = whole["events"]
        if not isinstance(whole, list):
            return [whole]  # one event object
        if not whole:
            raise UsageError(f"{source}: no events (an empty list)")
        return list(whole)
    events: list[Any] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            events.append(orjson.loads(raw))
        except orjson.JSONDecodeError as err:
            raise _not_json(source, number, err) from None
    if not events:
        raise UsageError(f"{source}: no events")
    return events


def _ndjson(text: bytes) -> bool:
    """True for one event per line rather than one JSON document (an array, or an object
    spread over lines): the first line is a whole JSON object and more lines follow, or, the
    first one being broken, the next one is (the error is then told on the first line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith(b"{"):
        return False
    return _an_object(lines[0]) or (_an_object(lines[1]) and not _parses(text))


def _an_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _parses(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _not_json(source: str, line: int, err: orjson.JSONDecodeError) -> UsageError:
    """The error for a line that does not parse, its position told once: `<source>:<line>`
    and the column in that line."""
    return UsageError(f"{source}:{line}: not JSON ({err.msg} at column {err.colno}); {EXPECTED}")
