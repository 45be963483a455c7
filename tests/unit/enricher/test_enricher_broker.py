"""The enricher's Broker with NATS stood in for: a stream deleted under it is created again,
and its durable consumer with it, without a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from enricher._handler import Handler
from enricher._nats import Broker, ConsumerSettings
from pipeline import natsconn
from pipeline.config import load
from pipeline.settings import NatsSettings
from tests.unit.nats_fakes import FakeJetStream, FakeNats

SETTINGS = ConsumerSettings(
    name="enricher", ack_wait_s=30.0, max_ack_pending=16, fetch_batch=4, fetch_timeout_s=0.01
)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(0.005)


class NoMessages:
    async def handle(self, deliveries: list[Any]) -> None:
        raise AssertionError("nothing is delivered")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enricher._nats._RETRY_FETCH_AFTER_ERROR_S", 0.005)
    monkeypatch.setattr(natsconn, "STREAM_RETRY_S", 0.01, raising=False)


async def open_broker(nc: FakeNats, monkeypatch: pytest.MonkeyPatch) -> Broker:
    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        return nc

    monkeypatch.setattr("enricher._nats.natsconn.connect", connect)
    broker = await Broker.connect(load(NatsSettings, {}), timeout_s=1.0)
    await broker.ensure_streams()
    await broker.bind(SETTINGS, subscriptions=1)
    return broker


@pytest.mark.parametrize("stream", ["TELEMETRY_RAW", "TELEMETRY_ENRICHED", "TELEMETRY_DLQ"])
async def test_a_deleted_stream_is_created_again_and_its_consumer_too(
    stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = FakeNats()
    js: FakeJetStream = nc.js
    broker = await open_broker(nc, monkeypatch)
    [loop] = broker.fetch_loops(cast(Handler, NoMessages()), SETTINGS)
    running = asyncio.create_task(loop.run())
    try:
        assert await broker.ready() == (True, "ok")
        js.delete_stream(stream)  # by hand; the raw stream's consumer goes with it
        assert await broker.ready() == (False, f"stream {stream} missing")

        async def ready() -> bool:
            return await broker.ready() == (True, "ok")

        await until(ready, "ready again")
        assert stream in js.streams
        assert ("TELEMETRY_RAW", "enricher") in js.consumers
    finally:
        loop.stop()
        await asyncio.wait_for(running, 5)
        await broker.close(timeout_s=1.0)
