"""RFC 3339 UTC texts written the way protobuf's JSON mapping writes them.

Used wherever a time leaves the pipeline as text: the indexer's documents (several per
event, so this is on its hot path) and the gateway's JSON answers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62135596800
MAX_SECONDS = 253402300799

_EPOCH = datetime(1970, 1, 1)  # naive: isoformat() without an offset
_SECOND_TEXTS = tuple(f"{second:02d}" for second in range(60))
# Whole milliseconds, the common case (the Swift client's precision); 0 is no fraction at all.
_MILLI_TEXTS = ("Z", *(f".{milli:03d}Z" for milli in range(1, 1000)))
# "YYYY-MM-DDTHH:MM:" by minute since the epoch. Events come in bursts of nearby times,
# so most lookups hit; cleared whole when full, which keeps it bounded and cheap.
_MINUTE_TEXTS: dict[int, str] = {}
_MINUTE_TEXTS_MAX = 16384


def fraction_z(nanos: int) -> str:
    """'Z' after 0, 3, 6 or 9 fraction digits: the fewest of those that keep every digit.

    `nanos` is in [0, 999_999_999], as in a valid Timestamp.
    """
    if nanos % 1_000_000 == 0:
        return _MILLI_TEXTS[nanos // 1_000_000]
    if nanos % 1000 == 0:
        return f".{nanos // 1000:06d}Z"
    return f".{nanos:09d}Z"


def format_utc(seconds: int, nanos: int) -> str:
    """`seconds` since the epoch plus `nanos` as `YYYY-MM-DDTHH:MM:SS[.fff[fff[fff]]]Z`.

    Both must be in Timestamp's range (MIN_SECONDS..MAX_SECONDS, 0..999_999_999).
    """
    minute, second = divmod(seconds, 60)
    head = _MINUTE_TEXTS.get(minute)
    if head is None:
        head = (_EPOCH + timedelta(minutes=minute)).isoformat(timespec="minutes") + ":"
        if len(_MINUTE_TEXTS) >= _MINUTE_TEXTS_MAX:
            _MINUTE_TEXTS.clear()
        _MINUTE_TEXTS[minute] = head
    return head + _SECOND_TEXTS[second] + fraction_z(nanos)
