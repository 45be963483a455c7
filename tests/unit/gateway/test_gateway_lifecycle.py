"""start()/stop() on real sockets with a fake broker: in-flight requests finish first."""

from __future__ import annotations

import asyncio

import httpx

from gateway import Gateway
from tests.unit.gateway.conftest import WRITE_KEY, FakeBroker, FakeQuery, unit_config

ONE = (
    b'[{"event_id":"e-1","session_id":"s","user_id":"u","event_name":"n",'
    b'"client_timestamp":"2024-01-01T00:00:00Z"}]'
)


class GatedBroker(FakeBroker):
    """Holds every publish until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.stopped = False

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        self.entered.set()
        await self.gate.wait()
        return await super().publish(subject, payload, msg_id=msg_id)

    async def stop(self) -> None:
        self.stopped = True


async def test_stop_lets_in_flight_publishes_finish_before_closing_the_broker() -> None:
    broker = GatedBroker()
    gateway = Gateway(
        unit_config(GATEWAY_HTTP_PORT="0", GATEWAY_GRPC_PORT="0"), broker=broker, query=FakeQuery()
    )
    await gateway.start()
    await gateway.start()  # idempotent
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        pending = asyncio.create_task(
            http.post("/v1/track", content=ONE, headers={"X-Api-Key": WRITE_KEY})
        )
        await broker.entered.wait()
        stopping = asyncio.create_task(gateway.stop())
        await asyncio.sleep(0)
        assert not broker.stopped
        assert gateway.core.in_flight == 1

        broker.gate.set()
        response = await pending
        await stopping

    assert response.status_code == 202
    assert len(broker.stored) == 1
    assert broker.stopped
    await gateway.stop()  # idempotent
