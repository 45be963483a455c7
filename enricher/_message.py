"""event_message: one text per event that makes free-text search useful."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_MAX_CHARS = 4096


def event_message(
    event_name: str, metadata: Mapping[str, str], *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """The event name followed by "key value" for each metadata entry, in key order.

    Cut to at most `max_chars` characters (`cut_at_word`), so a large metadata map cannot
    make a huge text: search finds no word past the cut.
    """
    return cut_at_word(whole_event_message(event_name, metadata), max_chars)


def whole_event_message(event_name: str, metadata: Mapping[str, str]) -> str:
    """`event_message` before it is cut: longer than `max_chars` means it will be."""
    if not metadata:
        return event_name
    parts = [event_name] if event_name else []
    for key in sorted(metadata):
        parts.append(key)
        parts.append(metadata[key])
    return " ".join(parts)


def cut_at_word(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters, at a word's end.

    A word the cut falls in is left out whole, with the whitespace before it: a piece
    of it (`E4` of `E42`) would be a word search finds where it should not. The text's
    first word is the exception (nothing would be left): one that long is cut where the
    limit falls.
    """
    if len(text) <= max_chars:
        return text
    kept = text[:max_chars]
    if not kept or kept[-1].isspace() or text[max_chars].isspace():
        return kept.rstrip()
    piece = kept.rsplit(maxsplit=1)[-1]  # the word the cut falls in, as far as it is kept
    before = kept[: len(kept) - len(piece)].rstrip()
    return before or kept  # no word before it (whitespace alone, at most): cut in it
