"""A JSON body is bounded by what a batch holds, not by its bytes alone: no envelope keys
beyond sent_at and events, no more values than a batch of the largest events, and nothing
parsed kept while the batch is published."""

from __future__ import annotations

import gc
import gzip

import httpx
import orjson

from gateway import Gateway
from gateway._validate import Limits
from tests.unit.gateway.conftest import WRITE_KEY, FakeBroker, FakeQuery, asgi_client, unit_config

AUTH = {"X-Api-Key": WRITE_KEY}
EVENT = (
    b'{"event_id":"e-1","session_id":"s","user_id":"u","event_name":"n",'
    b'"client_timestamp":"2024-01-01T00:00:00Z"}'
)
CONNECT = "/telemetry.v1.IngestService/IngestEvents"


def _padding(values: int) -> bytes:
    """An array of `values` empty arrays: one JSON value per three bytes."""
    return b"[" + b"[]," * (values - 1) + b"[]]"


async def test_envelope_keys_of_a_newer_client_are_ignored_within_the_bound(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    # As an event's unknown fields are: only what they would cost to parse is bounded.
    most = 1000 * (64 + 32) + 16  # the default limits' bound
    small = b'{"events":[' + EVENT + b'],"device":{"model":"iPhone15,2"}}'
    large = b'{"events":[' + EVENT + b'],"pad":' + _padding(most) + b"}"

    kept = await client.post("/v1/track", content=small, headers=AUTH)
    refused = await client.post("/v1/track", content=large, headers=AUTH)

    assert kept.status_code == 202
    assert kept.json()["accepted"] == 1
    assert refused.status_code == 413
    assert len(broker.stored) == 1


async def test_a_gzip_body_of_more_values_than_a_batch_holds_is_413(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    most = 1000 * (64 + 32) + 16  # the default limits' bound
    # A valid event, then an item that is one array of many: each costs a Python list.
    body = gzip.compress(b"[" + EVENT + b"," + _padding(most) + b"]")

    response = await client.post(
        "/v1/track", content=body, headers={**AUTH, "Content-Encoding": "gzip"}
    )

    assert response.status_code == 413
    assert f"more than {most} JSON values" in response.json()["message"]
    assert broker.stored == {}


async def test_connect_json_of_more_values_than_a_batch_holds_is_refused(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    body = b'{"events":[' + EVENT + b'],"unknownField":' + _padding(200_000)

    response = await client.post(
        CONNECT, content=body + b"}", headers={**AUTH, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert "JSON values" in response.json()["message"]
    assert broker.stored == {}


async def test_a_batch_of_the_largest_events_with_commas_and_brackets_in_strings_is_stored(
    gateway: Gateway, client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    limits = Limits.from_config(gateway.config)
    # Each metadata value holds more commas and brackets than the bound allows per event,
    # so the count outside strings decides.
    value = '[{"a":1,"b":[2,3]}]' * 5
    metadata = {f"k{n}": value for n in range(limits.max_metadata_entries)}
    events = [
        {
            "event_id": f"e-{n}",
            "session_id": "s",
            "user_id": "u",
            "event_name": "n",
            "client_timestamp": "2024-01-01T00:00:00Z",
            "app_version": "1",
            "device_os": "iOS 17",
            "metadata": metadata,
        }
        for n in range(limits.max_events)
    ]
    body = orjson.dumps({"sent_at": "2024-01-01T00:00:01Z", "events": events})
    assert body.count(b",") + body.count(b"[") + body.count(b"{") > limits.most_json_values()

    response = await client.post(
        "/v1/track", content=gzip.compress(body), headers={**AUTH, "Content-Encoding": "gzip"}
    )

    assert response.status_code == 202
    assert response.json()["accepted"] == limits.max_events
    stored = sum(len(batch.events) for batch in broker.batches())
    assert stored == limits.max_events


def _is_parsed_batch(thing: object) -> bool:
    # Lists are always tracked by the collector (a dict of strings alone may not be).
    return (
        type(thing) is list
        and len(thing) == 1
        and type(thing[0]) is dict
        and thing[0].get("event_id") == "e-parsed-1"
    )


class _Watching(FakeBroker):
    """Notes whether any parsed JSON event of the request is alive while it publishes."""

    def __init__(self) -> None:
        super().__init__()
        self.parsed_alive: list[bool] = []

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        gc.collect()
        self.parsed_alive.append(any(_is_parsed_batch(thing) for thing in gc.get_objects()))
        return await super().publish(subject, payload, msg_id=msg_id)


async def test_the_parsed_body_is_not_held_while_the_batch_is_published() -> None:
    broker = _Watching()
    gateway = Gateway(unit_config(), broker=broker, query=FakeQuery())
    body = b"[" + EVENT.replace(b'"e-1"', b'"e-parsed-1"') + b"]"

    async with asgi_client(gateway) as client:
        response = await client.post("/v1/track", content=body, headers=AUTH)

    assert response.status_code == 202
    assert broker.parsed_alive == [False]
