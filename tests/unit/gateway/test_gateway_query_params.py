"""GET /v1/events parameters -> QueryService requests: integers, times, the encoding."""

from __future__ import annotations

import httpx
import pytest
from starlette.datastructures import QueryParams
from telemetry.v1 import event_pb2, query_service_pb2

from gateway import Gateway
from gateway._query import aggregate_request, events_json, events_request, http_names
from gateway.errors import InvalidRequest
from tests.unit.gateway.conftest import READ_KEY, FakeBroker, FakeQuery, asgi_client, unit_config


@pytest.mark.parametrize(
    ("text", "size"),
    [("25", 25), ("+25", 25), ("-1", -1), ("3000000000", 2**31 - 1), ("-3000000000", -(2**31))],
)
def test_page_size_is_an_ascii_integer_clamped_to_int32(text: str, size: int) -> None:
    # Past int32 is clamped (the query service then clamps to its maximum, or refuses < 0).
    assert events_request(QueryParams({"page_size": text})).page_size == size


@pytest.mark.parametrize("text", ["ten", "1_0", "\u0661\u0660", "1.5", " 10", "0x10", "1e3"])
def test_anything_but_ascii_digits_is_not_an_integer(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^page_size: must be an integer$"):
        events_request(QueryParams({"page_size": text}))
    with pytest.raises(InvalidRequest, match=r"^limit: must be an integer$"):
        aggregate_request(QueryParams({"group_by": "event_name", "limit": text}))


def test_an_unencoded_plus_in_a_time_gets_a_hint() -> None:
    # "?start=2024-01-01T00:00:00+02:00" arrives with a space where the + was.
    params = QueryParams("start=2024-01-01T00:00:00+02:00")

    with pytest.raises(InvalidRequest, match=r"must be sent as %2B"):
        events_request(params)
    encoded = events_request(QueryParams("start=2024-01-01T00:00:00%2B02:00"))
    assert encoded.filter.start_time.seconds == 1704060000


@pytest.mark.parametrize(
    "query",
    [
        "start=2024-01-01T00:00:00.250+02:00",
        "start=2024-01-01 00:00:00+02:00",  # a space for the T too: the '+' is still wanted
    ],
)
def test_any_time_whose_offset_begins_with_a_space_gets_the_hint(query: str) -> None:
    with pytest.raises(InvalidRequest, match=r"must be sent as %2B"):
        events_request(QueryParams(query))


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27 00:00:00Z",
        " 2026-11-27T00:00:00Z",
        "2026-11-27T00:00:00Z ",
        "2026-11-27T00:00:00 Z",
        "2026-11-27T00:00:00 -02:00",
    ],
)
def test_a_time_with_a_space_where_no_plus_was_gets_no_plus_hint(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"with its offset, such as \S+ \(no ages") as caught:
        events_request(QueryParams({"start": text}))
    assert "%2B" not in str(caught.value)


@pytest.mark.parametrize("text", ["2024-01-01T00:00:00", "1h", "yesterday"])
def test_a_time_without_offset_or_an_age_says_what_is_wanted(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"with its offset, such as \S+ \(no ages"):
        events_request(QueryParams({"end": text}))


@pytest.mark.parametrize("length", [1001, 1024, 1025, 5000])
def test_a_q_longer_than_the_query_services_1000_characters_says_1000(length: int) -> None:
    # The other parameters' cap is 1,024; q's is the QueryService's, whatever the length.
    for request in (events_request, aggregate_request):
        with pytest.raises(InvalidRequest, match=r"^q: is longer than 1000 characters$"):
            request(QueryParams({"q": "a" * length}))
    assert events_request(QueryParams({"q": "a" * 1000})).filter.text == "a" * 1000
    with pytest.raises(InvalidRequest, match=r"^user_id: is longer than 1024 characters$"):
        events_request(QueryParams({"user_id": "u" * 1025}))
    assert list(events_request(QueryParams({"user_id": "u" * 1024})).filter.user_ids)


