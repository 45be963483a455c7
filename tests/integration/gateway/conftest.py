"""A private nats-server per module and a gateway per test, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from telemetry.v1 import event_pb2

from gateway import Gateway, GatewayConfig
from pipeline import subjects
from pipeline.config import load
from tests.servers import NatsProcess

WRITE_KEY = "wk-integration-0123456789"
READ_KEY = "rk-integration-0123456789"
APP_ID = "ios-app"
READY_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsProcess]:
    server = NatsProcess(Path(tmp_path_factory.mktemp("nats")))
    server.start()
    yield server
    server.stop()


def gateway_config(nats_url: str, **extra: str) -> GatewayConfig:
    env = {
        "NATS_URL": nats_url,
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_GRPC_PORT": "0",
        "GATEWAY_WRITE_KEYS": f"{WRITE_KEY}:{APP_ID}",
        "GATEWAY_READ_KEYS": f"{READ_KEY}:analyst",
        "GATEWAY_PUBLISH_TIMEOUT_S": "2",
        **extra,
    }
    return load(GatewayConfig, env)


async def wait_ready(gateway: Gateway) -> None:
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
    while True:
        ok, reason = await gateway.ready()
        if ok:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gateway not ready: {reason}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def nc(nats_server: NatsProcess) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def gateway(nats_server: NatsProcess, nc: Client) -> AsyncIterator[Gateway]:
    # A fresh stream per test: no messages and no remembered message ids.
    with contextlib.suppress(NotFoundError):
        await nc.jetstream().delete_stream(subjects.RAW_STREAM)
    gw = Gateway(gateway_config(nats_server.url))
    await gw.start()
    try:
        await wait_ready(gw)
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=10.0
    ) as client:
        yield client


async def raw_messages(nc: Client) -> list[tuple[dict[str, str], event_pb2.RawBatch]]:
    """Every message in TELEMETRY_RAW: (headers, decoded batch)."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.RAW_STREAM)
    out: list[tuple[dict[str, str], event_pb2.RawBatch]] = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.RAW_STREAM, seq)
        except NotFoundError:
            continue
        batch = event_pb2.RawBatch()
        batch.ParseFromString(msg.data or b"")
        out.append((dict(msg.headers or {}), batch))
    return out
