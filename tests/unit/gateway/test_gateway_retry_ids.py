"""Without an Idempotency-Key a batch is named by its accepted events: a retry restamped with
a fresh sent_at is stored once."""

from __future__ import annotations

import httpx
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from tests.unit.gateway.conftest import WRITE_KEY, FakeBroker
from tests.unit.gateway.test_gateway_ingest import core, origin, proto_request

AUTH = {"X-Api-Key": WRITE_KEY}
EVENT = {
    "event_id": "e-1",
    "session_id": "s",
    "user_id": "u",
    "event_name": "n",
    "client_timestamp": "2024-01-01T00:00:00Z",
}


async def test_a_retry_with_a_fresh_sent_at_is_a_duplicate(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    answers = []
    for sent_at in ("2024-01-01T00:00:05Z", "2024-01-01T00:00:35Z"):  # the retry, 30 s later
        body = orjson.dumps({"sent_at": sent_at, "events": [EVENT]})
        answers.append((await client.post("/v1/track", content=body, headers=AUTH)).json())

    assert answers[0]["duplicate"] is False
    assert answers[1]["duplicate"] is True
    assert answers[0]["batch_id"] == answers[1]["batch_id"]
    assert len(broker.stored) == 1


async def test_other_events_are_another_batch(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    for user in ("u", "v"):
        body = orjson.dumps(
            {"sent_at": "2024-01-01T00:00:05Z", "events": [{**EVENT, "user_id": user}]}
        )
        assert (await client.post("/v1/track", content=body, headers=AUTH)).json()[
            "duplicate"
        ] is False

    assert len(broker.stored) == 2


async def test_a_grpc_retry_with_a_fresh_sent_at_is_a_duplicate() -> None:
    broker = FakeBroker()
    receipts = []
    for seconds in (5, 35):
        request = proto_request(sent_at=Timestamp(seconds=seconds))
        receipts.append(await core(broker).ingest_proto(request, origin()))

    assert [r.duplicate for r in receipts] == [False, True]
    assert len(broker.stored) == 1
