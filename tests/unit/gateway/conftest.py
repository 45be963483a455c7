"""Fakes for the gateway's ports: a broker that remembers message ids, a query service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from telemetry.v1 import event_pb2, query_service_pb2

from gateway import Gateway, GatewayConfig
from gateway.errors import GatewayError
from pipeline.config import load

WRITE_KEY = "wk-unit-0123456789"
READ_KEY = "rk-unit-0123456789"
APP_ID = "app-1"


class FakeBroker:
    """Stores payloads by message id like JetStream's duplicate window; can be told to fail."""

    def __init__(self, *, max_payload: int = 1024 * 1024) -> None:
        self.max_payload = max_payload
        self.stored: dict[str, tuple[str, bytes]] = {}
        self.fail: GatewayError | None = None
        self.calls = 0

    async def start(self) -> None:
        pass

    async def stop(self, *, timeout_s: float) -> None:
        pass

    async def ready(self) -> tuple[bool, str]:
        return True, "ok"

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        assert len(payload) <= self.max_payload
        if msg_id in self.stored:
            return True
        self.stored[msg_id] = (subject, payload)
        return False

    def batches(self) -> list[event_pb2.RawBatch]:
        return [event_pb2.RawBatch.FromString(payload) for _, payload in self.stored.values()]


class FakeQuery:
    async def query_events(
        self, request: query_service_pb2.QueryEventsRequest
    ) -> query_service_pb2.QueryEventsResponse:
        return query_service_pb2.QueryEventsResponse(total_size=0)

    async def aggregate_events(
        self, request: query_service_pb2.AggregateEventsRequest
    ) -> query_service_pb2.AggregateEventsResponse:
        return query_service_pb2.AggregateEventsResponse(total_count=0)

    async def close(self) -> None:
        pass


def unit_config(**env: str) -> GatewayConfig:
    return load(
        GatewayConfig,
        {
            "GATEWAY_WRITE_KEYS": f"{WRITE_KEY}:{APP_ID}",
            "GATEWAY_READ_KEYS": f"{READ_KEY}:reader",
            **env,
        },
    )


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def gateway(broker: FakeBroker) -> Gateway:
    return Gateway(unit_config(), broker=broker, query=FakeQuery())


def asgi_client(gateway: Gateway) -> httpx.AsyncClient:
    """An httpx client calling the gateway's ASGI app in process (no sockets)."""
    transport = httpx.ASGITransport(app=gateway.app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(gateway) as http:
        yield http
