"""--since/--until values: ages, RFC 3339, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tpipe._timeparse import parse_time, rfc3339, to_timestamp
from tpipe.errors import UsageError

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(days=7)),
        ("now", timedelta(0)),
    ],
)
def test_ages_count_back_from_now(text: str, age: timedelta) -> None:
    assert parse_time(text, now=NOW) == to_timestamp(NOW - age)


def test_rfc3339_with_offset_is_converted_to_utc() -> None:
    got = parse_time("2026-01-31T14:00:00+02:00", now=NOW)
    assert got == to_timestamp(datetime(2026, 1, 31, 12, 0, tzinfo=UTC))
    assert parse_time("2026-01-31T12:00:00.250Z", now=NOW).nanos == 250_000_000


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-31T12:00:00z",
        "2026-01-31t12:00:00Z",
        "2026-01-31t12:00:00.000z",
        " 2026-01-31T12:00:00z ",
    ],
)
def test_rfc3339_takes_a_lowercase_t_and_z(text: str) -> None:
    """RFC 3339 (section 5.6) allows them, and the gateway's start/end take them."""
    assert parse_time(text, now=NOW) == to_timestamp(datetime(2026, 1, 31, 12, 0, tzinfo=UTC))


# 2026-12-31T23:59:59Z: the gateway keeps a leap second as the last instant of that second.
LEAP_SECOND = Timestamp(seconds=1_798_761_599, nanos=999_999_999)


@pytest.mark.parametrize("text", ["2026-12-31T23:59:60Z", "2026-12-31T18:59:60-05:00"])
def test_a_leap_second_is_the_instant_the_gateway_stores_for_it(text: str) -> None:
    assert parse_time(text, now=NOW) == LEAP_SECOND


def test_a_fraction_is_kept_to_the_nanosecond_as_the_gateway_keeps_it() -> None:
    got = parse_time("2026-01-31T12:00:00.1234567891Z", now=NOW)

    assert got == Timestamp(seconds=1_769_860_800, nanos=123_456_789)


@pytest.mark.parametrize(
    "text",
    [
        "20261127T183000Z",  # ISO 8601's basic format
        "2026-11-27T18:30:00+02",  # an offset without its minutes
        "2026-11-27T18:30+02:00",  # no seconds
        "2026-11-27T18Z",
        "2026-W48-5T18:30:00Z",  # a week date
        "2026-11-27T18:30:00.Z",  # a point without digits
        "2026-11-27T18:30:00,5Z",  # a decimal comma
    ],
)
def test_iso_8601_forms_the_gateway_refuses_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="is neither an RFC 3339 date-time nor an age"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "1y",
        "-1h",
        "2026-01-31T12:00:00",
        "2026-01-31",
        "1.5h",
        "",
        "99999999999d",  # past what a timedelta holds
        "3000000w",  # before the year 1
        "0001-01-01T00:00:00+01:00",  # before the year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after 9999 in UTC
    ],
)
def test_other_values_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text, now=NOW)


def test_a_year_0000_date_time_is_judged_in_utc_as_the_gateway_judges_it() -> None:
    got = parse_time("0000-12-31T23:30:00-01:00", now=NOW)
    assert got.ToJsonString() == "0001-01-01T00:30:00Z"

    with pytest.raises(UsageError, match="is outside the years 1 to 9999 in UTC"):
        parse_time("0000-12-31T23:30:00+01:00", now=NOW)


def test_timestamps_round_trip_as_rfc3339_utc() -> None:
    moment = datetime(2026, 1, 31, 13, 0, 0, 123000, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(to_timestamp(moment)) == "2026-01-31T12:00:00.123Z"
