"""Reading events to send: a JSON array, a {"sent_at", "events"} object, or NDJSON."""

from __future__ import annotations

from typing import Any

import orjson

from tpipe.errors import UsageError


def parse_events(data: bytes, *, source: str) -> list[Any]:
    """The events in `data`: the items of a JSON array (or of an object's "events"), or one
    JSON value per non-empty line. Items are passed on as they are: the gateway judges them.
    """
    text = data.lstrip()
    if not text:
        raise UsageError(f"{source}: no events (the input is empty)")
    if text[:1] in (b"[", b"{"):
        try:
            whole = orjson.loads(text)
        except orjson.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and isinstance(whole.get("events"), list):
            whole = whole["events"]
        if isinstance(whole, list):
            if not whole:
                raise UsageError(f"{source}: no events (an empty list)")
            return list(whole)
        # Otherwise: one event object per line (a single object is a one-line file).
    events: list[Any] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            events.append(orjson.loads(raw))
        except orjson.JSONDecodeError as err:
            raise UsageError(
                f"{source}:{number}: not JSON ({err}); expected a JSON array or one event per line"
            ) from None
    if not events:
        raise UsageError(f"{source}: no events")
    return events
