"""`--since`/`--until` values: RFC 3339 date-times, or a relative age like 90s, 15m, 1h, 2d, 1w."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from tpipe.errors import UsageError

_RELATIVE = re.compile(r"([0-9]+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, *, now: datetime) -> datetime:
    """The moment `text` names: `now`, an age before `now` (`2d`), or an RFC 3339 date-time.

    An RFC 3339 value must carry its offset (`Z` or `+02:00`); a bare local time is refused
    rather than guessed. A lowercase `t` or `z` is taken, as RFC 3339 and the gateway take it.
    """
    value = text.strip()
    if value == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        try:
            return now - timedelta(seconds=amount * _UNIT_S[unit])
        except OverflowError:
            raise UsageError(f"{text!r} reaches before the year 1") from None
    if value.endswith("z"):  # fromisoformat takes a lowercase "t" but only "Z"
        value = value[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{text!r} is neither an RFC 3339 date-time nor an age like 30m, 1h or 2d"
        ) from None
    if moment.tzinfo is None or "T" not in value.upper():
        raise UsageError(
            f"{text!r}: give a full date-time with its offset, e.g. 2026-01-31T12:00:00Z"
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise UsageError(f"{text!r} is outside the years 1 to 9999 in UTC") from None


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
