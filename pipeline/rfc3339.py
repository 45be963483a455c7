"""RFC 3339 date-times to (seconds, nanos) since the epoch, and UTC texts back.

`parse` reads an RFC 3339 date-time strictly and without datetime: the gateway reads every
client timestamp with it (its hot path), and tpipe its --since and --until, so that both take
the same texts. `format_utc` writes UTC texts the way protobuf's JSON mapping writes them,
wherever a time leaves the pipeline as text: the indexer's documents (several per event, so
this is on its hot path too) and the gateway's JSON answers.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS = -62135596800
MAX_SECONDS = 253402300799

# What is wrong with a date-time that `out_of_range` finds, after the name of its field.
OUT_OF_RANGE = "is out of range: it lies outside the years 0001-9999 in UTC"

_PATTERN = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
# The nanoseconds of a leap second (`23:59:60` UTC), kept as the last instant of 23:59:59.
LEAP_SECOND_NANOS = 999_999_999
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# Days since the epoch of recently seen dates ("YYYY-MM-DD"), or None for impossible ones.
_DAYS_CACHE: dict[str, int | None] = {}
_DAYS_CACHE_SIZE = 4096


def _days(text: str, year: str, month: str, day: str) -> int | None:
    key = text[:10]
    try:
        return _DAYS_CACHE[key]
    except KeyError:  # not seen lately (a miss is rare: events come in bursts of nearby days)
        pass
    y, mo, d = int(year), int(month), int(day)
    # Year 0000 is a date as any other (a leap year, proleptic Gregorian): whether the instant
    # is in Timestamp's range is judged in UTC, where an offset may bring it into 0001.
    valid = 1 <= mo <= 12 and 1 <= d <= (29 if mo == 2 and _leap(y) else _DAYS_IN_MONTH[mo])
    days = _days_from_civil(y, mo, d) if valid else None
    if len(_DAYS_CACHE) >= _DAYS_CACHE_SIZE:
        _DAYS_CACHE.clear()
    _DAYS_CACHE[key] = days
    return days


# Seconds since the epoch of recently seen minutes ("YYYY-MM-DDTHH:MM") of valid UTC date-times.
_MINUTES_CACHE: dict[str, int] = {}
_MINUTES_CACHE_SIZE = 4096
# ":SS" to SS, and "fff" (milliseconds) to nanoseconds: a lookup checks and converts at once.
_SECONDS = {f":{s:02d}": s for s in range(60)}
_MILLIS_NANOS = {f"{ms:03d}": ms * 1_000_000 for ms in range(1000)}


def parse(text: str) -> tuple[int, int] | None:
    """(seconds, nanos) of an RFC 3339 date-time, or None when it is not one or out of range.
    A leap second (`23:59:60` UTC) is 23:59:59.999999999 of its day.

    The clients' usual shapes, `YYYY-MM-DDTHH:MM:SSZ` and `YYYY-MM-DDTHH:MM:SS.fffZ`,
    in a minute seen before, take lookups only; anything else takes the full parse.
    """
    size = len(text)
    if size == 24 and text[23] == "Z" and text[19] == ".":
        nanos = _MILLIS_NANOS.get(text[20:23])
    elif size == 20 and text[19] == "Z":
        nanos = 0
    else:
        return parse_full(text)
    minute = _MINUTES_CACHE.get(text[:16])
    second = _SECONDS.get(text[16:19])
    if minute is None or second is None or nanos is None:
        return parse_full(text)
    # A cached minute is part of a valid UTC date-time, so any second of it is in range.
    return minute + second, nanos


def parse_full(text: str) -> tuple[int, int] | None:
    """`parse` without the shortcut: reads every character of any RFC 3339 date-time."""
    instant = _instant(text)
    if instant is None or not MIN_SECONDS <= instant[0] <= MAX_SECONDS:
        return None
    if text[-1] in "Zz":
        if len(_MINUTES_CACHE) >= _MINUTES_CACHE_SIZE:
            _MINUTES_CACHE.clear()
        _MINUTES_CACHE[text[:16]] = instant[0] - instant[0] % 60
    return instant


def out_of_range(text: str) -> bool:
    """Whether `text` is an RFC 3339 date-time whose instant lies outside the years 0001-9999
    once in UTC (`9999-12-31T23:59:59-01:00`): `parse` gives None for it as for text that is
    no date-time, and this tells the two apart for the message."""
    instant = _instant(text)
    return instant is not None and not MIN_SECONDS <= instant[0] <= MAX_SECONDS


def _instant(text: str) -> tuple[int, int] | None:
    """(seconds, nanos) of an RFC 3339 date-time, in or out of Timestamp's range, or None
    when `text` is not one."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
    days = _days(text, year, month, day)
    h, mi, s = int(hour), int(minute), int(second)
    if days is None or h > 23 or mi > 59 or s > 60:
        return None
    # A leap second (`23:59:60Z`, or the same instant at another offset: RFC 3339 section
    # 5.7) has no place on the epoch's time line: it is kept as the last instant of the
    # day's last second, in order before the next day. `:60` of any other UTC minute is no
    # time at all.
    leap = s == 60
    if leap:
        s = 59
    seconds = days * 86400 + h * 3600 + mi * 60 + s
    if zulu is None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return None
        offset = oh * 3600 + om * 60
        seconds -= offset if sign == "+" else -offset
    if leap:
        return (seconds, LEAP_SECOND_NANOS) if seconds % 86400 == 86399 else None
    # Any number of digits (RFC 3339 sets no bound); past nanoseconds they are cut off.
    nanos = int(frac[:9].ljust(9, "0")) if frac else 0
    return seconds, nanos


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
