"""pipeline.rfc3339: the UTC texts of the indexer's documents and the gateway's answers."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import rfc3339
from pipeline.rfc3339 import MAX_SECONDS, MIN_SECONDS, format_utc

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
