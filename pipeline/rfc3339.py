"""The end of an RFC 3339 UTC text, written the way protobuf's JSON mapping writes it."""

from __future__ import annotations


def fraction_z(nanos: int) -> str:
    """'Z' after 0, 3, 6 or 9 fraction digits: the fewest of those that keep every digit."""
    if not nanos:
        return "Z"
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f".{nanos // 1000:06d}Z"
    return f".{nanos:09d}Z"
