"""IngestService over the Connect protocol on the HTTP port, called with httpx."""

from __future__ import annotations

import gzip

import httpx
import orjson
import pytest
from nats.aio.client import Client
from telemetry.v1 import event_pb2, ingest_service_pb2

from tests.integration.gateway.conftest import READ_KEY, WRITE_KEY, raw_messages
from tests.integration.gateway.samples import SAMPLE_EVENTS

pytestmark = pytest.mark.integration

PATH = "/telemetry.v1.IngestService/IngestEvents"
AUTH = {"Authorization": f"Bearer {WRITE_KEY}", "Connect-Protocol-Version": "1"}

JSON_REQUEST = {
    "events": [
        {
            "eventId": "7f9c2ba4-e88f-11ed-a05b-0242ac120002",
            "sessionId": "sess-42",
            "userId": "user-123",
            "eventName": "item_purchased",
            "clientTimestamp": "2023-10-26T10:00:00Z",
            "appVersion": "2.3.1",
            "deviceOs": "iOS 17.2",
            "metadata": {"item_id": "sku-991", "price": "19.99"},
        },
        {"eventId": "no-timestamp", "sessionId": "s", "userId": "u", "eventName": "e"},
    ],
    "sentAt": "2023-10-26T10:00:09Z",
}


async def test_connect_json_call(http: httpx.AsyncClient, nc: Client) -> None:
    response = await http.post(
        PATH,
        content=orjson.dumps(JSON_REQUEST),
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {
            "index": 1,
            "eventId": "no-timestamp",
            "reason": "REJECTION_REASON_MISSING_FIELD",
            "detail": "client_timestamp is required",
        }
    ]
    (_, batch), *_ = await raw_messages(nc)
    assert list(batch.events) == SAMPLE_EVENTS[:1]
    assert batch.context.protocol == event_pb2.INGEST_PROTOCOL_CONNECT
    assert batch.context.sent_at.seconds == 1698314409


async def test_connect_binary_call_with_gzip(http: httpx.AsyncClient, nc: Client) -> None:
    request = ingest_service_pb2.IngestEventsRequest(events=SAMPLE_EVENTS, idempotency_key="k-1")

    response = await http.post(
        PATH,
        content=gzip.compress(request.SerializeToString()),
        headers={**AUTH, "Content-Type": "application/proto", "Content-Encoding": "gzip"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    answer = ingest_service_pb2.IngestEventsResponse.FromString(response.content)
    assert answer.accepted == 2
    assert not answer.duplicate
    (_, batch), *_ = await raw_messages(nc)
    assert list(batch.events) == SAMPLE_EVENTS


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{}", {"Content-Type": "application/json"}, 401, "unauthenticated"),
        (
            b"{}",
            {"Content-Type": "application/json", "X-Api-Key": READ_KEY},
            403,
            "permission_denied",
        ),
        (b"{]", {**AUTH, "Content-Type": "application/json"}, 400, "invalid_argument"),
        (b"\xff\xff\xff", {**AUTH, "Content-Type": "application/proto"}, 400, "invalid_argument"),
        (b"{}", {**AUTH, "Content-Type": "application/json"}, 400, "invalid_argument"),
        (
            b"{}",
            {**AUTH, "Content-Type": "application/json", "Connect-Protocol-Version": "2"},
            400,
            "invalid_argument",
        ),
        (b"{}", {**AUTH, "Content-Type": "text/plain"}, 415, "invalid_argument"),
    ],
)
async def test_connect_errors(
    http: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = await http.post(PATH, content=content, headers=headers)

    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["message"]
