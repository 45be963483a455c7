"""GET /v1/events parameters -> QueryService requests: integers and times."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from gateway._query import aggregate_request, events_request
from gateway.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "size"),
    [("25", 25), ("+25", 25), ("-1", -1), ("3000000000", 2**31 - 1), ("-3000000000", -(2**31))],
)
def test_page_size_is_an_ascii_integer_clamped_to_int32(text: str, size: int) -> None:
    # Past int32 is clamped (the query service then clamps to its maximum, or refuses < 0).
    assert events_request(QueryParams({"page_size": text})).page_size == size


@pytest.mark.parametrize("text", ["ten", "1_0", "\u0661\u0660", "1.5", " 10", "0x10", "1e3"])
def test_anything_but_ascii_digits_is_not_an_integer(text: str) -> None:
    with pytest.raises(InvalidRequest, match="page_size must be an integer"):
        events_request(QueryParams({"page_size": text}))
    with pytest.raises(InvalidRequest, match="limit must be an integer"):
        aggregate_request(QueryParams({"group_by": "event_name", "limit": text}))


def test_an_unencoded_plus_in_a_time_gets_a_hint() -> None:
    # "?start=2024-01-01T00:00:00+02:00" arrives with a space where the + was.
    params = QueryParams("start=2024-01-01T00:00:00+02:00")

    with pytest.raises(InvalidRequest, match=r"must be sent as %2B"):
        events_request(params)
    encoded = events_request(QueryParams("start=2024-01-01T00:00:00%2B02:00"))
    assert encoded.filter.start_time.seconds == 1704060000
