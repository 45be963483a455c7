"""GET /v1/events and /v1/events/aggregate through a fake gRPC QueryService on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, query_service_pb2, query_service_pb2_grpc

from gateway import Gateway
from pipeline.query_names import PARTIAL_ANSWER_TRAILER
from tests.integration.gateway.conftest import READ_KEY, WRITE_KEY, gateway_config, wait_ready
from tests.integration.gateway.samples import SAMPLE_EVENTS
from tests.servers import NatsProcess, free_port, serving_query

pytestmark = pytest.mark.integration

READ = {"Authorization": f"Bearer {READ_KEY}"}


@dataclass
class FakeQueryService(query_service_pb2_grpc.QueryServiceServicer):
    """Records requests; answers canned responses, or aborts with `fail` when set."""

    queries: list[query_service_pb2.QueryEventsRequest] = field(default_factory=list)
    aggregates: list[query_service_pb2.AggregateEventsRequest] = field(default_factory=list)
    fail: grpc.StatusCode | None = None
    fail_details: str = "page_size must not be negative"
    unreachable: list[str] = field(default_factory=list)  # indices that "did not answer"

    async def _partial(self, partial_ok: bool, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.unreachable and not partial_ok:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"1 shard(s) of the event store did not answer ({self.unreachable[0]}): "
                "events in them would be missing; try again later, or set "
                "return_partial_success for what the rest holds",
                ((PARTIAL_ANSWER_TRAILER, "refused"),),
            )

    async def QueryEvents(  # the generated method name
        self,
        request: query_service_pb2.QueryEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.QueryEventsResponse:
        self.queries.append(request)
        if self.fail is not None:
            await context.abort(self.fail, self.fail_details)
        await self._partial(request.return_partial_success, context)
        enriched = event_pb2.EnrichedEvent(
            event=SAMPLE_EVENTS[0],
            received_at=Timestamp(seconds=1698314401, nanos=5_000_000),
            corrected_timestamp=Timestamp(seconds=1698314400),
            clock_status=event_pb2.CLOCK_STATUS_CORRECTED,
            geo=event_pb2.Geo(country_code="GB"),
            os_name="iOS",
            os_version="17.2",
            event_message="item_purchased item_id sku-991 price 19.99",
            app_id="ios-app",
            request_id="req-1",
        )
        return query_service_pb2.QueryEventsResponse(
            events=[enriched], next_page_token="tok-2", total_size=41, unreachable=self.unreachable
        )

    async def AggregateEvents(  # the generated method name
        self,
        request: query_service_pb2.AggregateEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.AggregateEventsResponse:
        self.aggregates.append(request)
        await self._partial(request.return_partial_success, context)
        return query_service_pb2.AggregateEventsResponse(
            unreachable=self.unreachable,
            total_count=3,
            counts=[query_service_pb2.TermCount(value="screen_view", count=2)],
            histogram=[
                query_service_pb2.HistogramBucket(start_time=Timestamp(seconds=1698314400), count=3)
            ],
        )


@pytest.fixture
async def fake_query() -> AsyncIterator[tuple[FakeQueryService, int]]:
    servicer = FakeQueryService()
    async with serving_query(servicer) as port:
        yield servicer, port


@pytest.fixture
async def client(
    nats_server: NatsProcess, fake_query: tuple[FakeQueryService, int]
) -> AsyncIterator[httpx.AsyncClient]:
    _, port = fake_query
    gw = Gateway(gateway_config(nats_server.url, GATEWAY_QUERY_TARGET=f"127.0.0.1:{port}"))
    await gw.start()
    try:
        await wait_ready(gw)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
            yield http
    finally:
        await gw.stop()


async def test_events_maps_parameters_and_answer(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int]
) -> None:
    servicer, _ = fake_query
    response = await client.get(
        "/v1/events",
        params=[
            ("user_id", "user-123"),
            ("user_id", "user-9"),
            ("event_name", "item_purchased"),
            ("country", "GB"),
            ("app_id", "ios-app"),
            ("start", "2023-10-26T00:00:00Z"),
            ("end", "2023-10-27T00:00:00+01:00"),
            ("q", "sku-991"),
            ("page_size", "25"),
            ("page_token", "tok-1"),
        ],
        headers=READ,
    )

    assert response.status_code == 200
    (request,) = servicer.queries
    assert list(request.filter.user_ids) == ["user-123", "user-9"]
    assert list(request.filter.event_names) == ["item_purchased"]
    assert list(request.filter.country_codes) == ["GB"]
    assert list(request.filter.app_ids) == ["ios-app"]
    assert request.filter.start_time.seconds == 1698278400
    assert request.filter.end_time.seconds == 1698364800 - 3600
    assert request.filter.text == "sku-991"
    assert (request.page_size, request.page_token) == (25, "tok-1")
    body = response.json()
    assert body["next_page_token"] == "tok-2"
    assert body["total_size"] == 41
    (doc,) = body["events"]
    assert doc["event_id"] == "7f9c2ba4-e88f-11ed-a05b-0242ac120002"
    assert doc["client_timestamp"] == "2023-10-26T10:00:00Z"
    assert doc["ingestion_timestamp"] == "2023-10-26T10:00:01.005Z"
    assert doc["metadata"] == {"item_id": "sku-991", "price": "19.99"}
    assert doc["geo_country"] == "GB"
    assert doc["clock_status"] == "CLOCK_STATUS_CORRECTED"


async def test_aggregate_maps_parameters_and_answer(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int]
) -> None:
    servicer, _ = fake_query
    response = await client.get(
        "/v1/events/aggregate",
        params={"group_by": "event_name", "interval": "hour", "limit": "5", "device_os": "iOS"},
        headers=READ,
    )

    assert response.status_code == 200
    (request,) = servicer.aggregates
    assert request.group_by == query_service_pb2.AGGREGATION_FIELD_EVENT_NAME
    assert request.interval == query_service_pb2.HISTOGRAM_INTERVAL_HOUR
    assert request.limit == 5
    assert list(request.filter.device_os) == ["iOS"]
    assert response.json() == {
        "total_count": 3,
        "counts": [{"value": "screen_view", "count": 2}],
        "count_error_upper_bound": 0,
        "histogram": [{"start_time": "2023-10-26T10:00:00Z", "count": 3}],
    }


async def test_query_service_errors_map_through_the_table(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int]
) -> None:
    servicer, _ = fake_query
    servicer.fail = grpc.StatusCode.INVALID_ARGUMENT

    response = await client.get("/v1/events", params={"page_size": "-1"}, headers=READ)

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_argument",
        "message": "page_size must not be negative",
    }


async def test_invalid_argument_names_the_query_parameters_not_the_proto_fields(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int]
) -> None:
    servicer, _ = fake_query
    servicer.fail = grpc.StatusCode.INVALID_ARGUMENT
    servicer.fail_details = "filter.end_time: is before filter.start_time"

    response = await client.get(
        "/v1/events",
        params={"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        headers=READ,
    )

    assert response.status_code == 400
    assert response.json() == {"code": "invalid_argument", "message": "end: is before start"}


async def test_a_query_service_at_its_bound_is_429_with_retry_after(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int]
) -> None:
    servicer, _ = fake_query
    servicer.fail = grpc.StatusCode.RESOURCE_EXHAUSTED  # INDEXER_QUERY_MAX_IN_FLIGHT calls

    response = await client.get("/v1/events", headers=READ)

    assert response.status_code == 429
    assert response.json()["code"] == "resource_exhausted"
    assert response.headers["Retry-After"] == "1"  # GATEWAY_RETRY_AFTER_S


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/aggregate"])
async def test_part_of_the_store_missing_is_503_naming_it_unless_partial_success_is_asked(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int], path: str
) -> None:
    servicer, _ = fake_query
    servicer.unreachable = ["telemetry-2026-11-20"]

    refused = await client.get(path, headers=READ)
    partial = await client.get(path, params={"return_partial_success": "true"}, headers=READ)
    explicit = await client.get(path, params={"return_partial_success": "false"}, headers=READ)

    assert refused.status_code == explicit.status_code == 503
    assert refused.json()["code"] == "unavailable"
    message = refused.json()["message"]
    assert "telemetry-2026-11-20" in message
    assert "return_partial_success=true" in message
    assert partial.status_code == 200
    assert partial.json()["unreachable"] == ["telemetry-2026-11-20"]
    sent = servicer.queries if path == "/v1/events" else servicer.aggregates
    assert [r.return_partial_success for r in sent] == [False, True, False]


async def test_a_whole_answer_has_no_unreachable_and_other_unavailable_stays_vague(
    client: httpx.AsyncClient, fake_query: tuple[FakeQueryService, int]
) -> None:
    servicer, _ = fake_query
    whole = await client.get("/v1/events", params={"return_partial_success": "true"}, headers=READ)
    assert whole.status_code == 200
    assert "unreachable" not in whole.json()

    servicer.fail = grpc.StatusCode.UNAVAILABLE  # its details are not meant for callers
    down = await client.get("/v1/events", headers=READ)
    assert down.status_code == 503
    assert down.json()["message"] == "the query service is unavailable"


@pytest.mark.parametrize(
    "params",
    [
        {"return_partial_success": "yes"},
        {"start": "yesterday"},
        {"page_size": "ten"},
        {"group_by": "colour"},
        {"bogus": "1"},
        {"q": ["a", "b"]},
    ],
)
async def test_bad_parameters_are_400_without_calling_the_service(
    client: httpx.AsyncClient,
    fake_query: tuple[FakeQueryService, int],
    params: dict[str, str | list[str]],
) -> None:
    servicer, _ = fake_query
    path = "/v1/events/aggregate" if "group_by" in params else "/v1/events"

    response = await client.get(path, params=params, headers=READ)

    assert response.status_code == 400
    assert servicer.queries == []
    assert servicer.aggregates == []


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/aggregate"])
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthenticated"),
        ({"X-Api-Key": "nope"}, 401, "unauthenticated"),
        ({"X-Api-Key": WRITE_KEY}, 403, "permission_denied"),
    ],
)
async def test_query_routes_need_a_read_key(
    client: httpx.AsyncClient,
    fake_query: tuple[FakeQueryService, int],
    path: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    servicer, _ = fake_query

    response = await client.get(path, headers=headers)

    assert response.status_code == status
    assert response.json()["code"] == code
    assert servicer.queries == []
    assert servicer.aggregates == []


async def test_query_service_down_is_503_with_retry_after(nats_server: NatsProcess) -> None:
    gw = Gateway(
        gateway_config(
            nats_server.url,
            GATEWAY_QUERY_TARGET=f"127.0.0.1:{free_port()}",
            GATEWAY_QUERY_TIMEOUT_S="2",
        )
    )
    await gw.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
            response = await http.get("/v1/events", headers=READ)
    finally:
        await gw.stop()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "unavailable"
