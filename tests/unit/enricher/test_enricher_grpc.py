"""gRPC EnrichService over a real loopback channel (grpc.aio), with health and reflection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from telemetry.v1 import enrich_service_pb2, enrich_service_pb2_grpc, event_pb2

from enricher._enrich import EnrichOptions
from enricher._geo import OfflineGeo
from enricher._grpc import MAX_RESPONSE_BYTES, SERVICE_NAME, EnrichServicer, GrpcServer
from enricher._metrics import Metrics

MAX_EVENTS = 50


@contextlib.asynccontextmanager
async def _serving(servicer: EnrichServicer) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `servicer`, served on a loopback port of its own."""
    server = GrpcServer(servicer, host="127.0.0.1", port=0)
    await server.start()
    await server.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as chan:
            yield chan
    finally:
        await server.stop(grace_s=1)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    servicer = EnrichServicer(
        geo=OfflineGeo(), options=EnrichOptions(), max_events=MAX_EVENTS, metrics=Metrics()
    )
    async with _serving(servicer) as chan:
        yield chan


def _request(n: int = 2) -> enrich_service_pb2.EnrichEventsRequest:
    request = enrich_service_pb2.EnrichEventsRequest()
    ctx = request.batch.context
    ctx.client_ip = "81.2.69.142"
    ctx.app_id = "shop"
    ctx.received_at.seconds = 1_700_000_000
    ctx.sent_at.seconds = 1_700_000_060
    for i in range(n):
        event = request.batch.events.add(
            event_id=f"e{i}", event_name="open", device_os="iPadOS 17.0.1"
        )
        event.client_timestamp.seconds = 1_700_000_000
    return request


async def test_enrich_events_returns_enriched_events_in_order(channel: grpc.aio.Channel) -> None:
    stub = enrich_service_pb2_grpc.EnrichServiceStub(channel)
    response = await stub.EnrichEvents(_request(3))
    assert [e.event.event_id for e in response.events] == ["e0", "e1", "e2"]
    first = response.events[0]
    assert first.geo.country_code == "GB"
    assert (first.os_name, first.os_version) == ("iPadOS", "17.0.1")
    assert first.clock_status == event_pb2.CLOCK_STATUS_CORRECTED
    assert first.corrected_timestamp.seconds == 1_700_000_000 - 60
    assert first.app_id == "shop"


async def test_batch_without_received_at_uses_now(channel: grpc.aio.Channel) -> None:
    request = _request(1)
    request.batch.context.ClearField("received_at")
    request.batch.context.ClearField("sent_at")
    request.batch.events[0].client_timestamp.seconds = int(time.time()) - 5
    stub = enrich_service_pb2_grpc.EnrichServiceStub(channel)
    response = await stub.EnrichEvents(request)
    only = response.events[0]
    assert abs(only.received_at.seconds - time.time()) < 3600
    assert only.clock_status == event_pb2.CLOCK_STATUS_UNCORRECTED


async def test_too_many_events_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    stub = enrich_service_pb2_grpc.EnrichServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnrichEvents(_request(MAX_EVENTS + 1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch.events" in (caught.value.details() or "")


async def test_events_too_large_to_answer_are_resource_exhausted_saying_so() -> None:
    # The request is within the 4 MiB a message may hold; enriched, it is about twice that.
    servicer = EnrichServicer(
        geo=OfflineGeo(), options=EnrichOptions(), max_events=10_000, metrics=Metrics()
    )
    request = _too_large_to_answer()
    assert 2_000_000 < request.ByteSize() < MAX_RESPONSE_BYTES
    async with _serving(servicer) as chan:
        stub = enrich_service_pb2_grpc.EnrichServiceStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EnrichEvents(request)
        small = await stub.EnrichEvents(_request(3))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "send fewer per request" in (caught.value.details() or "")
    assert len(small.events) == 3


def _too_large_to_answer() -> enrich_service_pb2.EnrichEventsRequest:
    """1,000 events whose metadata makes their text 2,510 characters long each."""
    request = _request(1000)
    for event in request.batch.events:
        event.metadata["blob"] = "x " * 1250
    return request


async def test_events_whose_text_is_cut_are_counted_once_answered() -> None:
    # As the consumer counts the events it publishes: a call refused, its 1,000 texts cut
    # to 2,000 characters, counts none.
    metrics = Metrics()
    servicer = EnrichServicer(
        geo=OfflineGeo(),
        options=EnrichOptions(event_message_max_chars=2000),
        max_events=10_000,
        metrics=metrics,
    )
    request = _request(3)
    for event in request.batch.events[:2]:
        event.metadata["note"] = "word " * 500
    async with _serving(servicer) as chan:
        stub = enrich_service_pb2_grpc.EnrichServiceStub(chan)
        response = await stub.EnrichEvents(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EnrichEvents(_too_large_to_answer())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [len(e.event_message) <= 2000 for e in response.events] == [True] * 3
    assert response.events[2].event_message == "open"
    cut = metrics.registry.get_sample_value("enricher_event_message_truncated_total")
    assert cut == 2
    assert metrics.registry.get_sample_value("enricher_grpc_events_total") == 3


async def test_bad_app_id_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    request = _request(1)
    request.batch.context.app_id = "no spaces"
    stub = enrich_service_pb2_grpc.EnrichServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EnrichEvents(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_says_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: list[str] = []
    async for reply in stub.ServerReflectionInfo(iter([request])):
        names.extend(s.name for s in reply.list_services_response.service)
    assert SERVICE_NAME in names
    assert SERVICE_NAME == "telemetry.v1.EnrichService"
