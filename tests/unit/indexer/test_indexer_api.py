"""QueryService maps our errors to canonical gRPC codes (a real gRPC server, a fake store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import paging
from indexer.api import QueryServer
from indexer.errors import SearchRequestError, SearchUnavailableError
from indexer.metrics import Metrics
from pipeline.query_names import STORE_UNAVAILABLE_TRAILER


class FakeSearch:
    pattern = "telemetry-*"

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.bodies: list[dict[str, Any]] = []
        self.red: list[str] | Exception = []
        self.red_asked = 0
        self.shards_start = False  # what wait_for_shards answers
        self.waits: list[float] = []
        self.hits: list[dict[str, Any]] = []  # what search answers
        self.words: bool | Exception = True  # what has_words answers
        self.analysed: list[str] = []

    async def has_words(self, text: str) -> bool:
        self.analysed.append(text)
        if isinstance(self.words, Exception):
            raise self.words
        return self.words

    async def wait_for_shards(self, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        return self.shards_start

    async def red_indices(self) -> list[str]:
        self.red_asked += 1
        if isinstance(self.red, Exception):
            raise self.red
        return self.red

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        return {"hits": {"total": {"value": len(self.hits)}, "hits": self.hits}}


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub]]:
    search = FakeSearch()
    server = QueryServer(search, host="127.0.0.1", port=0)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield search, qs_grpc.QueryServiceStub(channel)
    await channel.close()
    await server.stop(grace_s=1)


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), str(caught.value.details())


async def test_unavailable_store_is_unavailable(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub],
) -> None:
    search, stub = served
    search.error = SearchUnavailableError("connection refused")
    code, _ = await _code(stub.QueryEvents(qs.QueryEventsRequest()))
    assert code == grpc.StatusCode.UNAVAILABLE
    code, _ = await _code(stub.AggregateEvents(qs.AggregateEventsRequest()))
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_an_unavailable_store_is_marked_so_its_details_may_reach_callers(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub],
) -> None:
    # The gateway passes the details of a marked UNAVAILABLE on; the store's cause stays here.
    search, stub = served
    search.error = SearchUnavailableError("connection refused to 10.0.0.7:9200")
    for call in (
        stub.QueryEvents(qs.QueryEventsRequest()),
        stub.AggregateEvents(qs.AggregateEventsRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.details() == "the event store is unavailable; try again later"
        trailers = dict(caught.value.trailing_metadata() or ())
        assert trailers.get(STORE_UNAVAILABLE_TRAILER) == "unavailable"


async def test_invalid_arguments_never_reach_the_store(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub],
) -> None:
    search, stub = served
    code, details = await _code(stub.QueryEvents(qs.QueryEventsRequest(page_size=-5)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_size")
    code, details = await _code(stub.QueryEvents(qs.QueryEventsRequest(page_token="%%%")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("page_token")
    assert search.bodies == []


async def test_store_refusing_a_forged_token_is_invalid_argument(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub],
) -> None:
    search, stub = served
    search.error = SearchRequestError(400, "search_after has wrong type")
    token = paging.encode_token(["not-a-date", 5], qs.EventFilter())
    code, _ = await _code(stub.QueryEvents(qs.QueryEventsRequest(page_token=token)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = await _code(stub.QueryEvents(qs.QueryEventsRequest()))
    assert code == grpc.StatusCode.INTERNAL
    assert "search_after" not in details  # internals are not leaked


async def test_text_the_analyser_finds_no_word_in_is_invalid_once_nothing_matched(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub],
) -> None:
    search, stub = served
    search.words = False  # "→": no word for the analyser
    arrow = qs.EventFilter(text="→")
    code, details = await _code(stub.QueryEvents(qs.QueryEventsRequest(filter=arrow)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "filter.text: has no words to search for"
    code, details = await _code(stub.AggregateEvents(qs.AggregateEventsRequest(filter=arrow)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "filter.text: has no words to search for"
    assert search.analysed == ["→", "→"]


async def test_no_word_check_costs_nothing_when_events_match_or_no_text(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub],
) -> None:
    search, stub = served
    search.words = False
    await stub.QueryEvents(qs.QueryEventsRequest())  # nothing matched, but no text
    search.hits = [{"_source": {"event_id": "e1"}, "sort": [1, "e1"]}]
    reply = await stub.QueryEvents(qs.QueryEventsRequest(filter=qs.EventFilter(text="→")))
    assert [e.event.event_id for e in reply.events] == ["e1"]
    assert search.analysed == []


@pytest.mark.parametrize(
    "words",
    [
        True,
        SearchUnavailableError("analyse refused", status=403),
        SearchRequestError(400, "analyse refused"),
    ],
)
async def test_text_with_words_or_an_unanswered_analysis_keeps_the_empty_answer(
    served: tuple[FakeSearch, qs_grpc.QueryServiceAsyncStub], words: bool | Exception
) -> None:
    search, stub = served
    search.words = words
    reply = await stub.QueryEvents(qs.QueryEventsRequest(filter=qs.EventFilter(text="‼")))
    assert list(reply.events) == []
    assert reply.total_size == 0
    assert search.analysed == ["‼"]


async def test_reflection_lists_query_and_health_services() -> None:
    server = QueryServer(FakeSearch(), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            answer = await call.read()
            await call.done_writing()
            names = {s.name for s in answer.list_services_response.service}
        assert {"telemetry.v1.QueryService", "grpc.health.v1.Health"} <= names
    finally:
        await server.stop(grace_s=1)


class PartialSearch(FakeSearch):
    """Answers like OpenSearch when some shards did not answer: what the others found."""

    def __init__(self, shards: dict[str, Any]) -> None:
        super().__init__()
        self.shards = shards

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        await super().search(body, filter_path=filter_path)
        assert {"_shards.total", "_shards.successful", "_shards.failures.index"} <= set(
            filter_path.split(",")
        )
        hit = {"_source": {"event_id": "kept"}, "sort": [1, "kept"]}
        return {"_shards": self.shards, "hits": {"total": {"value": 1}, "hits": [hit]}}


async def _serve(search: FakeSearch, metrics: Metrics) -> tuple[QueryServer, grpc.aio.Channel]:
    server = QueryServer(search, host="127.0.0.1", port=0, metrics=metrics)
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


def _partial_count(metrics: Metrics, method: str, returned: str) -> float | None:
    return metrics.registry.get_sample_value(
        "indexer_query_partial_total", {"method": method, "returned": returned}
    )


# A red index's shard is in `total` but neither `successful` nor `failed`.
RED = {"total": 3, "successful": 2}


async def test_an_answer_missing_shards_is_refused_unless_partial_success_was_asked() -> None:
    metrics = Metrics()
    search = PartialSearch(RED)
    search.red = ["telemetry-2026-11-20"]
    server, channel = await _serve(search, metrics)
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        for call in (
            stub.QueryEvents(qs.QueryEventsRequest()),
            stub.AggregateEvents(qs.AggregateEventsRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            details = str(caught.value.details())
            assert "1 shard(s)" in details, details
            assert "telemetry-2026-11-20" in details, details
            assert "return_partial_success" in details
            trailers = dict(caught.value.trailing_metadata() or ())
            assert trailers.get("telemetry-partial-answer") == "refused"

        page = await stub.QueryEvents(qs.QueryEventsRequest(return_partial_success=True))
        counts = await stub.AggregateEvents(qs.AggregateEventsRequest(return_partial_success=True))
    finally:
        await channel.close()
        await server.stop(grace_s=1)
    assert [e.event.event_id for e in page.events] == ["kept"]
    assert list(page.unreachable) == ["telemetry-2026-11-20"]
    assert counts.total_count == 1
    assert list(counts.unreachable) == ["telemetry-2026-11-20"]
    for method in ("QueryEvents", "AggregateEvents"):
        assert _partial_count(metrics, method, "false") == 1, method
        assert _partial_count(metrics, method, "true") == 1, method


async def test_a_refusal_names_at_most_20_indices_and_the_answer_lists_them_all() -> None:
    # Years of red daily indices: named all, the status message (a trailer) would pass gRPC's
    # 16 KiB metadata limit and the caller get RESOURCE_EXHAUSTED instead of the refusal.
    search = PartialSearch({"total": 1100, "successful": 100})
    search.red = [f"telemetry-20{n // 28 + 1:02d}-01-{n % 28 + 1:02d}" for n in range(1000)]
    server, channel = await _serve(search, Metrics())
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueryEvents(qs.QueryEventsRequest())
        page = await stub.QueryEvents(qs.QueryEventsRequest(return_partial_success=True))
    finally:
        await channel.close()
        await server.stop(grace_s=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = str(caught.value.details())
    assert "(telemetry-2001-01-01, telemetry-2001-01-02," in details
    assert "telemetry-2001-01-20 and 980 more)" in details
    assert "telemetry-2001-01-21" not in details
    assert dict(caught.value.trailing_metadata() or ()).get("telemetry-partial-answer") == "refused"
    assert len(page.unreachable) == 1000


async def test_unreachable_names_failed_and_red_indices_or_else_the_pattern() -> None:
    metrics = Metrics()
    failed = {
        "total": 4,
        "successful": 2,
        "failed": 1,
        "failures": [{"index": "telemetry-2026-11-21"}, {"index": "telemetry-2026-11-21"}],
    }
    search = PartialSearch(failed)
    search.red = ["telemetry-2026-11-20"]
    server, channel = await _serve(search, metrics)
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        both = await stub.QueryEvents(qs.QueryEventsRequest(return_partial_success=True))
        # Which indices are red cannot be read: the answer still says part is missing.
        search.shards, search.red = RED, SearchUnavailableError("timed out")
        unknown = await stub.QueryEvents(qs.QueryEventsRequest(return_partial_success=True))
        search.shards = {"total": 3, "successful": 3}
        whole = await stub.QueryEvents(qs.QueryEventsRequest(return_partial_success=True))
    finally:
        await channel.close()
        await server.stop(grace_s=1)
    assert list(both.unreachable) == ["telemetry-2026-11-20", "telemetry-2026-11-21"]
    assert list(unknown.unreachable) == ["telemetry-*"]
    assert list(whole.unreachable) == []
    assert search.red_asked == 2  # a whole answer asks nothing more


class StartingSearch(FakeSearch):
    """Answers `first` (an answer missing a shard, or an error) until the shards have started."""

    def __init__(self, first: dict[str, Any] | Exception) -> None:
        super().__init__()
        self.first = first
        self.started = False

    async def wait_for_shards(self, timeout_s: float) -> bool:
        self.started = await super().wait_for_shards(timeout_s)
        return self.started

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        await super().search(body, filter_path=filter_path)
        if self.started:
            return {"_shards": {"total": 2, "successful": 2}, "hits": {"total": {"value": 7}}}
        if isinstance(self.first, Exception):
            raise self.first
        return self.first


@pytest.mark.parametrize(
    "first",
    [
        {"_shards": {"total": 2, "successful": 1}, "hits": {"total": {"value": 3}}},
        SearchUnavailableError("all shards failed", status=503),
    ],
    ids=["partial", "503"],
)
async def test_shards_that_start_within_the_wait_are_searched_again(
    first: dict[str, Any] | Exception,
) -> None:
    metrics = Metrics()
    search = StartingSearch(first)
    search.shards_start = True  # as a daily index's shard does a moment after its creation
    server, channel = await _serve(search, metrics)
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        page = await stub.QueryEvents(qs.QueryEventsRequest())
    finally:
        await channel.close()
        await server.stop(grace_s=1)
    assert page.total_size == 7
    assert list(page.unreachable) == []
    assert len(search.bodies) == 2
    assert search.waits == [1.0]
    assert _partial_count(metrics, "QueryEvents", "false") == 0


async def test_shards_that_do_not_start_or_an_outage_are_not_searched_again() -> None:
    metrics = Metrics()
    search = StartingSearch(SearchUnavailableError("all shards failed", status=503))
    server, channel = await _serve(search, metrics)
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        code, _ = await _code(stub.QueryEvents(qs.QueryEventsRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert (len(search.bodies), search.waits) == (1, [1.0])
        # Not answered at all (refused, timed out): nothing to wait for.
        search.first = SearchUnavailableError("connection refused")
        code, _ = await _code(stub.QueryEvents(qs.QueryEventsRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert (len(search.bodies), search.waits) == (2, [1.0])
    finally:
        await channel.close()
        await server.stop(grace_s=1)


async def test_a_red_index_costs_one_wait_until_a_search_is_answered_whole() -> None:
    search = StartingSearch({"_shards": {"total": 2, "successful": 1}, "hits": {"total": {}}})
    server, channel = await _serve(search, Metrics())
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        for _ in range(3):  # the index stays red: only the first query waits for it
            code, _ = await _code(stub.QueryEvents(qs.QueryEventsRequest()))
            assert code == grpc.StatusCode.UNAVAILABLE
        search.first = SearchUnavailableError("all shards failed", status=503)
        code, _ = await _code(stub.AggregateEvents(qs.AggregateEventsRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert (len(search.bodies), search.waits) == (4, [1.0])
        # Fixed: whole again. A later index whose shard starts late is waited for again.
        search.first = {"_shards": {"total": 2, "successful": 2}, "hits": {"total": {"value": 4}}}
        assert (await stub.QueryEvents(qs.QueryEventsRequest())).total_size == 4
        search.first = SearchUnavailableError("all shards failed", status=503)
        search.shards_start = True
        assert (await stub.QueryEvents(qs.QueryEventsRequest())).total_size == 7
        assert (len(search.bodies), search.waits) == (7, [1.0, 1.0])
    finally:
        await channel.close()
        await server.stop(grace_s=1)


class SlowSearch(FakeSearch):
    """Holds every search until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.searching = 0

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        self.searching += 1
        await self.release.wait()
        return await super().search(body, filter_path=filter_path)


