"""pipeline.rfc3339: the UTC texts of the indexer's documents and the gateway's answers, and
the parser's year 0000 (the rest of the parser is tested with the gateway's validation)."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import rfc3339
from pipeline.rfc3339 import MAX_SECONDS, MIN_SECONDS, format_utc, out_of_range, parse

seconds_in_range = st.integers(min_value=MIN_SECONDS, max_value=MAX_SECONDS)
nanos_of_each_width = st.one_of(
    st.integers(min_value=0, max_value=999_999_999),
    st.integers(min_value=0, max_value=999).map(lambda ms: ms * 1_000_000),
    st.integers(min_value=0, max_value=999_999).map(lambda us: us * 1000),
)


@settings(max_examples=1000)
@given(seconds=seconds_in_range, nanos=nanos_of_each_width)
def test_writes_what_protobuf_json_writes(seconds: int, nanos: int) -> None:
    assert format_utc(seconds, nanos) == Timestamp(seconds=seconds, nanos=nanos).ToJsonString()


def test_edges_of_the_timestamp_range() -> None:
    assert format_utc(MIN_SECONDS, 0) == "0001-01-01T00:00:00Z"
    assert format_utc(MAX_SECONDS, 999_999_999) == "9999-12-31T23:59:59.999999999Z"
    assert format_utc(-1, 500_000_000) == "1969-12-31T23:59:59.500Z"
    assert format_utc(0, 1000) == "1970-01-01T00:00:00.000001Z"
    assert format_utc(951_782_400, 1) == "2000-02-29T00:00:00.000000001Z"


def test_the_minute_cache_stays_bounded_and_right_when_it_overflows() -> None:
    rfc3339._MINUTE_TEXTS.clear()
    start = 1_790_000_000 - 1_790_000_000 % 60
    minutes = rfc3339._MINUTE_TEXTS_MAX + 100
    for n in range(minutes):
        seconds = start + n * 60 + n % 60
        assert format_utc(seconds, 0) == Timestamp(seconds=seconds).ToJsonString()
        assert len(rfc3339._MINUTE_TEXTS) <= rfc3339._MINUTE_TEXTS_MAX
    # A minute seen before the cache was cleared is written again, correctly.
    assert (
        format_utc(start + 59, 7_000_000)
        == Timestamp(seconds=start + 59, nanos=7_000_000).ToJsonString()
    )


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("0000-12-31T23:30:00-01:00", (MIN_SECONDS + 1800, 0)),  # 0001-01-01T00:30:00Z
        ("0000-12-31T23:00:00-01:00", (MIN_SECONDS, 0)),  # the first instant in range
        ("0000-12-31T20:00:00.5-04:00", (MIN_SECONDS, 500_000_000)),
        ("0000-12-31t23:59:59.000000001-00:01", (MIN_SECONDS + 59, 1)),
    ],
)
def test_a_year_0000_date_time_that_is_0001_in_utc_is_read(
    text: str, instant: tuple[int, int]
) -> None:
    assert parse(text) == instant
    assert not out_of_range(text)
    assert format_utc(*instant).startswith("0001-01-01T00:")


@pytest.mark.parametrize(
    "text",
    [
        "0000-12-31T23:30:00+01:00",
        "0000-12-31T22:59:59.999999999-01:00",  # the last instant before the range
        "0000-12-31T23:59:59.999999999Z",
        "0000-12-31T23:59:60Z",  # the leap second ending 0000-12-31 UTC
        "0000-01-01T00:00:00-23:59",
        "0000-02-29T12:00:00Z",  # year 0000 is a leap year
    ],
)
def test_a_year_0000_date_time_before_0001_in_utc_is_out_of_range(text: str) -> None:
    assert parse(text) is None
    assert out_of_range(text)


@pytest.mark.parametrize("date", ["1969-12-31", "2026-11-27", "2026-02-30"])
def test_a_date_seen_lately_is_not_worked_out_again(
    date: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1969-12-31 is day -1 since the epoch; an impossible date is remembered as such too.
    text = f"{date}T10:00:00+02:00"
    first = parse(text)
    monkeypatch.setattr(rfc3339, "_days_from_civil", lambda *_: pytest.fail("worked out again"))
    monkeypatch.setattr(rfc3339, "_leap", lambda *_: pytest.fail("worked out again"))

    assert parse(text) == first
