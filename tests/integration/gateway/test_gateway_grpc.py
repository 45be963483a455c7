"""gRPC IngestService.IngestEvents with grpc.aio against a real nats-server; health, reflection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client
from telemetry.v1 import event_pb2, ingest_service_pb2, ingest_service_pb2_grpc

from gateway import Gateway
from tests.integration.gateway.conftest import READ_KEY, WRITE_KEY, raw_messages
from tests.integration.gateway.samples import SAMPLE_EVENTS

pytestmark = pytest.mark.integration

WRITE = (("authorization", f"Bearer {WRITE_KEY}"),)


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as chan:
        yield chan


async def test_ingest_events_stores_valid_events_and_lists_rejections(
    channel: grpc.aio.Channel, nc: Client
) -> None:
    stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
    bad = event_pb2.Event(event_id="evt-bad", session_id="s", user_id="u", event_name="e")
    request = ingest_service_pb2.IngestEventsRequest(events=[*SAMPLE_EVENTS, bad])

    response = await stub.IngestEvents(request, metadata=WRITE)

    assert response.accepted == 2
    assert [(r.index, r.event_id, r.reason) for r in response.rejected] == [
        (2, "evt-bad", event_pb2.REJECTION_REASON_MISSING_FIELD)
    ]
    (_, batch), *rest = await raw_messages(nc)
    assert rest == []
    assert list(batch.events) == SAMPLE_EVENTS
    assert batch.context.protocol == event_pb2.INGEST_PROTOCOL_GRPC
    assert batch.context.app_id == "ios-app"
    assert batch.context.batch_id == response.batch_id
    assert len(batch.context.request_id) == 32

    again = await stub.IngestEvents(request, metadata=WRITE)
    assert again.duplicate is True
    assert len(await raw_messages(nc)) == 1


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-api-key", READ_KEY),), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_ingest_events_needs_a_write_key(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    stub = ingest_service_pb2_grpc.IngestServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(
            ingest_service_pb2.IngestEventsRequest(events=SAMPLE_EVENTS), metadata=metadata
        )

    assert caught.value.code() == code


async def test_empty_batch_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    stub = ingest_service_pb2_grpc.IngestServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(ingest_service_pb2.IngestEventsRequest(), metadata=WRITE)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_turns_serving_and_reflection_lists_the_service(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(100):
        answer = await health.Check(
            health_pb2.HealthCheckRequest(service="telemetry.v1.IngestService")
        )
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.1)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    reply = await call.read()
    names = {s.name for s in reply.list_services_response.service}
    assert "telemetry.v1.IngestService" in names
    call.cancel()
