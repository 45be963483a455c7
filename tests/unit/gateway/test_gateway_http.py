"""The HTTP app in process with a fake broker: statuses, Retry-After, OpenAPI, hostile input."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from starlette.routing import Route
from telemetry.v1 import event_pb2, query_service_pb2

from gateway import Gateway
from gateway._openapi import REQUEST_ID_PATTERN, document
from gateway._query import aggregate_json, event_json, events_json
from gateway.errors import Unavailable
from tests.unit.gateway.conftest import (
    WRITE_KEY,
    FakeBroker,
    FakeQuery,
    asgi_client,
    unit_config,
)
from tests.unit.gateway.strategies import requests

AUTH = {"X-Api-Key": WRITE_KEY}
ONE = (
    b'[{"event_id":"e-1","session_id":"s","user_id":"u","event_name":"n",'
    b'"client_timestamp":"2024-01-01T00:00:00Z"}]'
)


async def test_too_many_in_flight_is_429_with_retry_after(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    gateway.core._in_flight = gateway.config.max_in_flight

    response = await client.post("/v1/track", content=ONE, headers=AUTH)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(gateway.config.retry_after_s)
    assert response.json()["code"] == "resource_exhausted"


async def test_a_body_past_the_bytes_budget_is_429_before_the_rest_is_read(
    broker: FakeBroker,
) -> None:
    gateway = Gateway(
        unit_config(GATEWAY_MAX_IN_FLIGHT_BYTES="1000"), broker=broker, query=FakeQuery()
    )
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for n in range(20):
            sent.append(n)
            yield b" " * 200

    async with asgi_client(gateway) as client:
        with gateway.core.admit() as other:  # another request holds half the budget
            other.charge(500)
            refused = await client.post("/v1/track", content=body(), headers=AUTH)
        accepted = await client.post("/v1/track", content=ONE, headers=AUTH)

    assert refused.status_code == 429
    assert refused.json()["message"] == "too many bytes in flight"
    assert len(sent) < 5
    assert accepted.status_code == 202


async def test_broker_down_is_503_with_retry_after(
    broker: FakeBroker, client: httpx.AsyncClient
) -> None:
    broker.fail = Unavailable("down")

    response = await client.post("/v1/track", content=ONE, headers=AUTH)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


async def test_stopping_gateway_answers_503(gateway: Gateway, client: httpx.AsyncClient) -> None:
    gateway.core.close()

    response = await client.post("/v1/track", content=ONE, headers=AUTH)

    assert response.status_code == 503


async def test_every_route_is_in_the_openapi_document(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    starlette_app = gateway.app._app  # type: ignore[attr-defined]
    routes = {
        (route.path, method.lower())
        for route in starlette_app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    served = (await client.get("/openapi.json")).json()

    documented = {(path, method) for path, item in served["paths"].items() for method in item}
    assert documented == routes
    assert served == document()
    assert served["openapi"].startswith("3.1")


def test_every_documented_answer_declares_its_request_id() -> None:
    served = document()
    operations = [op for item in served["paths"].values() for op in item.values()]
    assert len(operations) == 8
    for operation in operations:
        names = [param["name"] for param in operation["parameters"]]
        assert names.count("X-Request-Id") == 1, operation["summary"]
        for status, answer in operation["responses"].items():
            header = answer["headers"]["X-Request-Id"]
            assert header["schema"]["pattern"] == REQUEST_ID_PATTERN, (operation, status)
    assert "404" in served["info"]["description"]
    assert "405" in served["info"]["description"]
    # The 401's own header is kept beside it.
    assert "WWW-Authenticate" in served["paths"]["/v1/track"]["post"]["responses"]["401"]["headers"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/track", 202),
        ("POST", "/v1/track", 401),
        ("GET", "/v1/events", 403),
        ("GET", "/nope", 404),
        ("GET", "/v1/track", 405),
        ("GET", "/healthz", 200),
    ],
)
async def test_every_answer_carries_a_request_id_of_the_documented_form(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    headers = AUTH if status != 401 else {}
    fresh = await client.request(method, path, content=ONE, headers=headers)
    echoed = await client.request(
        method, path, content=ONE, headers={**headers, "X-Request-Id": "mine-1:2.3"}
    )
    replaced = await client.request(
        method, path, content=ONE, headers={**headers, "X-Request-Id": "no spaces"}
    )

    assert fresh.status_code == echoed.status_code == replaced.status_code == status
    assert re.fullmatch(REQUEST_ID_PATTERN, fresh.headers["x-request-id"])
    assert echoed.headers["x-request-id"] == "mine-1:2.3"
    assert re.fullmatch(REQUEST_ID_PATTERN, replaced.headers["x-request-id"])
    assert replaced.headers["x-request-id"] != "no spaces"


async def test_unknown_paths_are_404_and_counted_as_other(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    metrics = (await client.get("/metrics")).text

    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "no such route: /nope"}
    assert 'gateway_http_requests_total{route="other",status="404"} 1.0' in metrics


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/events/"), ("GET", "/v1/events/aggregate/"), ("POST", "/v1/track/")],
)
async def test_a_trailing_slash_is_a_404_in_the_error_shape_not_a_redirect(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    # A redirect would come before the key check and name http:// behind a TLS proxy.
    response = await client.request(method, path, content=ONE, headers=AUTH)

    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json() == {"code": "not_found", "message": f"no such route: {path}"}


async def test_a_wrong_method_is_405_naming_the_allowed_one(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/track")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {
        "code": "unimplemented",
        "message": "GET is not allowed on /v1/track; use POST",
    }


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=requests())
def test_hostile_requests_never_get_a_5xx_in_process(
    case: tuple[str, bytes, dict[str, str]],
) -> None:
    path, body, headers = case
    gateway = Gateway(
        unit_config(GATEWAY_MAX_BODY_BYTES="2048", GATEWAY_MAX_EVENTS_PER_BATCH="5"),
        broker=FakeBroker(),
        query=FakeQuery(),
    )

    async def call() -> httpx.Response:
        async with asgi_client(gateway) as http:
            return await http.post(path, content=body, headers={**headers, **AUTH})

    response = asyncio.run(call())

    assert response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/v1/track", {}, ONE),
        (
            "/telemetry.v1.IngestService/IngestEvents",
            {"Content-Type": "application/json", "Connect-Protocol-Version": "1"},
            b'{"events":[{"eventId":"e-1","sessionId":"s","userId":"u","eventName":"n",'
            b'"clientTimestamp":"2024-01-01T00:00:00Z"}]}',
        ),
    ],
)
async def test_every_forwarded_for_line_is_read_behind_a_trusted_proxy(
    broker: FakeBroker, path: str, headers: dict[str, str], body: bytes
) -> None:
    # The client sent a line of its own; the trusted proxy (the in-process peer, 127.0.0.1)
    # appended the address it saw as a second line.
    gateway = Gateway(
        unit_config(GATEWAY_TRUSTED_PROXIES="127.0.0.1/32"), broker=broker, query=FakeQuery()
    )
    sent = [
        *AUTH.items(),
        *headers.items(),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "198.51.100.1"),
    ]

    async with asgi_client(gateway) as client:
        response = await client.post(path, content=body, headers=sent)

    assert response.status_code in (200, 202), response.text
    [batch] = broker.batches()
    assert batch.context.client_ip == "198.51.100.1"


def test_every_parameter_in_the_openapi_document_has_a_description() -> None:
    """start, end, the filters, page_size, page_token, group_by, interval, limit and the
    others say what they do, not only their type."""
    params = [
        (path, param)
        for path, item in document()["paths"].items()
        for operation in item.values()
        for param in operation.get("parameters", [])
    ]
    names = {param["name"] for path, param in params if path == "/v1/events/aggregate"}
    assert {"start", "end", "user_id", "country", "group_by", "interval", "limit"} <= names
    for path, param in params:
        assert param.get("description", "").strip(), (path, param["name"])


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("Events", events_json(query_service_pb2.QueryEventsResponse())),
        ("Aggregate", aggregate_json(query_service_pb2.AggregateEventsResponse())),
    ],
)
def test_the_query_answers_schemas_require_what_every_answer_holds(
    name: str, answer: dict[str, object]
) -> None:
    # An empty answer holds every field but unreachable, which only a partial answer has.
    schema = document()["components"]["schemas"][name]

    assert set(answer) == set(schema["required"])
    assert set(schema["properties"]) - set(schema["required"]) == {"unreachable"}


def test_the_openapi_document_lists_every_rejection_reason() -> None:
    receipt = document()["components"]["schemas"]["Receipt"]
    listed = receipt["properties"]["rejected"]["items"]["properties"]["reason"]["enum"]
    names = [v.name for v in event_pb2.RejectionReason.DESCRIPTOR.values if v.number != 0]
    assert listed == names


def test_the_query_answers_are_what_the_document_describes() -> None:
    schemas = document()["components"]["schemas"]
    item = event_pb2.EnrichedEvent(app_id="shop", clock_status=event_pb2.CLOCK_STATUS_CORRECTED)
    item.event.event_id = "e-1"
    item.event.metadata["k"] = "v"
    item.enriched_at.FromSeconds(1_790_000_000)
    event = event_json(item)
    described = schemas["EnrichedEvent"]
    assert set(event) == set(described["properties"]) == set(described["required"])
    assert event["enriched_at"] == "2026-09-21T14:13:20Z"
    assert event["client_timestamp"] is None  # unset: null, which the schema allows
    assert "null" in described["properties"]["client_timestamp"]["type"]

    counts = query_service_pb2.AggregateEventsResponse(total_count=3)
    counts.counts.add(value="open", count=3)
    counts.histogram.add(count=3).start_time.FromSeconds(1_790_000_000)
    answer = aggregate_json(counts)
    aggregate = schemas["Aggregate"]["properties"]
    assert set(answer["counts"][0]) == set(aggregate["counts"]["items"]["required"])
    assert set(answer["histogram"][0]) == set(aggregate["histogram"]["items"]["required"])
    assert set(answer) <= set(aggregate)
