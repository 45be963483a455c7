"""event_message: one text per event that makes free-text search useful."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_MAX_CHARS = 4096


def event_message(
    event_name: str, metadata: Mapping[str, str], *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """The event name followed by "key value" for each metadata entry, in key order.

    Cut to `max_chars` characters, so a large metadata map cannot make a huge text
    (`event_message_chars` says whether it was: search finds no word past the cut).
    """
    if not metadata:
        return event_name[:max_chars]
    parts = [event_name] if event_name else []
    for key in sorted(metadata):
        parts.append(key)
        parts.append(metadata[key])
    return " ".join(parts)[:max_chars]


def event_message_chars(event_name: str, metadata: Mapping[str, str]) -> int:
    """How many characters `event_message` has before it is cut, counted without making it.

    More than `max_chars` means the text was cut. Only asked for a text as long as
    `max_chars` (that of every cut one), so the common event pays nothing for it.
    """
    if not metadata:
        return len(event_name)
    words = 2 * len(metadata) + (1 if event_name else 0)
    chars = len(event_name) + sum(map(len, metadata)) + sum(map(len, metadata.values()))
    return chars + words - 1  # a space between each two words
