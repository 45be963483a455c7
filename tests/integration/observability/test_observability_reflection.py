"""Every gRPC port answers health checks and server reflection, so tools need no proto files.

The QueryEvents call below is built from reflected descriptors alone: this module imports
no generated code, just as `grpcurl -plaintext 127.0.0.1:50053 ...` would work.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.integration.observability.observability_support import events, wait_until
from tests.procs import WRITE_KEY, Pipeline

pytestmark = pytest.mark.integration

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@pytest.fixture
def channels(pipeline: Pipeline) -> Iterator[dict[str, grpc.Channel]]:
    ports = {
        "telemetry.v1.IngestService": pipeline.gateway_grpc_port,
        "telemetry.v1.EnrichService": pipeline.enricher_grpc_port,
        "telemetry.v1.QueryService": pipeline.indexer_grpc_port,
    }
    opened = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, port in ports.items()}
    try:
        yield opened
    finally:
        for channel in opened.values():
            channel.close()


def test_reflection_lists_the_services_of_every_port(channels: dict[str, grpc.Channel]) -> None:
    for service, channel in channels.items():
        listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert listed == {service, HEALTH, REFLECTION}, service


def test_every_port_reports_serving(channels: dict[str, grpc.Channel]) -> None:
    for service, channel in channels.items():
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, (service, name)


def test_query_events_with_reflected_descriptors_only(
    pipeline: Pipeline, channels: dict[str, grpc.Channel]
) -> None:
    name = f"obs_reflection_{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=pipeline.gateway.base_url, timeout=10.0) as client:
        answer = client.post(
            "/v1/track", json=events(3, name=name), headers={"X-Api-Key": WRITE_KEY}
        )
    assert answer.status_code == 202, answer.text

    channel = channels["telemetry.v1.QueryService"]
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("telemetry.v1.QueryService").FindMethodByName("QueryEvents")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/telemetry.v1.QueryService/QueryEvents",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    request = request_class(page_size=10)
    request.filter.event_names.append(name)
    found: list[Message] = []

    def queried() -> bool:
        try:
            response = call(request, timeout=5)
        except grpc.RpcError as err:
            # UNAVAILABLE is "retry": e.g. the daily index is being created right now.
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                return False
            raise
        found[:] = list(response.events)
        return len(found) == 3

    wait_until(queried, what="the events through a reflected QueryEvents")
    assert {event.event.event_name for event in found} == {name}  # type: ignore[attr-defined]
