"""QueryService maps our errors to canonical gRPC codes (a real gRPC server, a fake store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import paging
from indexer.api import QueryServer
from indexer.errors import SearchRequestError, SearchUnavailableError
from indexer.metrics import Metrics


class FakeSearch:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.bodies: list[dict[str, Any]] = []

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        return {"hits": {"total": {"value": 0}, "hits": []}}


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
    """Answers like OpenSearch when one shard failed: what the others found, and the count."""

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        await super().search(body, filter_path=filter_path)
        assert "_shards.failed" in filter_path.split(",")
        return {"_shards": {"failed": 1}, "hits": {"total": {"value": 0}, "hits": []}}


async def test_an_answer_without_some_shards_is_counted_and_still_returned() -> None:
    metrics = Metrics()
    server = QueryServer(PartialSearch(), host="127.0.0.1", port=0, metrics=metrics)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = qs_grpc.QueryServiceStub(channel)
            page = await stub.QueryEvents(qs.QueryEventsRequest())
            counts = await stub.AggregateEvents(qs.AggregateEventsRequest())
    finally:
        await server.stop(grace_s=1)
    assert page.total_size == 0
    assert counts.total_count == 0
    for method in ("QueryEvents", "AggregateEvents"):
        partial = metrics.registry.get_sample_value(
            "indexer_query_partial_total", {"method": method}
        )
        assert partial == 1, method