@pytest.mark.parametrize(
    "query",
    [
        "page_size=ten",
        "page_size=1&page_size=2",
        "start=yesterday",
        "end=9999-12-31T23:59:59-01:00",
        "user_id=",
        "q=",
        "return_partial_success=yes",
        "page_token=" + "t" * 1025,
    ],
)
def test_the_gateways_own_parameter_errors_begin_with_the_parameters_name(query: str) -> None:
    # As the QueryService's do (`page_size: must not be negative`).
    name = query.split("=", 1)[0]
    with pytest.raises(InvalidRequest, match=f"^{name}: "):
        events_request(QueryParams(query))


@pytest.mark.parametrize("query", ["group_by=colour", "interval=week", "limit=1.5"])
def test_the_aggregate_routes_own_parameter_errors_begin_with_the_parameters_name(
    query: str,
) -> None:
    name = query.split("=", 1)[0]
    with pytest.raises(InvalidRequest, match=f"^{name}: "):
        aggregate_request(QueryParams(query))


@pytest.mark.parametrize("query", ["user_id=%FF", "user_id=caf%C3", "%FF=1"])
async def test_a_query_string_that_is_not_utf8_is_refused(
    client: httpx.AsyncClient, query: str
) -> None:
    for path in ("/v1/events", "/v1/events/aggregate"):
        answer = await client.get(f"{path}?{query}", headers={"X-Api-Key": READ_KEY})
        assert answer.status_code == 400
        assert "not UTF-8" in answer.json()["message"]


class RecordingQuery(FakeQuery):
    def __init__(self) -> None:
        self.seen: list[query_service_pb2.QueryEventsRequest] = []

    async def query_events(
        self, request: query_service_pb2.QueryEventsRequest
    ) -> query_service_pb2.QueryEventsResponse:
        self.seen.append(request)
        return await super().query_events(request)


async def test_percent_encoded_utf8_reaches_the_query_service() -> None:
    query = RecordingQuery()
    gateway = Gateway(unit_config(), broker=FakeBroker(), query=query)
    async with asgi_client(gateway) as http:
        answer = await http.get(
            "/v1/events?user_id=caf%C3%A9&q=%EF%BF%BD", headers={"X-Api-Key": READ_KEY}
        )
    assert answer.status_code == 200, answer.text
    assert list(query.seen[0].filter.user_ids) == ["café"]
    assert query.seen[0].filter.text == "\ufffd"  # a real U+FFFD, sent encoded, is kept


