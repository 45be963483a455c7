"""QueryService over gRPC against the real OpenSearch: paging, filters, text, aggregations."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from indexer_support import (
    IndexerFactory,
    enriched,
    publish_many,
    query_stub,
    stamp,
    wait_count,
    wait_for,
)
from nats.aio.client import Client
from opensearchpy import AsyncOpenSearch
from telemetry.v1 import event_pb2
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import paging
from indexer.store import OpenSearchStore
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration

BASE = datetime(2026, 5, 20, 12, tzinfo=UTC)


async def _invalid(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(caught.value.details())


async def test_1234_events_paged_by_100_each_once_in_order(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # Groups of 3 events share a corrected timestamp: the event_id tiebreak decides.
    events = [
        enriched(
            f"page-{n:05d}",
            when=BASE + timedelta(seconds=n // 3),
            user_id="pager" if n % 2 else "other",
        )
        for n in range(1234)
    ]
    indexer = await start_indexer()
    await publish_many(nc, events, per_batch=100)
    await wait_count(os_client, prefix, 1234)
    channel, stub = query_stub(indexer)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await stub.QueryEvents(qs.QueryEventsRequest(page_size=100, page_token=token))
        pages += 1
        assert reply.total_size == 1234
        seen.extend(e.event.event_id for e in reply.events)
        token = reply.next_page_token
        if not token:
            break
        if pages == 2:
            second_token = token
    assert pages == 13
    assert len(seen) == len(set(seen)) == 1234
    expected = sorted(
        events,
        key=lambda e: (e.corrected_timestamp.ToMilliseconds(), e.event.event_id),
        reverse=True,
    )
    assert seen == [e.event.event_id for e in expected]
    # A page holds whole EnrichedEvent messages.
    first = await stub.QueryEvents(qs.QueryEventsRequest(page_size=1))
    newest = next(e for e in events if e.event.event_id == first.events[0].event.event_id)
    assert first.events[0] == newest

    other = qs.EventFilter(user_ids=["pager"])
    details = await _invalid(
        stub.QueryEvents(
            qs.QueryEventsRequest(filter=other, page_size=100, page_token=second_token)
        )
    )
    assert "page_token" in details
    await _invalid(stub.QueryEvents(qs.QueryEventsRequest(page_token="not-a-token!!")))
    forged = base64.urlsafe_b64encode(b'{"v":1,"a":[1],"f":"x"}').decode()
    await _invalid(stub.QueryEvents(qs.QueryEventsRequest(page_token=forged)))
    assert "page_size" in await _invalid(stub.QueryEvents(qs.QueryEventsRequest(page_size=-1)))
    # The same filter with its token keeps going; page_size may change between pages.
    more = await stub.QueryEvents(qs.QueryEventsRequest(page_size=7, page_token=second_token))
    assert [e.event.event_id for e in more.events] == seen[200:207]
    clamped = await stub.QueryEvents(qs.QueryEventsRequest(page_size=5000))
    assert len(clamped.events) == 1000
    default = await stub.QueryEvents(qs.QueryEventsRequest())
    assert len(default.events) == 50
    await channel.close()


def _dataset() -> list[event_pb2.EnrichedEvent]:
    out = []
    specs = [
        # (user, name, os, os_name, country, version, message)
        ("u1", "item_purchased", "iOS 17.2", "iOS", "GB", "2.0", "item_purchased sku red shoes"),
        ("u1", "item_purchased", "iOS 16.0", "iOS", "GB", "2.0", "item_purchased sku blue shoes"),
        ("u1", "app_opened", "iOS 17.2", "iOS", "FR", "2.0", "app_opened cold start"),
        (
            "u2",
            "item_purchased",
            "Android 14",
            "Android",
            "FR",
            "1.9",
            "item_purchased sku red hat",
        ),
        ("u2", "app_opened", "Android 14", "Android", "DE", "1.9", "app_opened warm start"),
        ("u3", "search", "iPadOS 17.1", "iPadOS", "GB", "2.1", "search query red"),
    ]
    for n, (user, name, device, os_name, country, version, message) in enumerate(specs * 5):
        out.append(
            enriched(
                f"k-{n:03d}",
                when=BASE + timedelta(hours=n % 3, minutes=n),
                user_id=user,
                event_name=name,
                device_os=device,
                os_name=os_name,
                country=country,
                app_version=version,
                message=message,
                app_id="shop" if n < 24 else "news",  # the last round from another app
            )
        )
    return out


async def test_filters_text_and_aggregations_count_exactly(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    events = _dataset()
    indexer = await start_indexer()
    await publish_many(nc, events, per_batch=7)
    await wait_count(os_client, prefix, len(events))
    channel, stub = query_stub(indexer)

    async def total(**fields: object) -> int:
        reply = await stub.QueryEvents(
            qs.QueryEventsRequest(filter=qs.EventFilter(**fields), page_size=1000)  # type: ignore[arg-type]
        )
        assert len(reply.events) == reply.total_size
        return int(reply.total_size)

    assert await total() == 30
    assert await total(user_ids=["u1"]) == 15
    assert await total(user_ids=["u1", "u3"]) == 20
    assert await total(event_names=["item_purchased"], user_ids=["u1"]) == 10
    assert await total(device_os=["iOS"]) == 15  # by parsed OS name
    assert await total(device_os=["iOS 17.2"]) == 10  # by exact device_os
    assert await total(device_os=["Android", "iOS 16.0"]) == 15
    assert await total(country_codes=["FR"]) == 10
    assert await total(app_versions=["1.9"]) == 10
    assert await total(session_ids=["nope"]) == 0
    assert await total(app_ids=["shop"]) == 24
    assert await total(app_ids=["news"]) == 6
    assert await total(app_ids=["news"], user_ids=["u1"]) == 3
    assert await total(app_ids=["shop", "news"]) == 30
    assert await total(text="red") == 15
    assert await total(text="red shoes") == 5  # all words must match
    assert await total(text="shoes OR hat") == 0  # not a query language: "OR" is a word
    assert await total(text='red" AND *') == 0
    assert await total(text="red ‼") == 0  # "‼" is a word to the analyser (emoji)
    # Words only to Python: the analyser makes none of these symbols.
    for text in ("½", "→ °", "#!?"):
        request = qs.QueryEventsRequest(filter=qs.EventFilter(text=text))
        assert (
            await _invalid(stub.QueryEvents(request)) == "filter.text: has no words to search for"
        )
    # Time range on the corrected timestamp: [start, end).
    start = BASE + timedelta(hours=1)
    end = BASE + timedelta(hours=2)
    in_range = [e for e in events if start <= e.corrected_timestamp.ToDatetime(tzinfo=UTC) < end]
    assert await total(start_time=stamp(start), end_time=stamp(end)) == len(in_range)
    assert 0 < len(in_range) < 30

    counts = await stub.AggregateEvents(
        qs.AggregateEventsRequest(
            filter=qs.EventFilter(country_codes=["GB", "FR"]),
            group_by=qs.AGGREGATION_FIELD_EVENT_NAME,
            interval=qs.HISTOGRAM_INTERVAL_HOUR,
        )
    )
    assert counts.total_count == 25
    assert [(c.value, c.count) for c in counts.counts] == [
        ("item_purchased", 15),
        ("app_opened", 5),
        ("search", 5),
    ]
    assert sum(b.count for b in counts.histogram) == 25
    starts = [b.start_time.ToDatetime(tzinfo=UTC) for b in counts.histogram]
    assert starts == sorted(starts)
    assert all(s.minute == 0 and s.second == 0 for s in starts)
    by_os = await stub.AggregateEvents(
        qs.AggregateEventsRequest(group_by=qs.AGGREGATION_FIELD_OS_NAME, limit=2)
    )
    assert [(c.value, c.count) for c in by_os.counts] == [("iOS", 15), ("Android", 10)]
    assert by_os.total_count == 30
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AggregateEvents(qs.AggregateEventsRequest(limit=-1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await channel.close()


async def test_no_indices_yet_is_an_empty_answer_and_health_serves(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    indexer = await start_indexer()
    channel, stub = query_stub(indexer)
    reply = await stub.QueryEvents(
        qs.QueryEventsRequest(filter=qs.EventFilter(start_time=Timestamp(seconds=0)))
    )
    assert list(reply.events) == []
    assert reply.next_page_token == ""
    counts = await stub.AggregateEvents(
        qs.AggregateEventsRequest(
            group_by=qs.AGGREGATION_FIELD_USER_ID, interval=qs.HISTOGRAM_INTERVAL_DAY
        )
    )
    assert counts.total_count == 0
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service="telemetry.v1.QueryService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # A histogram over a range has a bucket of 0 for each of its hours, with no index as
    # with one that holds no event of the range.
    hours = qs.AggregateEventsRequest(
        filter=qs.EventFilter(
            start_time=stamp(BASE + timedelta(minutes=30)),
            end_time=stamp(BASE + timedelta(hours=3)),
        ),
        interval=qs.HISTOGRAM_INTERVAL_HOUR,
    )

    def buckets(reply: qs.AggregateEventsResponse) -> list[tuple[datetime, int]]:
        return [(b.start_time.ToDatetime(tzinfo=UTC), b.count) for b in reply.histogram]

    no_index = buckets(await stub.AggregateEvents(hours))
    hour = BASE.replace(minute=0, second=0, microsecond=0)
    assert no_index == [(hour + timedelta(hours=n), 0) for n in range(3)]
    await publish_many(nc, [enriched("elsewhere", when=BASE + timedelta(days=3))], per_batch=1)
    await wait_count(os_client, prefix, 1)
    assert buckets(await stub.AggregateEvents(hours)) == no_index
    await channel.close()


async def test_with_nats_stopped_queries_are_answered_and_health_says_so_per_service(
    start_indexer: IndexerFactory,
    nats_server: NatsProcess,
    nc: Client,
    os_client: AsyncOpenSearch,
    prefix: str,
) -> None:
    # The whole server is not ready without NATS, but QueryService, which needs OpenSearch
    # alone, stays SERVING: a balancer checking it keeps an indexer that answers queries.
    indexer = await start_indexer()
    await publish_many(nc, [enriched("kept", when=BASE)], per_batch=1)
    await wait_count(os_client, prefix, 1)
    await nc.close()
    channel, stub = query_stub(indexer)
    health = health_pb2_grpc.HealthStub(channel)

    async def statuses() -> tuple[int, int]:
        answers = [
            await health.Check(health_pb2.HealthCheckRequest(service=name))
            for name in ("", "telemetry.v1.QueryService")
        ]
        return answers[0].status, answers[1].status

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert await statuses() == (serving, serving)

    nats_server.stop()

    async def server_not_serving() -> bool:
        return await statuses() == (not_serving, serving)

    await wait_for(server_not_serving, what="health without NATS")
    ok, reason = await indexer.ready()
    assert (ok, reason) == (False, "nats not connected")
    reply = await stub.QueryEvents(
        qs.QueryEventsRequest(filter=qs.EventFilter(user_ids=["user-1"]))
    )
    assert [event.event.event_id for event in reply.events] == ["kept"]
    await channel.close()


async def test_a_histogram_past_the_bucket_limit_is_invalid_argument_not_unavailable(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # Fifty days of minutes is past OpenSearch's search.max_buckets (65,535): retrying
    # cannot help, so the caller is told to ask differently.
    events = [enriched("early", when=BASE), enriched("late", when=BASE + timedelta(days=50))]
    indexer = await start_indexer()
    await publish_many(nc, events, per_batch=2)
    await wait_count(os_client, prefix, 2)
    channel, stub = query_stub(indexer)

    details = await _invalid(
        stub.AggregateEvents(qs.AggregateEventsRequest(interval=qs.HISTOGRAM_INTERVAL_MINUTE))
    )
    # The limit, not the setting's name: a caller cannot change it.
    assert details == (
        "interval: makes more buckets than the event store allows (65,535); "
        "ask for a narrower time range or a coarser interval"
    )
    hourly = await stub.AggregateEvents(
        qs.AggregateEventsRequest(interval=qs.HISTOGRAM_INTERVAL_HOUR)
    )
    assert sum(b.count for b in hourly.histogram) == 2
    await channel.close()


async def test_free_text_of_more_words_than_opensearch_searches_is_invalid_argument(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # A clause per word: past indices.query.bool.max_clause_count (lowered here, 1,024 by
    # default) OpenSearch refuses the search with a 400, which is the caller's to change,
    # not a page token's fault nor an internal error.
    indexer = await start_indexer()
    await publish_many(nc, [enriched("kept", when=BASE)], per_batch=1)
    await wait_count(os_client, prefix, 1)
    channel, stub = query_stub(indexer)
    clauses = {"indices.query.bool.max_clause_count": 5}
    await os_client.cluster.put_settings(body={"transient": clauses})
    try:
        words = qs.EventFilter(text="a b c d e f g h")
        for call in (
            stub.QueryEvents(qs.QueryEventsRequest(filter=words)),
            stub.QueryEvents(
                qs.QueryEventsRequest(
                    filter=words, page_token=paging.encode_token([1, "kept"], words)
                )
            ),
            stub.AggregateEvents(qs.AggregateEventsRequest(filter=words)),
        ):
            details = await _invalid(call)
            assert details == (
                "filter.text: has more words than the event store searches at once (5); "
                "search for fewer"
            )
    finally:
        reset = {"indices.query.bool.max_clause_count": None}
        await os_client.cluster.put_settings(body={"transient": reset})
        await channel.close()


async def test_a_red_daily_index_is_refused_unless_partial_success_then_named(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    indexer = await start_indexer()
    await publish_many(nc, [enriched("kept", when=BASE)], per_batch=1)
    await wait_count(os_client, prefix, 1)
    # A daily index whose one shard can be assigned nowhere: red. OpenSearch searches the
    # rest and counts its shard neither as successful nor as failed.
    red = f"{prefix}2026-05-19"
    await os_client.indices.create(
        index=red,
        body={"settings": {"index.routing.allocation.require._name": "no-such-node"}},
        wait_for_active_shards="0",
    )
    channel, stub = query_stub(indexer)
    for call in (
        stub.QueryEvents(qs.QueryEventsRequest()),
        stub.AggregateEvents(qs.AggregateEventsRequest(group_by=qs.AGGREGATION_FIELD_USER_ID)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert red in str(caught.value.details())

    page = await stub.QueryEvents(qs.QueryEventsRequest(return_partial_success=True))
    assert [e.event.event_id for e in page.events] == ["kept"]
    assert list(page.unreachable) == [red]
    counts = await stub.AggregateEvents(
        qs.AggregateEventsRequest(
            group_by=qs.AGGREGATION_FIELD_USER_ID, return_partial_success=True
        )
    )
    assert counts.total_count == 1
    assert list(counts.unreachable) == [red]

    # The wait a search makes for shards not started: in vain while the shard has nowhere to
    # go, over once it can be assigned (as a new daily index's shard is, a moment after).
    store = OpenSearchStore(os_client, prefix=prefix)
    assert await store.wait_for_shards(0.2) is False
    await os_client.indices.put_settings(
        index=red, body={"index.routing.allocation.require._name": None}
    )
    assert await store.wait_for_shards(30) is True
    whole = await stub.QueryEvents(qs.QueryEventsRequest())
    assert [e.event.event_id for e in whole.events] == ["kept"]
    assert list(whole.unreachable) == []
    await channel.close()


async def test_another_index_under_the_prefix_does_not_fail_queries(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # Made before the indexer installs its template: mappings of their own, none of ours.
    # A user_id of integers fails a user_id filter of words in that index...
    other = f"{prefix}other"
    await os_client.indices.create(
        index=other, body={"mappings": {"properties": {"user_id": {"type": "integer"}}}}
    )
    await os_client.index(index=other, body={"user_id": 7}, refresh=True)
    # ...and a name like a daily index's (searched) without the fields the events sort by.
    archive = f"{prefix}2024-archive"
    await os_client.indices.create(
        index=archive, body={"mappings": {"properties": {"note": {"type": "text"}}}}
    )
    await os_client.index(index=archive, body={"note": "old"}, refresh=True)
    indexer = await start_indexer()
    await publish_many(nc, [enriched("mine", when=BASE, user_id="u1")], per_batch=1)
    await wait_count(os_client, prefix, 3)
    channel, stub = query_stub(indexer)

    users = qs.EventFilter(user_ids=["u1"])
    page = await stub.QueryEvents(qs.QueryEventsRequest(filter=users))
    assert [e.event.event_id for e in page.events] == ["mine"]
    assert page.total_size == 1
    counts = await stub.AggregateEvents(
        qs.AggregateEventsRequest(filter=users, group_by=qs.AGGREGATION_FIELD_USER_ID)
    )
    assert [(c.value, c.count) for c in counts.counts] == [("u1", 1)]
    # With no filter, the archive's document (no event id, no time) is neither an event on
    # the page nor in the counts; a page ending with it would hold a token that fails.
    page = await stub.QueryEvents(qs.QueryEventsRequest())
    assert [e.event.event_id for e in page.events] == ["mine"]
    assert page.total_size == 1
    counts = await stub.AggregateEvents(qs.AggregateEventsRequest())
    assert counts.total_count == 1
    await channel.close()


async def test_the_top_value_over_several_days_is_counted_whole(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # In each of five daily indices "steady" is 26th, behind 25 values of that day alone;
    # over the five days it is first. Summing a few dozen top values per index (OpenSearch's
    # default for a limit of 10) would leave it out.
    events = []
    for day in range(5):
        when = BASE + timedelta(days=day)
        for n in range(25):
            events += [
                enriched(f"d{day}-v{n}-{k}", when=when, event_name=f"day{day}-{n}")
                for k in range(3)
            ]
        events += [enriched(f"d{day}-steady-{k}", when=when, event_name="steady") for k in range(2)]
    indexer = await start_indexer()
    await publish_many(nc, events, per_batch=100)
    await wait_count(os_client, prefix, len(events))
    channel, stub = query_stub(indexer)

    counts = await stub.AggregateEvents(
        qs.AggregateEventsRequest(group_by=qs.AGGREGATION_FIELD_EVENT_NAME, limit=10)
    )
    assert (counts.counts[0].value, counts.counts[0].count) == ("steady", 10)
    assert all(c.count == 3 for c in counts.counts[1:])
    assert counts.count_error_upper_bound == 0
    assert counts.total_count == len(events)
    await channel.close()


async def test_the_wait_for_a_new_index_lasts_until_its_shard_answers_searches(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    # A daily index made by its first event: OpenSearch calls it yellow while its primary
    # shard is still initializing, and a search then fails on every shard (503).
    store = OpenSearchStore(os_client, prefix=prefix)
    await store.install_template()
    for day in range(1, 6):
        name = f"{prefix}2031-01-0{day}"
        await os_client.indices.create(index=name, params={"wait_for_active_shards": "0"})
        assert await store.wait_for_shards(30) is True
        answer = await store.search({"query": {"match_all": {}}, "size": 0})
        assert answer["_shards"]["successful"] == answer["_shards"]["total"] == day, name


async def _every_id(
    stub: qs_grpc.QueryServiceAsyncStub, flt: qs.EventFilter, page_size: int
) -> list[str]:
    """The ids of every event `flt` selects, page by page."""
    found: list[str] = []
    token = ""
    while True:
        page = await stub.QueryEvents(
            qs.QueryEventsRequest(filter=flt, page_size=page_size, page_token=token)
        )
        found += [e.event.event_id for e in page.events]
        token = page.next_page_token
        if not token:
            return found


async def test_pages_fetched_in_parts_hold_each_event_once_in_order_over_days(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # A page past 50 events is fetched in parts (50, then up to four times as many...), each
    # after the last sort value of the one before: over five daily indices, with events
    # sharing a time, pages of 100 and of 1,000 hold what pages of 7 (one fetch each) hold.
    events = [enriched(f"e-{n:03d}", when=BASE + timedelta(hours=(n // 3) * 2)) for n in range(130)]
    indexer = await start_indexer()
    await publish_many(nc, events, per_batch=20)
    await wait_count(os_client, prefix, len(events))
    indices = await os_client.cat.indices(index=f"{prefix}20*", format="json")
    assert len(indices) == 5  # 88 hours from noon
    channel, stub = query_stub(indexer)

    newest_first = sorted(
        (e.event.event_id for e in events),
        key=lambda event_id: (int(event_id[2:]) // 3, event_id),
        reverse=True,
    )
    for page_size in (7, 100, 1000):
        assert await _every_id(stub, qs.EventFilter(), page_size) == newest_first, page_size
    page = await stub.QueryEvents(qs.QueryEventsRequest(page_size=100))
    assert (len(page.events), page.total_size) == (100, 130)
    await channel.close()


async def test_range_edges_to_the_millisecond_pages_over_days_and_utc_day_buckets(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    # Three days, each in its own daily index: events on midnight to the millisecond, the
    # millisecond before it, and ties on the time broken by the event id.
    midnight = datetime(2026, 5, 21, tzinfo=UTC)
    one_ms = timedelta(milliseconds=1)
    times = {
        "a-day1-late": midnight - timedelta(hours=1),
        "b-day1-last": midnight - one_ms,
        "c-day2-first": midnight,
        "d-day2-tie": midnight + timedelta(hours=5),
        "e-day2-tie": midnight + timedelta(hours=5),
        "f-day2-last": midnight + timedelta(days=1) - one_ms,
        "g-day3-first": midnight + timedelta(days=1),
        "h-day3": midnight + timedelta(days=1, hours=2),
    }
    events = [enriched(event_id, when=when) for event_id, when in times.items()]
    indexer = await start_indexer()
    await publish_many(nc, events, per_batch=3)
    await wait_count(os_client, prefix, len(events))
    indices = await os_client.cat.indices(index=f"{prefix}20*", format="json")
    assert len(indices) == 3
    channel, stub = query_stub(indexer)

    async def ids(flt: qs.EventFilter, page_size: int = 100) -> list[str]:
        return await _every_id(stub, flt, page_size)

    newest_first = sorted(times, key=lambda event_id: (times[event_id], event_id), reverse=True)
    # Pages of 3 cross the indices and the tie: each event once, newest first.
    assert await ids(qs.EventFilter(), page_size=3) == newest_first
    # [start, end): day 2 to the millisecond.
    day2 = qs.EventFilter(start_time=stamp(midnight), end_time=stamp(midnight + timedelta(days=1)))
    assert await ids(day2, page_size=2) == [
        "f-day2-last",
        "e-day2-tie",
        "d-day2-tie",
        "c-day2-first",
    ]
    last_ms = qs.EventFilter(start_time=stamp(midnight - one_ms), end_time=stamp(midnight))
    assert await ids(last_ms) == ["b-day1-last"]

    # Day buckets are UTC days whatever the range's offset: from 00:00+02:00 on 21 May
    # (22:00 UTC on the 20th) to the same time on the 22nd.
    plus_two = timezone(timedelta(hours=2))
    counts = await stub.AggregateEvents(
        qs.AggregateEventsRequest(
            filter=qs.EventFilter(
                start_time=stamp(datetime(2026, 5, 21, tzinfo=plus_two)),
                end_time=stamp(datetime(2026, 5, 22, tzinfo=plus_two)),
            ),
            interval=qs.HISTOGRAM_INTERVAL_DAY,
        )
    )
    assert counts.total_count == 5  # the two of day 1, and the three of day 2 before 22:00 UTC
    assert [(b.start_time.ToDatetime(tzinfo=UTC), b.count) for b in counts.histogram] == [
        (midnight - timedelta(days=1), 2),
        (midnight, 3),
    ]
    await channel.close()
