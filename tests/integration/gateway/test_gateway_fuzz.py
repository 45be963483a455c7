"""Hostile bodies, headers and encodings against a gateway on a real nats-server: never a 5xx."""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import Iterator

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from gateway import Gateway
from tests.integration.gateway.conftest import WRITE_KEY, gateway_config, wait_ready
from tests.servers import NatsProcess
from tests.unit.gateway.strategies import requests

pytestmark = pytest.mark.integration

CASES = 400
seen: list[int] = []


@pytest.fixture(scope="module")
def live_http(nats_server: NatsProcess) -> Iterator[httpx.Client]:
    """A gateway running in its own event loop thread, and a client to it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Gateway:
        gw = Gateway(
            gateway_config(
                nats_server.url,
                GATEWAY_MAX_BODY_BYTES="4096",
                GATEWAY_MAX_DECOMPRESSED_BYTES="8192",
                GATEWAY_MAX_EVENTS_PER_BATCH="6",
            )
        )
        await gw.start()
        await wait_ready(gw)
        return gw

    gateway = asyncio.run_coroutine_threadsafe(start(), loop).result()
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.http_port}", timeout=10) as client:
        yield client
    asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    print(f"\nhostile requests sent: {len(seen)}; statuses: {sorted(set(seen))}")


@settings(
    max_examples=CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=requests())
def test_hostile_requests_never_get_a_5xx(
    live_http: httpx.Client, case: tuple[str, bytes, dict[str, str]]
) -> None:
    path, body, headers = case
    response = live_http.post(path, content=body, headers={**headers, "X-Api-Key": WRITE_KEY})
    seen.append(response.status_code)

    assert response.status_code < 500, response.text
    assert response.headers["X-Request-Id"]
    if response.status_code == 202:
        receipt = response.json()
        assert isinstance(receipt["accepted"], int)
        assert all(item["reason"] for item in receipt["rejected"])
        sent = _events_sent(body, headers) if path == "/v1/track" else None
        if sent is not None:  # every event is either accepted or rejected, and only once
            assert receipt["accepted"] + len(receipt["rejected"]) == sent, receipt


def _events_sent(body: bytes, headers: dict[str, str]) -> int | None:
    """How many events a JSON body holds (a list, or an object's `events` list); None when
    it is not such a body."""
    if headers.get("Content-Encoding", "").strip().lower() in ("gzip", "x-gzip"):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        doc = doc.get("events")
    return len(doc) if isinstance(doc, list) else None
