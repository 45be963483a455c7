"""NATS stopped while the gateway takes traffic: 503 with Retry-After, never 202; then recovery.

A module of its own, so the nats-server it stops is its own.
"""

from __future__ import annotations

import httpx
import pytest
from nats.aio.client import Client

from gateway import Gateway
from tests.integration.gateway.conftest import WRITE_KEY, raw_messages, wait_ready
from tests.integration.gateway.samples import SAMPLE_BATCH, event
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}


async def test_broker_down_is_503_and_recovers_to_202(
    nats_server: NatsProcess, gateway: Gateway, http: httpx.AsyncClient, nc: Client
) -> None:
    first = await http.post("/v1/track", json=SAMPLE_BATCH, headers=AUTH)
    assert first.status_code == 202
    retried = [event(n) for n in range(5)]

    nats_server.stop()
    try:
        down = [await http.post("/v1/track", json=retried, headers=AUTH) for _ in range(3)]
        ready = await http.get("/readyz")
    finally:
        nats_server.start()

    for answer in down:
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == str(gateway.config.retry_after_s)
        assert answer.json()["code"] == "unavailable"
        assert "accepted" not in answer.json()
    assert ready.status_code == 503
    metrics = (await http.get("/metrics")).text
    assert 'gateway_events_total{outcome="accepted",reason=""} 2.0' in metrics

    await wait_ready(gateway)
    again = await http.post("/v1/track", json=retried, headers=AUTH)

    assert again.status_code == 202
    assert again.json()["accepted"] == 5
    stored = [e.event_id for _, batch in await raw_messages(nc) for e in batch.events]
    assert sorted(stored) == sorted(
        [e["event_id"] for e in SAMPLE_BATCH] + [f"evt-{n}" for n in range(5)]
    )
