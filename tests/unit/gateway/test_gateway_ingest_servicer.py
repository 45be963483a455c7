"""IngestService.IngestEvents in process: the servicer called with a stand-in context."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, ingest_service_pb2

from gateway import Gateway
from gateway._auth import KeyStore
from gateway._grpc import IngestServicer
from gateway._metrics import Metrics
from gateway._ratelimit import RateLimiter
from tests.unit.gateway.conftest import WRITE_KEY, FakeBroker, FakeQuery, unit_config


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """What IngestEvents reads from its ServicerContext, and an abort that raises."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", WRITE_KEY),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


def request(events: int) -> ingest_service_pb2.IngestEventsRequest:
    return ingest_service_pb2.IngestEventsRequest(
        events=[
            event_pb2.Event(
                event_id=f"e-{n}",
                session_id="s",
                user_id="u",
                event_name="tap",
                client_timestamp=Timestamp(seconds=1_700_000_000),
                metadata={"note": "x" * 200},
            )
            for n in range(events)
        ]
    )


def _served(limiter: RateLimiter, **settings: str) -> tuple[Gateway, IngestServicer]:
    """A gateway on fakes, and an IngestServicer on its core answering Retry-After 7."""
    config = unit_config(**settings)
    gateway = Gateway(config, broker=FakeBroker(), query=FakeQuery())
    servicer = IngestServicer(
        core=gateway.core,
        keys=KeyStore.from_config(config),
        metrics=Metrics(),
        retry_after_s=7,
        limiter=limiter,
    )
    return gateway, servicer


async def test_a_request_past_the_bytes_budget_is_resource_exhausted() -> None:
    gateway, servicer = _served(RateLimiter(rate=0, burst=1), GATEWAY_MAX_IN_FLIGHT_BYTES="4000")
    call: Any = Context()
    big = request(10)
    assert 2000 < big.ByteSize() < 4000

    with gateway.core.admit() as other:  # another request holds half the budget
        other.charge(2000)
        with pytest.raises(Aborted) as refused:
            await servicer.IngestEvents(big, call)
    answer = await servicer.IngestEvents(big, call)

    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(refused.value) == "too many bytes in flight"
    assert call.trailing == (("retry-after", "7"),)
    assert answer.accepted == 10
