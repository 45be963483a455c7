"""`--since`/`--until` values: RFC 3339 date-times, or a relative age like 90s, 15m, 1h, 2d, 1w."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

import pipeline.rfc3339
from tpipe.errors import UsageError

_RELATIVE = re.compile(r"([0-9]+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_time(text: str, *, now: datetime) -> Timestamp:
    """The moment `text` names: `now`, an age before `now` (`2d`), or an RFC 3339 date-time.

    A date-time is read by `pipeline.rfc3339.parse`, as the gateway reads a client_timestamp
    and a query's start and end, so tpipe takes exactly what the gateway takes: the offset
    (`Z` or `+02:00`) is required, a bare local time being refused rather than guessed; a
    lowercase `t` or `z` is taken; a leap second (`23:59:60` UTC) is 23:59:59.999999999 of its
    day; a fraction is cut at nanoseconds. ISO 8601's other forms (`20261127T183000Z`,
    `2026-11-27T18:30+02`) are refused, as the gateway refuses them.
    """
    value = text.strip()
    if value == "now":
        return to_timestamp(now)
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        try:
            return to_timestamp(now - timedelta(seconds=amount * _UNIT_S[unit]))
        except OverflowError:
            raise UsageError(f"{text!r} reaches before the year 1") from None
    parsed = pipeline.rfc3339.parse(value)
    if parsed is not None:
        return Timestamp(seconds=parsed[0], nanos=parsed[1])
    if pipeline.rfc3339.out_of_range(value):
        raise UsageError(f"{text!r} is outside the years 1 to 9999 in UTC")
    if _DATE.fullmatch(value) or pipeline.rfc3339.parse(value + "Z") is not None:
        # A date alone, or a date-time without its offset: the rest is right.
        raise UsageError(
            f"{text!r}: give a full date-time with its offset, e.g. 2026-01-31T12:00:00Z"
        )
    raise UsageError(f"{text!r} is neither an RFC 3339 date-time nor an age like 30m, 1h or 2d")


def to_timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def rfc3339(stamp: Timestamp) -> str:
    """A Timestamp as RFC 3339 in UTC with milliseconds (`2026-01-31T12:00:00.000Z`);
    one outside the years 1-9999 (a producer that skipped validation) as its raw value."""
    try:
        moment = stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return f"invalid({stamp.seconds}s,{stamp.nanos}ns)"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
