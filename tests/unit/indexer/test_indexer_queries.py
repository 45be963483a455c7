"""Query building, page tokens and response mapping, without a server."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from telemetry.v1 import query_service_pb2 as qs

from indexer import paging, queries
from indexer.errors import InvalidArgumentError


def _filter(**fields: Any) -> qs.EventFilter:
    return qs.EventFilter(**fields)


@pytest.mark.parametrize(
    ("requested", "used", "first_fetch"),
    [(0, 50, 50), (1, 1, 1), (51, 51, 50), (1000, 1000, 50), (5000, 1000, 50)],
)
def test_page_size(requested: int, used: int, first_fetch: int) -> None:
    body, size = queries.search_body(qs.QueryEventsRequest(page_size=requested))
    assert size == used
    # The first fetch: at most the default page, and one more, to know whether more follow.
    assert body["size"] == first_fetch + 1


def test_negative_page_size_names_the_field() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        queries.search_body(qs.QueryEventsRequest(page_size=-1))
    assert caught.value.field == "page_size"


def test_empty_filter_matches_everything_newest_first() -> None:
    body, _ = queries.search_body(qs.QueryEventsRequest())
    # Documents without an event id (not events) are left out.
    assert body["query"] == {"bool": {"filter": [{"exists": {"field": "event_id"}}]}}
    # Written out, not read from queries.SORT: a flipped order must fail here.
    assert body["sort"] == [
        {"corrected_timestamp": {"order": "desc", "missing": "_last", "unmapped_type": "date"}},
        {"event_id": {"order": "desc", "unmapped_type": "keyword"}},
    ]
    assert body["track_total_hits"] is True


def test_filters_become_terms_and_a_range() -> None:
    start, end = Timestamp(seconds=1000), Timestamp(seconds=2000, nanos=5_000_000)
    flt = _filter(
        user_ids=["u1", "u2"],
        session_ids=["s1"],
        event_names=["buy"],
        app_versions=["2.3.1", "2.4"],
        country_codes=["GB"],
        app_ids=["shop"],
        device_os=["iOS"],
        start_time=start,
        end_time=end,
    )
    clauses = queries.filter_query(flt)["bool"]["filter"]
    assert len(clauses) == 9
    assert {"exists": {"field": "event_id"}} in clauses
    assert {"terms": {"user_id": ["u1", "u2"]}} in clauses
    assert {"terms": {"session_id": ["s1"]}} in clauses
    assert {"terms": {"event_name": ["buy"]}} in clauses
    assert {"terms": {"app_version": ["2.3.1", "2.4"]}} in clauses
    assert {"terms": {"geo_country": ["GB"]}} in clauses
    assert {"terms": {"app_id": ["shop"]}} in clauses
    os_clause = next(c for c in clauses if "bool" in c)
    assert {"terms": {"os_name": ["iOS"]}} in os_clause["bool"]["should"]
    assert {"terms": {"device_os": ["iOS"]}} in os_clause["bool"]["should"]
    assert {
        "range": {
            "corrected_timestamp": {"format": "epoch_millis", "gte": 1_000_000, "lt": 2_000_005}
        }
    } in clauses


def test_free_text_is_a_match_query_with_operator_and() -> None:
    query = queries.filter_query(_filter(text='  item_purchased OR "x" AND *  '))
    assert query["bool"]["must"] == [
        {"match": {"event_message": {"query": 'item_purchased OR "x" AND *', "operator": "and"}}}
    ]


@pytest.mark.parametrize("text", ["#!?", " ... ", "* -- *", "__", "   ", "\t"])
def test_free_text_with_no_words_is_invalid_not_a_search_that_matches_nothing(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="has no words to search for") as caught:
        queries.filter_query(_filter(text=text))
    assert caught.value.field == "filter.text"


# Beyond ASCII the analyser decides (asked when the search answers nothing: test_indexer_api).
@pytest.mark.parametrize("text", ["a", "#1", "٣", "ｶ", "😀", "★!", "→", "½"])
def test_free_text_with_one_word_character_is_searched(text: str) -> None:
    query = queries.filter_query(_filter(text=text))
    assert query["bool"]["must"][0]["match"]["event_message"]["query"] == text


@pytest.mark.parametrize(
    ("name", "stamp"),
    [
        ("end_time", Timestamp(seconds=2**62)),  # OpenSearch would refuse it: an INTERNAL
        ("start_time", Timestamp(seconds=-(2**40))),
        ("end_time", Timestamp(seconds=253_402_300_800)),  # 10000-01-01
        ("start_time", Timestamp(seconds=10, nanos=1_000_000_000)),
        ("start_time", Timestamp(seconds=10, nanos=-1)),
    ],
)
def test_a_time_no_timestamp_can_hold_is_invalid_and_named(name: str, stamp: Timestamp) -> None:
    with pytest.raises(InvalidArgumentError, match=f"filter.{name}.*not a valid time"):
        queries.filter_query(_filter(**{name: stamp}))


def test_the_widest_valid_times_are_kept() -> None:
    first, last = Timestamp(seconds=-62_135_596_800), Timestamp(seconds=253_402_300_799)
    (_, bounds) = queries.filter_query(_filter(start_time=first, end_time=last))["bool"]["filter"]
    assert bounds["range"]["corrected_timestamp"]["gte"] == -62_135_596_800_000


def test_a_token_survives_the_text_filter_sent_with_spaces_around_it() -> None:
    # The query strips the text, so " shoes" and "shoes" select the same events.
    assert paging.filter_hash(_filter(text=" shoes ")) == paging.filter_hash(_filter(text="shoes"))
    assert paging.filter_hash(_filter(text="shoe")) != paging.filter_hash(_filter(text="shoes"))


@pytest.mark.parametrize(
    "name",
    [
        "user_ids",
        "session_ids",
        "event_names",
        "app_versions",
        "country_codes",
        "app_ids",
        "device_os",
    ],
)
def test_an_empty_filter_value_is_invalid_not_a_filter_that_matches_nothing(name: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        queries.filter_query(_filter(**{name: ["a", ""]}))
    assert caught.value.field == f"filter.{name}[1]"
    assert caught.value.description == "is empty: leave it out to match any value"


def test_free_text_and_filter_values_are_bounded_and_the_bound_itself_is_taken() -> None:
    # 1,000 characters of text (after trimming) and 1,000 values of a filter are taken...
    words = " ".join(["words"] * 200)[:1000]
    assert len(words) == 1000
    text = queries.filter_query(_filter(text=f"  {words}  "))["bool"]["must"]
    assert text == [{"match": {"event_message": {"query": words, "operator": "and"}}}]
    users = [f"u{n}" for n in range(1000)]
    assert {"terms": {"user_id": users}} in queries.filter_query(_filter(user_ids=users))["bool"][
        "filter"
    ]
    # ...one more is refused, naming the field.
    with pytest.raises(InvalidArgumentError) as caught:
        queries.filter_query(_filter(text=words + "s"))
    assert (caught.value.field, str(caught.value)) == (
        "filter.text",
        "filter.text: is longer than 1000 characters",
    )
    with pytest.raises(InvalidArgumentError) as caught:
        queries.filter_query(_filter(device_os=[*users, "u1000"]))
    assert (caught.value.field, str(caught.value)) == (
        "filter.device_os",
        "filter.device_os: has 1001 values, more than 1000",
    )


def test_end_before_start_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="end_time"):
        queries.filter_query(
            _filter(start_time=Timestamp(seconds=10), end_time=Timestamp(seconds=5))
        )
    # Within one millisecond too: the order of the two times is not a matter of precision.
    with pytest.raises(InvalidArgumentError, match="end_time"):
        queries.filter_query(
            _filter(
                start_time=Timestamp(seconds=10, nanos=1_000_500),
                end_time=Timestamp(seconds=10, nanos=1_000_400),
            )
        )
    same = Timestamp(seconds=10, nanos=1_000_500)
    bounds = queries.filter_query(_filter(start_time=same, end_time=same))["bool"]["filter"]
    assert bounds[1:] == [
        {"range": {"corrected_timestamp": {"format": "epoch_millis", "gte": 10001, "lt": 10001}}}
    ]


def test_page_token_round_trip_and_binding() -> None:
    flt = _filter(user_ids=["a", "b"], text="buy")
    token = paging.encode_token([1700000000000, "e-9"], flt)
    assert paging.decode_token(token, flt) == [1700000000000, "e-9"]
    # Order and duplicates of list values do not change the filter.
    assert paging.decode_token(token, _filter(user_ids=["b", "a", "a"], text="buy")) == [
        1700000000000,
        "e-9",
    ]
    with pytest.raises(InvalidArgumentError, match="another filter"):
        paging.decode_token(token, _filter(user_ids=["a"], text="buy"))
    with pytest.raises(InvalidArgumentError, match="another filter"):
        paging.decode_token(token, _filter(user_ids=["a", "b"], text="sell"))


# A filter using every field a page token is bound to.
EVERY_FIELD: dict[str, Any] = {
    "user_ids": ["u"],
    "session_ids": ["s"],
    "event_names": ["tap"],
    "app_versions": ["1.0"],
    "device_os": ["iOS"],
    "country_codes": ["GB"],
    "app_ids": ["shop"],
    "start_time": Timestamp(seconds=100, nanos=5),
    "end_time": Timestamp(seconds=200, nanos=7),
    "text": "buy",
}


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("user_ids", ["v"]),
        ("session_ids", ["t"]),
        ("event_names", ["buy"]),
        ("app_versions", ["1.1"]),
        ("device_os", ["Android"]),
        ("country_codes", ["FR"]),
        ("app_ids", ["news"]),
        ("user_ids", []),
        ("app_ids", []),
        ("start_time", Timestamp(seconds=101, nanos=5)),
        ("start_time", Timestamp(seconds=100, nanos=6)),  # one nanosecond later
        ("start_time", None),
        ("end_time", Timestamp(seconds=201, nanos=7)),
        ("end_time", Timestamp(seconds=200, nanos=8)),
        ("end_time", None),
        ("text", "sell"),
    ],
)
def test_a_token_is_refused_for_a_filter_that_differs_in_one_field(name: str, other: Any) -> None:
    token = paging.encode_token([1700000000000, "e-9"], _filter(**EVERY_FIELD))
    assert paging.decode_token(token, _filter(**EVERY_FIELD)) == [1700000000000, "e-9"]
    changed = {**EVERY_FIELD, name: other}
    if other is None:
        del changed[name]

    with pytest.raises(InvalidArgumentError, match="another filter") as caught:
        paging.decode_token(token, _filter(**changed))
    assert caught.value.field == "page_token"


def _forged(data: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "data",
    [
        {"v": paging.TOKEN_VERSION + 1, "a": [1700000000000, "e-9"]},
        {"v": 0, "a": [1700000000000, "e-9"]},
        {"a": [1700000000000, "e-9"]},
        {"v": paging.TOKEN_VERSION, "a": [1700000000000, "e-9", "x"]},
        {"v": paging.TOKEN_VERSION, "a": [1700000000000]},
        {"v": paging.TOKEN_VERSION, "a": [1700000000000, 1.5]},
        {"v": paging.TOKEN_VERSION, "a": {"t": 1700000000000}},
        # Values of the right JSON kinds that no event sorts by; OpenSearch would fail the
        # search (a date as text) or read them otherwise (a number past 64 bits wraps).
        {"v": paging.TOKEN_VERSION, "a": [True, "e-9"]},
        {"v": paging.TOKEN_VERSION, "a": [2**63, "e-9"]},
        {"v": paging.TOKEN_VERSION, "a": ["now", "e-9"]},
        {"v": paging.TOKEN_VERSION, "a": [1, 2]},
        {"v": paging.TOKEN_VERSION, "a": [1700000000000, False]},
        {"v": paging.TOKEN_VERSION, "a": [1700000000000, "é" * 257]},  # 514 bytes
    ],
)
def test_a_forged_token_with_the_right_filter_hash_is_invalid_argument(
    data: dict[str, Any],
) -> None:
    flt = _filter(**EVERY_FIELD)
    assert paging.decode_token(
        _forged(
            {"v": paging.TOKEN_VERSION, "a": [1700000000000, "e-9"], "f": paging.filter_hash(flt)}
        ),
        flt,
    ) == [1700000000000, "e-9"]

    with pytest.raises(InvalidArgumentError, match="not a valid page token") as caught:
        paging.decode_token(_forged({**data, "f": paging.filter_hash(flt)}), flt)
    assert caught.value.field == "page_token"


@pytest.mark.parametrize(
    "after",
    [
        [-(2**63), "e-9"],  # an event without corrected_timestamp sorts last with Long.MIN_VALUE
        [2**63 - 1, "x" * 512],
        [0, "é" * 256],
    ],
)
def test_tokens_at_the_edges_of_what_events_sort_by_are_kept(after: list[Any]) -> None:
    flt = _filter(**EVERY_FIELD)
    assert paging.decode_token(paging.encode_token(after, flt), flt) == after


@given(st.text(max_size=60))
def test_garbage_tokens_are_invalid_argument(token: str) -> None:
    flt = _filter()
    if token == "":
        return
    with pytest.raises(InvalidArgumentError) as caught:
        paging.decode_token(token, flt)
    assert caught.value.field == "page_token"


def _hit(event_id: str, millis: int) -> dict[str, Any]:
    return {
        "_source": {"event_id": event_id, "corrected_timestamp": "2026-01-01T00:00:00Z"},
        "sort": [millis, event_id],
    }


def test_next_page_token_only_when_there_is_more() -> None:
    flt = _filter()
    full = {"hits": {"total": {"value": 3}, "hits": [_hit("c", 3), _hit("b", 2), _hit("a", 1)]}}
    page = queries.events_response(full, size=2, flt=flt)
    assert [e.event.event_id for e in page.events] == ["c", "b"]
    assert page.total_size == 3
    assert paging.decode_token(page.next_page_token, flt) == [2, "b"]
    last = queries.events_response(
        {"hits": {"total": {"value": 3}, "hits": [_hit("a", 1)]}}, size=2, flt=flt
    )
    assert last.next_page_token == ""
    exact = queries.events_response(
        {"hits": {"total": {"value": 2}, "hits": [_hit("b", 2), _hit("a", 1)]}}, size=2, flt=flt
    )
    assert exact.next_page_token == ""


def test_a_page_of_large_events_is_cut_below_what_a_grpc_client_takes() -> None:
    # Events at the gateway's limits (64 metadata values of 2,048 characters) are ~140 KB:
    # 50 of them would pass the 4 MiB a gRPC client takes by default.
    flt = _filter()
    metadata = {f"key-{n:02d}": "v" * 2048 for n in range(64)}
    hits = [
        {**_hit(f"e-{n:02d}", 100 - n), "_source": {"event_id": f"e-{n:02d}", "metadata": metadata}}
        for n in range(51)
    ]

    page = queries.events_response(
        {"hits": {"total": {"value": 51}, "hits": hits}}, size=50, flt=flt
    )

    assert page.ByteSize() <= queries.MAX_REPLY_BYTES < 4 * 1024 * 1024
    kept = len(page.events)
    assert 20 < kept < 50
    assert [e.event.event_id for e in page.events] == [f"e-{n:02d}" for n in range(kept)]
    # The next page starts right after the last event sent.
    assert paging.decode_token(page.next_page_token, flt) == [100 - (kept - 1), f"e-{kept - 1:02d}"]


def _histogram(start: str, end: str, interval: int) -> dict[str, Any]:
    flt = qs.EventFilter()
    flt.start_time.FromJsonString(start)
    flt.end_time.FromJsonString(end)
    body = queries.aggregate_body(qs.AggregateEventsRequest(filter=flt, interval=interval))
    histogram: dict[str, Any] = body["aggs"]["over_time"]["date_histogram"]
    return histogram


def test_a_histogram_over_a_time_range_has_a_bucket_for_each_step_of_it() -> None:
    # Empty hours at the edges are buckets of 0, not left out.
    hours = _histogram("2026-01-01T00:00:00Z", "2026-01-01T03:00:00Z", qs.HISTOGRAM_INTERVAL_HOUR)
    assert hours["extended_bounds"] == {"min": 1767225600000, "max": 1767236399999}
    # A range of more than MAX_FILLED_BUCKETS steps spans the events found only.
    minutes = _histogram(
        "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", qs.HISTOGRAM_INTERVAL_MINUTE
    )
    assert "extended_bounds" not in minutes


def test_aggregate_body_and_limits() -> None:
    body = queries.aggregate_body(
        qs.AggregateEventsRequest(
            group_by=qs.AGGREGATION_FIELD_OS_NAME, interval=qs.HISTOGRAM_INTERVAL_HOUR
        )
    )
    assert body["size"] == 0
    assert body["aggs"]["by_field"] == {
        "terms": {"field": "os_name", "size": 10, "shard_size": 1000}
    }
    assert body["aggs"]["over_time"]["date_histogram"]["calendar_interval"] == "hour"
    clamped = queries.aggregate_body(
        qs.AggregateEventsRequest(group_by=qs.AGGREGATION_FIELD_USER_ID, limit=5000)
    )
    assert clamped["aggs"]["by_field"]["terms"]["size"] == 1000
    assert clamped["aggs"]["by_field"]["terms"]["shard_size"] == 10_000
    assert "aggs" not in queries.aggregate_body(qs.AggregateEventsRequest())
    with pytest.raises(InvalidArgumentError) as caught:
        queries.aggregate_body(qs.AggregateEventsRequest(limit=-1))
    assert caught.value.field == "limit"


def test_aggregate_response() -> None:
    reply = queries.aggregate_response(
        {
            "hits": {"total": {"value": 7}},
            "aggregations": {
                "by_field": {
                    "buckets": [{"key": "buy", "doc_count": 5}, {"key": "x", "doc_count": 2}]
                },
                "over_time": {"buckets": [{"key": 3_600_000, "doc_count": 7}]},
            },
        }
    )
    assert reply.total_count == 7
    assert [(c.value, c.count) for c in reply.counts] == [("buy", 5), ("x", 2)]
    assert reply.histogram[0].start_time.seconds == 3600
    assert reply.histogram[0].count == 7


def test_the_counts_say_how_far_off_they_may_be() -> None:
    answer: dict[str, Any] = {
        "hits": {"total": {"value": 9}},
        "aggregations": {
            "by_field": {
                "doc_count_error_upper_bound": 4,
                "buckets": [{"key": "buy", "doc_count": 5}],
            }
        },
    }
    assert queries.aggregate_response(answer).count_error_upper_bound == 4
    # What the search is asked to return includes it.
    assert "aggregations.by_field.doc_count_error_upper_bound" in (
        queries.AGGREGATE_FILTER_PATH.split(",")
    )
    answer["aggregations"]["by_field"]["doc_count_error_upper_bound"] = 0
    assert queries.aggregate_response(answer).count_error_upper_bound == 0


def _hits(first: int, count: int, *, metadata: dict[str, str] | None = None) -> list[Any]:
    """`count` hits, newest first, event ids e-<first>... with sort values counting down."""
    hits = []
    for n in range(first, first + count):
        hit = _hit(f"e-{n:04d}", 10_000 - n)
        if metadata is not None:
            hit["_source"] = {**hit["_source"], "metadata": metadata}
        hits.append(hit)
    return hits


def _fetch_page(
    page_size: int, stored: list[Any], *, token: str = ""
) -> tuple[qs.QueryEventsResponse, list[dict[str, Any]]]:
    """A page built as QueryEvents builds it, from a store holding `stored` (newest first);
    also the bodies it fetched with."""
    flt = _filter()
    body, size = queries.search_body(qs.QueryEventsRequest(page_size=page_size, page_token=token))
    page = queries.Page(body, size=size, flt=flt)
    bodies: list[dict[str, Any]] = []
    fetch: dict[str, Any] | None = body
    while fetch is not None:
        bodies.append(fetch)
        after = fetch.get("search_after")
        start = (
            0
            if after is None
            else next(n + 1 for n, hit in enumerate(stored) if hit["sort"] == after)
        )
        found = stored[start : start + fetch["size"]]
        fetch = page.add({"hits": {"total": {"value": len(stored)}, "hits": found}})
    return page.reply, bodies


def test_a_large_page_of_small_events_is_fetched_in_two_parts_and_whole() -> None:
    stored = _hits(0, 1500)

    reply, bodies = _fetch_page(1000, stored)

    # 50, then four times as many, then the rest.
    assert [body["size"] for body in bodies] == [51, 201, 751]
    assert bodies[1]["search_after"] == stored[49]["sort"]
    # Counted, as every search is: without it OpenSearch may skip shards by their range.
    assert bodies[1]["track_total_hits"] is True
    assert bodies[1]["query"] == bodies[0]["query"]
    assert [e.event.event_id for e in reply.events] == [f"e-{n:04d}" for n in range(1000)]
    assert reply.total_size == 1500
    assert paging.decode_token(reply.next_page_token, _filter()) == stored[999]["sort"]
    # The next page, from that token, goes on where this one ended.
    following, _ = _fetch_page(1000, stored, token=reply.next_page_token)
    assert [e.event.event_id for e in following.events] == [f"e-{n:04d}" for n in range(1000, 1500)]
    assert following.next_page_token == ""


def test_a_large_page_of_large_events_fetches_little_more_than_the_reply_carries() -> None:
    # Events at the gateway's limits (64 metadata values of 2,048 characters): ~140 KB each,
    # about 28 to a reply. Fetched whole, a page of 1,000 would be 1,001 of them (~140 MB).
    metadata = {f"key-{n:02d}": "v" * 2048 for n in range(64)}
    stored = _hits(0, 1500, metadata=metadata)

    reply, bodies = _fetch_page(1000, stored)

    kept = len(reply.events)
    assert 20 < kept < 50
    assert reply.ByteSize() <= queries.MAX_REPLY_BYTES
    assert sum(body["size"] for body in bodies) <= 51  # the first fetch only: the rest is full
    assert paging.decode_token(reply.next_page_token, _filter()) == stored[kept - 1]["sort"]


def test_a_page_whose_later_events_grow_stops_at_the_reply_limit_and_goes_on_after() -> None:
    # 60 small events, then large ones: the second fetch asks for four times the first (what
    # fits at the size of the small ones is more), and is cut where the reply is full.
    metadata = {f"key-{n:02d}": "v" * 2048 for n in range(64)}
    stored = _hits(0, 60) + _hits(60, 200, metadata=metadata)

    reply, bodies = _fetch_page(1000, stored)

    assert [body["size"] for body in bodies] == [51, 201]

    ids = [e.event.event_id for e in reply.events]
    assert ids == [f"e-{n:04d}" for n in range(len(ids))]
    assert 60 < len(ids) < 100
    assert reply.ByteSize() <= queries.MAX_REPLY_BYTES
    assert paging.decode_token(reply.next_page_token, _filter()) == stored[len(ids) - 1]["sort"]
    following, _ = _fetch_page(1000, stored, token=reply.next_page_token)
    assert following.events[0].event.event_id == f"e-{len(ids):04d}"


def test_the_largest_event_seen_in_any_fetch_sizes_the_next() -> None:
    # 50 events of ~17 KB, 200 small ones, then ~17 KB again: the third fetch is sized by the
    # first fetch's events, not by the small ones of the second (which would ask for 750).
    metadata = {f"key-{n:02d}": "v" * 2048 for n in range(8)}
    stored = _hits(0, 50, metadata=metadata) + _hits(50, 200) + _hits(250, 800, metadata=metadata)

    reply, bodies = _fetch_page(1000, stored)

    largest = reply.events[0].ByteSize()
    sizes = [body["size"] for body in bodies]
    assert sizes[:2] == [51, 200]  # the second: what the room holds at ~17 KB
    # The third: at most what the room left by the first 50 holds at ~17 KB.
    assert sizes[2] - 1 <= (queries.MAX_REPLY_BYTES - 50 * largest) // largest < 750
    assert reply.ByteSize() <= queries.MAX_REPLY_BYTES
    ids = [e.event.event_id for e in reply.events]
    assert ids == [f"e-{n:04d}" for n in range(len(ids))]
    assert paging.decode_token(reply.next_page_token, _filter()) == stored[len(ids) - 1]["sort"]


def test_a_page_that_ends_exactly_with_what_is_stored_has_no_token() -> None:
    reply, bodies = _fetch_page(100, _hits(0, 100))
    assert len(reply.events) == 100
    assert [body["size"] for body in bodies] == [51, 51]
    assert reply.next_page_token == ""


def test_a_histogram_over_a_range_with_no_index_searched_has_its_buckets_of_0() -> None:
    # OpenSearch answers a search of no index without the aggregation; the buckets the range
    # asks for are made as OpenSearch makes them: from the hour the range starts in.
    flt = _filter(start_time=Timestamp(seconds=1800), end_time=Timestamp(seconds=3 * 3600))
    body = queries.aggregate_body(
        qs.AggregateEventsRequest(filter=flt, interval=qs.HISTOGRAM_INTERVAL_HOUR)
    )
    empty = {"hits": {"total": {"value": 0}}}

    reply = queries.aggregate_response(empty, body)

    assert [(b.start_time.seconds, b.count) for b in reply.histogram] == [
        (0, 0),
        (3600, 0),
        (7200, 0),
    ]
    # Without a range there is nothing to fill; an answer with buckets is taken as it is.
    unbounded = queries.aggregate_body(
        qs.AggregateEventsRequest(interval=qs.HISTOGRAM_INTERVAL_DAY)
    )
    assert not queries.aggregate_response(empty, unbounded).histogram
    answered = {**empty, "aggregations": {"over_time": {"buckets": []}}}
    assert not queries.aggregate_response(answered, body).histogram
