"""event_message: one text per event that makes free-text search useful."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_MAX_CHARS = 4096


def event_message(
    event_name: str, metadata: Mapping[str, str], *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """The event name followed by "key value" for each metadata entry, in key order.

    Cut to `max_chars` characters, so a large metadata map cannot make a huge text.
    """
    if not metadata:
        return event_name[:max_chars]
    parts = [event_name] if event_name else []
    for key in sorted(metadata):
        parts.append(key)
        parts.append(metadata[key])
    return " ".join(parts)[:max_chars]
