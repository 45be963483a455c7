"""POST /v1/track against a real nats-server: durable before 202, receipts, limits, auth."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from nats.aio.client import Client
from telemetry.v1 import event_pb2

from gateway import Gateway
from tests.integration.gateway.conftest import (
    APP_ID,
    READ_KEY,
    WRITE_KEY,
    raw_messages,
    wait_ready,
)
from tests.integration.gateway.samples import SAMPLE_BATCH, SAMPLE_EVENTS, event

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {WRITE_KEY}"}


async def test_sample_batch_is_durable_with_its_ingest_context(
    http: httpx.AsyncClient, nc: Client
) -> None:
    before = time.time()
    response = await http.post(
        "/v1/track",
        content=orjson.dumps(SAMPLE_BATCH),
        headers={**AUTH, "Content-Type": "application/json", "User-Agent": "ShopApp/2.3.1 iOS"},
    )

    assert response.status_code == 202
    receipt = response.json()
    assert receipt["accepted"] == 2
    assert receipt["rejected"] == []
    assert receipt["duplicate"] is False
    messages = await raw_messages(nc)
    assert len(messages) == 1
    headers, batch = messages[0]
    assert list(batch.events) == SAMPLE_EVENTS
    assert headers["Nats-Msg-Id"] == receipt["batch_id"]
    assert headers["Telemetry-Schema"] == "telemetry.v1.RawBatch"
    context = batch.context
    assert context.app_id == "ios-app"
    assert context.client_ip == "127.0.0.1"
    assert context.user_agent == "ShopApp/2.3.1 iOS"
    assert context.request_id == response.headers["X-Request-Id"]
    assert context.batch_id == receipt["batch_id"]
    assert context.protocol == event_pb2.INGEST_PROTOCOL_HTTP_JSON
    assert before - 1 <= context.received_at.seconds <= time.time() + 1
    assert not context.HasField("sent_at")


async def test_object_body_carries_sent_at(http: httpx.AsyncClient, nc: Client) -> None:
    body = {"sent_at": "2023-10-26T10:00:07.5+02:00", "events": SAMPLE_BATCH}
    response = await http.post("/v1/track", json=body, headers=AUTH)

    assert response.status_code == 202
    (_, batch), *_ = await raw_messages(nc)
    assert batch.context.sent_at.seconds == 1698314407 - 2 * 3600
    assert batch.context.sent_at.nanos == 500_000_000


async def test_mixed_batch_gets_exact_receipts(http: httpx.AsyncClient, nc: Client) -> None:
    body = [
        event(0, metadata={"price": 19.99, "qty": 3, "gift": True, "big": 1e21}),
        event(1, user_id=None),
        event(2, metadata={"cart": {"items": 2}}),
        event(3, client_timestamp="26/10/2023 10:00"),
        "not an event",
        event(0),
        event(6, metadata={"note": None}),
        event(7, event_name=42),
        event(8, event_id="has space"),
        event(9, session_id="s" * 257),
        event(10),
    ]
    response = await http.post("/v1/track", json=body, headers=AUTH)

    assert response.status_code == 202
    receipt = response.json()
    assert receipt["accepted"] == 2
    reasons = [(r["index"], r["event_id"], r["reason"]) for r in receipt["rejected"]]
    assert reasons == [
        (1, "evt-1", "REJECTION_REASON_MISSING_FIELD"),
        (2, "evt-2", "REJECTION_REASON_INVALID_METADATA"),
        (3, "evt-3", "REJECTION_REASON_INVALID_TIMESTAMP"),
        (4, "", "REJECTION_REASON_NOT_AN_OBJECT"),
        (5, "evt-0", "REJECTION_REASON_DUPLICATE_EVENT_ID"),
        (6, "evt-6", "REJECTION_REASON_INVALID_METADATA"),
        (7, "evt-7", "REJECTION_REASON_INVALID_TYPE"),
        (8, "has space", "REJECTION_REASON_INVALID_EVENT_ID"),
        (9, "evt-9", "REJECTION_REASON_FIELD_TOO_LONG"),
    ]
    assert all(r["detail"] for r in receipt["rejected"])
    (_, batch), *rest = await raw_messages(nc)
    assert rest == []
    assert [e.event_id for e in batch.events] == ["evt-0", "evt-10"]
    assert dict(batch.events[0].metadata) == {
        "price": "19.99",
        "qty": "3",
        "gift": "true",
        "big": "1e+21",
    }


async def test_batch_with_only_invalid_events_is_a_receipt_and_stores_nothing(
    http: httpx.AsyncClient, nc: Client
) -> None:
    response = await http.post("/v1/track", json=[event(0, user_id=""), 7], headers=AUTH)

    assert response.status_code == 202
    assert response.json()["accepted"] == 0
    assert len(response.json()["rejected"]) == 2
    assert await raw_messages(nc) == []


async def test_gzip_body_is_accepted(http: httpx.AsyncClient, nc: Client) -> None:
    response = await http.post(
        "/v1/track",
        content=gzip.compress(orjson.dumps(SAMPLE_BATCH)),
        headers={**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )

    assert response.status_code == 202
    assert response.json()["accepted"] == 2
    (_, batch), *_ = await raw_messages(nc)
    assert list(batch.events) == SAMPLE_EVENTS


async def test_oversized_body_is_413(http: httpx.AsyncClient, gateway: Gateway, nc: Client) -> None:
    big = b"[" + b" " * (gateway.config.max_body_bytes + 10) + b"]"

    response = await http.post("/v1/track", content=big, headers=AUTH)

    assert response.status_code == 413
    assert await raw_messages(nc) == []


async def test_oversized_streamed_body_without_length_is_413(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    chunk = b" " * 65536
    rounds = gateway.config.max_body_bytes // len(chunk) + 2

    async def stream() -> AsyncIterator[bytes]:
        yield b"["
        for _ in range(rounds):
            yield chunk

    response = await http.post("/v1/track", content=stream(), headers=AUTH)

    assert "content-length" not in response.request.headers
    assert response.status_code == 413


async def test_too_many_events_is_413(
    http: httpx.AsyncClient, gateway: Gateway, nc: Client
) -> None:
    body = [event(n) for n in range(gateway.config.max_events_per_batch + 1)]

    response = await http.post("/v1/track", json=body, headers=AUTH)

    assert response.status_code == 413
    assert await raw_messages(nc) == []  # not even the events that would have fitted


async def test_gzip_bomb_is_413(http: httpx.AsyncClient, gateway: Gateway, nc: Client) -> None:
    inflated = gateway.config.max_decompressed_bytes * 8
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1024 * 1024)
    bomb = b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros))) + packer.flush()
    assert len(bomb) < gateway.config.max_body_bytes

    response = await http.post(
        "/v1/track", content=bomb, headers={**AUTH, "Content-Encoding": "gzip"}
    )

    assert response.status_code == 413
    assert await raw_messages(nc) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-a-key"}, 401),
        ({"Authorization": f"Basic {WRITE_KEY}"}, 401),
        ({"X-Api-Key": READ_KEY}, 403),
        ({"Authorization": f"Bearer {READ_KEY}"}, 403),
    ],
)
async def test_track_needs_a_write_key(
    http: httpx.AsyncClient, nc: Client, headers: dict[str, str], status: int
) -> None:
    response = await http.post("/v1/track", json=SAMPLE_BATCH, headers=headers)

    assert response.status_code == status
    assert response.json()["code"] in ("unauthenticated", "permission_denied")
    assert await raw_messages(nc) == []


async def test_x_api_key_header_works(http: httpx.AsyncClient, nc: Client) -> None:
    response = await http.post("/v1/track", json=SAMPLE_BATCH, headers={"X-Api-Key": WRITE_KEY})

    assert response.status_code == 202
    assert response.json()["accepted"] == len(SAMPLE_EVENTS)
    [(headers, batch)] = await raw_messages(nc)
    assert headers["Nats-Msg-Id"] == response.json()["batch_id"]
    assert list(batch.events) == SAMPLE_EVENTS
    assert batch.context.app_id == APP_ID  # the app the key belongs to


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{not json", {}, 400),
        (b"[]", {}, 400),
        (b'{"events": 3}', {}, 400),
        (b'"a string"', {}, 400),
        (b'{"sent_at": "yesterday", "events": [{}]}', {}, 400),
        (b"[{}]", {"Content-Type": "text/plain"}, 415),
        (b"[{}]", {"Content-Type": "application/json; charset=latin-1"}, 415),
        (b"[{}]", {"Content-Encoding": "br"}, 415),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b"[{}]")[:-6], {"Content-Encoding": "gzip"}, 400),
    ],
)
async def test_whole_body_problems(
    http: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int
) -> None:
    response = await http.post("/v1/track", content=content, headers={**AUTH, **headers})

    assert response.status_code == status
    assert set(response.json()) == {"code", "message"}


async def test_same_idempotency_key_is_stored_once(http: httpx.AsyncClient, nc: Client) -> None:
    headers = {**AUTH, "Idempotency-Key": "batch-2023-10-26-0001"}

    first = await http.post("/v1/track", json=SAMPLE_BATCH, headers=headers)
    second = await http.post("/v1/track", json=SAMPLE_BATCH, headers=headers)

    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["duplicate"] is False
    assert second.json()["duplicate"] is True
    assert second.json()["accepted"] == 2
    assert second.json()["batch_id"] == first.json()["batch_id"]
    assert len(await raw_messages(nc)) == 1


async def test_same_body_without_key_is_stored_once(http: httpx.AsyncClient, nc: Client) -> None:
    body = orjson.dumps(SAMPLE_BATCH)

    first = await http.post("/v1/track", content=body, headers=AUTH)
    second = await http.post(
        "/v1/track", content=gzip.compress(body), headers={**AUTH, "Content-Encoding": "gzip"}
    )

    assert second.json()["duplicate"] is True
    assert second.json()["batch_id"] == first.json()["batch_id"]
    assert len(await raw_messages(nc)) == 1


async def test_batch_past_max_payload_is_split_into_parts(
    http: httpx.AsyncClient, nc: Client
) -> None:
    value = "v" * 1500
    body = [event(n, metadata={"blob": value}) for n in range(1000)]

    zipped = gzip.compress(orjson.dumps(body))
    headers = {**AUTH, "Content-Encoding": "gzip"}
    response = await http.post("/v1/track", content=zipped, headers=headers)

    assert response.status_code == 202
    assert response.json()["accepted"] == 1000
    messages = await raw_messages(nc)
    assert len(messages) >= 2
    batch_id = response.json()["batch_id"]
    # Each part is named by the range of events it holds.
    ranges, first = [], 0
    for _, part in messages:
        ranges.append(f"{batch_id}:{first}-{first + len(part.events)}")
        first += len(part.events)
    assert [h["Nats-Msg-Id"] for h, _ in messages] == ranges
    assert all(len(b.SerializeToString()) <= nc.max_payload for _, b in messages)
    ids = [e.event_id for _, b in messages for e in b.events]
    assert ids == [f"evt-{n}" for n in range(1000)]

    again = await http.post("/v1/track", content=zipped, headers=headers)
    assert again.json()["duplicate"] is True
    assert len(await raw_messages(nc)) == len(messages)


async def test_request_id_is_echoed_when_sane(http: httpx.AsyncClient) -> None:
    sane = await http.post(
        "/v1/track", json=SAMPLE_BATCH, headers={**AUTH, "X-Request-Id": "req-123"}
    )
    insane = await http.post(
        "/v1/track", json=SAMPLE_BATCH, headers={**AUTH, "X-Request-Id": "bad id\twith tab"}
    )

    assert sane.headers["X-Request-Id"] == "req-123"
    assert insane.headers["X-Request-Id"] not in ("", "bad id\twith tab")


async def test_ops_routes_report_readiness_and_metrics(http: httpx.AsyncClient) -> None:
    await http.post("/v1/track", json=[event(1), event(2, user_id="")], headers=AUTH)

    ready = await http.get("/readyz")
    metrics = (await http.get("/metrics")).text

    assert ready.status_code == 200
    assert 'gateway_events_total{outcome="accepted",reason=""} 1.0' in metrics
    assert (
        'gateway_events_total{outcome="rejected",reason="REJECTION_REASON_MISSING_FIELD"} 1.0'
        in metrics
    )
    assert 'gateway_http_requests_total{route="/v1/track",status="202"} 1.0' in metrics
    assert 'gateway_publish_seconds_count{outcome="acked"} 1.0' in metrics
    assert "gateway_requests_in_flight 0.0" in metrics


async def test_a_lost_stream_is_created_again(
    http: httpx.AsyncClient, gateway: Gateway, nc: Client
) -> None:
    await nc.jetstream().delete_stream("TELEMETRY_RAW")

    assert (await http.get("/readyz")).status_code == 503
    await wait_ready(gateway)
    response = await http.post("/v1/track", json=SAMPLE_BATCH, headers=AUTH)

    assert response.status_code == 202
    assert len(await raw_messages(nc)) == 1


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    http: httpx.AsyncClient, nc: Client
) -> None:
    # No trusted proxies are configured: a loopback peer is a client like any other, and
    # only the gateway's own resolver may read X-Forwarded-For (not the HTTP server's).
    response = await http.post(
        "/v1/track",
        content=orjson.dumps(SAMPLE_BATCH),
        headers={**AUTH, "X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 202
    [(_, batch)] = await raw_messages(nc)
    assert batch.context.client_ip == "127.0.0.1"
