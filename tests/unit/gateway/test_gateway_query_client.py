"""GrpcQueryClient: which UNAVAILABLE details reach the JSON caller (a real gRPC server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from telemetry.v1 import query_service_pb2, query_service_pb2_grpc

from gateway._query import GrpcQueryClient
from gateway.errors import Unavailable
from pipeline.query_names import STORE_UNAVAILABLE_TRAILER
from tests.servers import free_port, serving_query

STORE_DOWN = "the event store is unavailable; try again later"


class AbortingQueryService(query_service_pb2_grpc.QueryServiceServicer):
    """Aborts every call UNAVAILABLE with `details` and `trailers`."""

    def __init__(self) -> None:
        self.details = STORE_DOWN
        self.trailers: tuple[tuple[str, str], ...] = ((STORE_UNAVAILABLE_TRAILER, "unavailable"),)

    async def QueryEvents(
        self,
        request: query_service_pb2.QueryEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.QueryEventsResponse:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.details, self.trailers)
        raise AssertionError("abort raises")

    async def AggregateEvents(
        self,
        request: query_service_pb2.AggregateEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.AggregateEventsResponse:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.details, self.trailers)
        raise AssertionError("abort raises")


@pytest.fixture
async def served() -> AsyncIterator[tuple[AbortingQueryService, GrpcQueryClient]]:
    servicer = AbortingQueryService()
    async with serving_query(servicer) as port:
        client = GrpcQueryClient(f"127.0.0.1:{port}", timeout_s=5)
        yield servicer, client
        await client.close()


async def _unavailable(client: GrpcQueryClient) -> tuple[str, str]:
    """The messages of QueryEvents' and AggregateEvents' Unavailable."""
    with pytest.raises(Unavailable) as events:
        await client.query_events(query_service_pb2.QueryEventsRequest())
    with pytest.raises(Unavailable) as aggregate:
        await client.aggregate_events(query_service_pb2.AggregateEventsRequest())
    return str(events.value), str(aggregate.value)


async def test_an_event_store_the_query_service_says_is_down_is_said_in_its_words(
    served: tuple[AbortingQueryService, GrpcQueryClient],
) -> None:
    _, client = served
    assert await _unavailable(client) == (STORE_DOWN, STORE_DOWN)


async def test_an_unavailable_without_the_query_services_mark_stays_vague(
    served: tuple[AbortingQueryService, GrpcQueryClient],
) -> None:
    # A proxy in between, or a QueryService older than the mark: words not meant for callers.
    servicer, client = served
    servicer.details, servicer.trailers = "upstream connect error or disconnect", ()
    vague = "the query service is unavailable"
    assert await _unavailable(client) == (vague, vague)


async def test_a_query_service_nobody_answers_at_is_unavailable_without_the_channels_words() -> (
    None
):
    client = GrpcQueryClient(f"127.0.0.1:{free_port()}", timeout_s=5)
    try:
        messages = await _unavailable(client)
    finally:
        await client.close()
    assert messages == ("the query service is unavailable", "the query service is unavailable")
