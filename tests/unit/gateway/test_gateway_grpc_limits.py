"""IngestEvents over a real gRPC socket: a message past the limit is INVALID_ARGUMENT like
every batch past a limit, and a call without a valid key, or past its key's rate, is refused
before its message is read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from telemetry.v1 import ingest_service_pb2, ingest_service_pb2_grpc

from gateway import Gateway
from gateway._validate import check_proto_count
from gateway.errors import TooLarge
from tests.unit.gateway.conftest import WRITE_KEY, FakeBroker, FakeQuery, unit_config
from tests.unit.gateway.test_gateway_ingest import proto_request

LIMIT = 64 * 1024
MAX_EVENTS = 100
KEY = (("x-api-key", WRITE_KEY),)


def _request(size: int) -> ingest_service_pb2.IngestEventsRequest:
    """A request of one valid event whose metadata makes it at least `size` bytes."""
    request = proto_request()
    request.events[0].metadata.update({f"k{n}": "x" * 1000 for n in range(size // 1000 + 1)})
    return request


@pytest.fixture
def settings() -> dict[str, str]:
    """Gateway settings beyond the limits below (a test overrides the fixture)."""
    return {}


@pytest.fixture
async def stub(
    settings: dict[str, str],
) -> AsyncIterator[ingest_service_pb2_grpc.IngestServiceStub]:
    config = unit_config(
        GATEWAY_HTTP_PORT="0",
        GATEWAY_GRPC_PORT="0",
        GATEWAY_MAX_DECOMPRESSED_BYTES=str(LIMIT),
        GATEWAY_MAX_METADATA_ENTRIES="1000",
        GATEWAY_MAX_EVENTS_PER_BATCH=str(MAX_EVENTS),
        GATEWAY_RETRY_AFTER_S="7",
        **settings,
    )
    gateway = Gateway(config, broker=FakeBroker(), query=FakeQuery())
    await gateway.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{gateway.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    try:
        yield ingest_service_pb2_grpc.IngestServiceStub(channel)
    finally:
        await channel.close()
        await gateway.stop()


async def test_a_message_past_the_limit_is_invalid_argument_not_retry_later(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
) -> None:
    request = _request(LIMIT + 1000)
    assert LIMIT < request.ByteSize() < 2 * LIMIT

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(request, metadata=KEY)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"the message is larger than {LIMIT} bytes; split the batch and send the parts"
    )


async def test_a_message_within_the_limit_is_stored(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
) -> None:
    response = await stub.IngestEvents(_request(LIMIT - 2000), metadata=KEY)

    assert response.accepted == 1


async def test_a_call_without_a_key_is_refused_before_its_message_is_read(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
) -> None:
    # Past the receive cap: had the message been read, gRPC would have refused its size.
    request = _request(4 * LIMIT)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(request, metadata=(("x-api-key", "wk-nobody"),))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "settings", [{"GATEWAY_RATE_LIMIT_RPS": "0.05", "GATEWAY_RATE_LIMIT_BURST": "1"}]
)
async def test_a_call_past_its_rate_is_refused_before_its_message_is_read(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
) -> None:
    await stub.IngestEvents(_request(1000), metadata=KEY)  # the burst of one: a token each 20 s

    # Past the receive cap: had the message been read, gRPC would have refused its size.
    call = stub.IngestEvents(_request(4 * LIMIT), metadata=KEY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "past its request rate" in (caught.value.details() or "")
    assert ("retry-after", "20") in tuple(await call.trailing_metadata() or ())


async def test_a_message_of_too_many_events_is_refused_before_it_is_parsed(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
) -> None:
    # Empty events take two bytes each on the wire and a Python object each once parsed.
    request = ingest_service_pb2.IngestEventsRequest()
    for _ in range(10_000):
        request.events.add()
    assert request.ByteSize() < LIMIT

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEvents(request, metadata=KEY)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # "more than": counted on the wire, stopping past the limit, not after a parse.
    assert caught.value.details().startswith(f"the batch has more than {MAX_EVENTS} events")


def _wire(request: ingest_service_pb2.IngestEventsRequest) -> bytes:
    return request.SerializeToString()


def test_the_wire_count_reads_real_batches_and_leaves_broken_ones_to_the_parser() -> None:
    full = proto_request()
    template = full.events[0]
    for n in range(999):
        event = full.events.add()
        event.CopyFrom(template)
        event.event_id = f"e-{n}\n"  # 0x0a bytes inside events do not count
    full.sent_at.seconds = 1_700_000_000
    full.idempotency_key = "key\n" * 10
    assert len(full.events) == 1000

    full.events[0].metadata["lines"] = "\n" * 70_000  # and many
    check_proto_count(_wire(full), max_events=1000)  # at the limit: not refused
    with pytest.raises(TooLarge, match="more than 999 events"):
        check_proto_count(_wire(full), max_events=999)
    # Not protobuf (wire type 7, a group, a length past the end): left to the parser.
    for broken in (b"\x0f", b"\x0b", b"\x0a\xff\x7f"):
        check_proto_count(broken + b"\x0a\x00" * 70_000, max_events=1000)
