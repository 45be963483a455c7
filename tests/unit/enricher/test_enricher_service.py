"""The enricher as a service, on real sockets, with its NATS side stood in for: readiness,
gRPC health, and what becomes of its consuming."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from enricher._service import Enricher
from enricher.config import Config
from pipeline.config import load


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(0.005)


class Loop:
    """A fetch loop that fetches nothing until it is stopped, or ends on `error`."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self._failed = asyncio.Event()
        self.error: Exception | None = None

    def fail(self, error: Exception) -> None:
        self.error = error
        self._failed.set()

    async def run(self) -> None:
        stopped = asyncio.create_task(self._stopped.wait())
        failed = asyncio.create_task(self._failed.wait())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        if self.error is not None and not self._stopped.is_set():
            raise self.error

    def stop(self) -> None:
        self._stopped.set()

    async def pulls_done(self) -> None:
        await self._stopped.wait()


class Broker:
    """The enricher's side of NATS: opened once `up` is set; ready while `answers`."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.answers = True
        self.opened = 0
        self.closed = 0
        self.loops: list[Loop] = []

    async def open(self, *_: Any, **__: Any) -> Broker:
        await self.up.wait()
        self.opened += 1
        return self

    max_payload = 1024 * 1024

    def sink(self, *, timeout_s: float) -> object:
        return object()

    def fetch_loops(self, handler: object, settings: object) -> list[Loop]:
        self.loops = [Loop(), Loop()]
        return self.loops

    async def ready(self) -> tuple[bool, str]:
        return (True, "ok") if self.answers else (False, "stream TELEMETRY_RAW missing")

    async def pending(self) -> int:
        return 0

    async def close(self) -> None:
        self.closed += 1


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    stand_in = Broker()
    monkeypatch.setattr("enricher._service._nats.Broker.open", stand_in.open)
    monkeypatch.setattr("enricher._service.CONSUME_RESTART_S", 0.01, raising=False)
    return stand_in


@pytest.fixture
async def enricher() -> AsyncIterator[Enricher]:
    service = Enricher(
        load(
            Config,
            {"ENRICHER_GRPC_PORT": "0", "ENRICHER_HTTP_PORT": "0", "ENRICHER_STOP_TIMEOUT_S": "1"},
        )
    )
    yield service
    await service.stop()


async def readyz(enricher: Enricher) -> int:
    return (await readyz_answer(enricher))[0]


async def readyz_answer(enricher: Enricher) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{enricher.http_port}") as http:
        answer = await http.get("/readyz")
    return answer.status_code, answer.json()["reason"]


async def health(enricher: Enricher) -> list[int]:
    """gRPC health, overall and EnrichService's."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{enricher.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", "telemetry.v1.EnrichService")
        ]


SERVING = [health_pb2.HealthCheckResponse.SERVING] * 2
NOT_SERVING = [health_pb2.HealthCheckResponse.NOT_SERVING] * 2


async def test_grpc_health_is_not_serving_until_ready_and_whenever_not_ready(
    broker: Broker, enricher: Enricher
) -> None:
    await enricher.start()
    assert await readyz(enricher) == 503  # NATS not connected yet
    assert await health(enricher) == NOT_SERVING

    broker.up.set()

    async def ready() -> bool:
        return await readyz(enricher) == 200

    await until(ready, "ready")
    assert await health(enricher) == SERVING

    broker.answers = False  # a stream lost, say
    assert await readyz(enricher) == 503
    assert await health(enricher) == NOT_SERVING


async def test_consuming_that_ends_on_an_error_is_named_logged_and_started_again(
    broker: Broker, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    broker.up.set()
    await enricher.start()

    async def ready() -> bool:
        return await readyz(enricher) == 200

    await until(ready, "ready")
    broker.up.clear()  # NATS away when it starts again: the error stays named meanwhile
    first, second = broker.loops
    first.fail(RuntimeError("fetch loop bug"))

    async def named() -> bool:
        return await readyz_answer(enricher) == (
            503,
            "consuming stopped on an error: RuntimeError('fetch loop bug')",
        )

    await until(named, "readiness naming the error")
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith(
        "consuming stopped on an error: RuntimeError('fetch loop bug'); starting it again in"
    )
    assert line.exc_info is not None  # with its stack
    assert broker.closed == 1  # the other loop ended too, and the connection was closed

    broker.up.set()
    await until(ready, "ready again, without a restart of the process")
    assert broker.opened == 2
    assert broker.loops != [first, second]