async def raw_get(gateway: Gateway, path: str, query: bytes) -> tuple[int, bytes]:
    """GET with the query string's bytes as they are (httpx would percent-encode them)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"gateway"), (b"x-api-key", READ_KEY.encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway", 80),
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await gateway.app(scope, receive, send)
    body = b"".join(bytes(m.get("body", b"")) for m in sent[1:])  # type: ignore[arg-type]
    return int(sent[0]["status"]), body  # type: ignore[call-overload]


async def test_bytes_sent_unencoded_are_read_as_utf8() -> None:
    # curl sends `?user_id=José` as it is typed; h11 passes the bytes on.
    query = RecordingQuery()
    gateway = Gateway(unit_config(), broker=FakeBroker(), query=query)

    status, _ = await raw_get(gateway, "/v1/events", "user_id=José".encode())
    refused, body = await raw_get(gateway, "/v1/events", b"user_id=\xff")

    assert status == 200
    assert list(query.seen[0].filter.user_ids) == ["José"]
    assert refused == 400
    assert b"not UTF-8" in body


@pytest.mark.parametrize("query", ["user_id=", "country=GB&country=", "event_name"])
async def test_an_empty_filter_value_is_refused_not_taken_as_any(
    client: httpx.AsyncClient, query: str
) -> None:
    answer = await client.get(f"/v1/events?{query}", headers={"X-Api-Key": READ_KEY})

    assert answer.status_code == 400
    assert ": is empty: leave it out to match any value" in answer.json()["message"]


@pytest.mark.parametrize("query", ["start=", "end=", "start=2026-01-01T00:00:00Z&end=", "q="])
async def test_an_empty_time_or_text_is_refused_not_taken_as_unbounded(
    client: httpx.AsyncClient, query: str
) -> None:
    # `start=$START` with START unset: dropped, the query would read every event.
    for route in ("/v1/events", "/v1/events/aggregate"):
        answer = await client.get(f"{route}?{query}", headers={"X-Api-Key": READ_KEY})

        assert answer.status_code == 400, route
        assert ": is empty: leave it out to match any event" in answer.json()["message"]


@pytest.mark.parametrize(
    ("route", "query", "left_out"),
    [
        ("/v1/events", "page_size=", "for the default page size"),
        ("/v1/events", "page_token", "for the first page"),
        ("/v1/events", "return_partial_success=", "for false"),
        ("/v1/events/aggregate", "limit=", "for the default number of values"),
        ("/v1/events/aggregate", "group_by=", "for no counts by field"),
        ("/v1/events/aggregate", "interval=", "for no histogram"),
        ("/v1/events/aggregate", "return_partial_success=", "for false"),
    ],
)
async def test_an_empty_paging_or_aggregation_parameter_is_refused_not_taken_as_absent(
    client: httpx.AsyncClient, route: str, query: str, left_out: str
) -> None:
    # `page_size=$SIZE` with SIZE unset: taken as absent, the mistake would go unseen.
    answer = await client.get(f"{route}?{query}", headers={"X-Api-Key": READ_KEY})

    assert answer.status_code == 400
    name = query.split("=", 1)[0]
    assert answer.json()["message"] == f"{name}: is empty: leave it out {left_out}"


def test_a_clock_status_this_gateway_does_not_know_is_its_number() -> None:
    # An enricher newer than the gateway; the page must not fail for it.
    known = event_pb2.EnrichedEvent(clock_status=event_pb2.CLOCK_STATUS_CORRECTED)
    newer = event_pb2.EnrichedEvent()
    newer.clock_status = 7  # type: ignore[assignment]
    page = query_service_pb2.QueryEventsResponse(events=[known, newer])

    assert [e["clock_status"] for e in events_json(page)["events"]] == [
        "CLOCK_STATUS_CORRECTED",
        7,
    ]


@pytest.mark.parametrize(
    ("details", "shown"),
    [
        (
            "filter.user_ids: has 1001 values, more than 1000",
            "user_id: has 1001 values, more than 1000",
        ),
        ("filter.session_ids: x", "session_id: x"),
        ("filter.event_names: x", "event_name: x"),
        ("filter.app_versions: x", "app_version: x"),
        ("filter.device_os: x", "device_os: x"),
        ("filter.country_codes: x", "country: x"),
        ("filter.app_ids: x", "app_id: x"),
        ("filter.start_time: is not a valid time", "start: is not a valid time"),
        ("filter.end_time: is before filter.start_time", "end: is before start"),
        ("filter.text: has no words to search for", "q: has no words to search for"),
        ("page_token: is not a valid page token", "page_token: is not a valid page token"),
        ("limit: must not be negative", "limit: must not be negative"),
        ("filter.colour: x", "filter.colour: x"),  # a field this gateway does not know
        ("", "invalid_argument"),
    ],
)
def test_query_service_field_names_become_the_query_parameters(details: str, shown: str) -> None:
    assert http_names(details) == shown


@pytest.mark.parametrize(
    ("query", "name"),
    [("start=9999-12-31T23:59:59-01:00", "start"), ("end=0001-01-01T00:00:00%2B00:01", "end")],
)
def test_a_time_outside_the_years_1_to_9999_in_utc_says_so(query: str, name: str) -> None:
    message = f"^{name}: is out of range: it lies outside the years 0001-9999 in UTC$"
    with pytest.raises(InvalidRequest, match=message):
        events_request(QueryParams(query))
    with pytest.raises(InvalidRequest, match=message):
        aggregate_request(QueryParams(query))


def test_a_time_in_year_0000_is_judged_in_utc() -> None:
    request = events_request(QueryParams("start=0000-12-31T23:30:00-01:00"))
    assert request.filter.start_time.ToJsonString() == "0001-01-01T00:30:00Z"

    message = "^end: is out of range: it lies outside the years 0001-9999 in UTC$"
    with pytest.raises(InvalidRequest, match=message):
        events_request(QueryParams("end=0000-12-31T23:30:00%2B01:00"))