async def test_calls_past_the_bound_are_resource_exhausted_and_the_others_answered() -> None:
    search = SlowSearch()
    server = QueryServer(search, host="127.0.0.1", port=0, max_in_flight=3)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = qs_grpc.QueryServiceStub(channel)
    try:
        held = [
            asyncio.ensure_future(stub.QueryEvents(qs.QueryEventsRequest(page_size=1000)))
            for _ in range(3)
        ]
        for _ in range(500):
            if search.searching == 3:
                break
            await asyncio.sleep(0.01)
        assert search.searching == 3

        # Answered at once, not held (without the bound it would wait out its deadline).
        code, details = await _code(stub.AggregateEvents(qs.AggregateEventsRequest(), timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 queries at once" in details
        assert search.searching == 3  # never reached the store
        # Health checks are not queries: a probe is answered whatever the load (here
        # NOT_SERVING, as no service has said it is ready), never RESOURCE_EXHAUSTED.
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING

        search.release.set()
        for call in held:
            assert (await call).total_size == 0
        # Room again once they are answered.
        assert (await stub.AggregateEvents(qs.AggregateEventsRequest())).total_count == 0
    finally:
        search.release.set()
        await channel.close()
        await server.stop(grace_s=1)


class StoredSearch(FakeSearch):
    """Answers each search from `stored` (newest first) as OpenSearch would: `size` hits
    after `search_after`; with `partial`, each answer misses a shard of a red index."""

    def __init__(self, stored: list[dict[str, Any]], *, partial: bool = False) -> None:
        super().__init__()
        self.stored = stored
        self.partial = partial
        self.red = ["telemetry-2026-11-20"]

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        await super().search(body, filter_path=filter_path)
        after = body.get("search_after")
        start = 0
        if after is not None:
            start = next(n + 1 for n, hit in enumerate(self.stored) if hit["sort"] == after)
        answer: dict[str, Any] = {
            "hits": {
                "total": {"value": len(self.stored)},
                "hits": self.stored[start : start + body["size"]],
            }
        }
        if self.partial:
            answer["_shards"] = RED
        return answer


def _stored(count: int) -> list[dict[str, Any]]:
    return [
        {"_source": {"event_id": f"e-{n:04d}"}, "sort": [10_000 - n, f"e-{n:04d}"]}
        for n in range(count)
    ]


async def test_a_large_page_is_fetched_in_parts_and_answered_whole() -> None:
    search = StoredSearch(_stored(1500), partial=True)
    metrics = Metrics()
    server, channel = await _serve(search, metrics)
    try:
        stub = qs_grpc.QueryServiceStub(channel)
        page = await stub.QueryEvents(
            qs.QueryEventsRequest(page_size=1000, return_partial_success=True)
        )
        code, _ = await _code(stub.QueryEvents(qs.QueryEventsRequest(page_size=1000)))
    finally:
        await channel.close()
        await server.stop(grace_s=1)
    assert [e.event.event_id for e in page.events] == [f"e-{n:04d}" for n in range(1000)]
    assert page.total_size == 1500
    assert paging.decode_token(page.next_page_token, qs.EventFilter()) == [9001, "e-0999"]
    # Each fetch missed the red index's shard: it is named once, and the call is counted,
    # logged and looked into (which indices are red) once, not once per fetch.
    assert list(page.unreachable) == ["telemetry-2026-11-20"]
    assert [body["size"] for body in search.bodies[:3]] == [51, 201, 751]
    assert _partial_count(metrics, "QueryEvents", "true") == 1
    # Without return_partial_success, the partial first fetch refuses the call.
    assert code == grpc.StatusCode.UNAVAILABLE
    assert _partial_count(metrics, "QueryEvents", "false") == 1
    assert search.red_asked == 2
