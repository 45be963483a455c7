"""GET /v1/events and /v1/events/aggregate: query parameters to QueryService requests and back.

The mapping functions are plain; `GrpcQueryClient` is the adapter to the gRPC QueryService.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, query_service_pb2, query_service_pb2_grpc

from gateway.errors import InvalidRequest, Unavailable, UpstreamError
from pipeline import rfc3339, tracing
from pipeline.query_names import (
    GROUP_BY,
    INTERVALS,
    PARTIAL_ANSWER_TRAILER,
    STORE_UNAVAILABLE_TRAILER,
)

SERVICE = "telemetry.v1.QueryService"


class Params(Protocol):
    """A multi-valued query string (starlette's QueryParams fits)."""

    def getlist(self, key: str) -> list[str]: ...


class QueryPort(Protocol):
    """The port to the QueryService."""

    async def query_events(
        self, request: query_service_pb2.QueryEventsRequest
    ) -> query_service_pb2.QueryEventsResponse: ...

    async def aggregate_events(
        self, request: query_service_pb2.AggregateEventsRequest
    ) -> query_service_pb2.AggregateEventsResponse: ...


# query parameter -> EventFilter field (repeatable)
FILTER_PARAMS = {
    "user_id": "user_ids",
    "session_id": "session_ids",
    "event_name": "event_names",
    "app_version": "app_versions",
    "device_os": "device_os",
    "country": "country_codes",
    "app_id": "app_ids",
}
_PARTIAL = "return_partial_success"
EVENTS_PARAMS = (*FILTER_PARAMS, "start", "end", "q", "page_size", "page_token", _PARTIAL)
AGGREGATE_PARAMS = (
    *FILTER_PARAMS,
    *("start", "end", "q", "group_by", "interval", "limit", _PARTIAL),
)
MAX_PARAM_CHARS = 1024
# The QueryService's bound on filter.text (query_service.proto), said in its words.
MAX_TEXT_CHARS = 1000
_INTEGER = re.compile(r"[+-]?[0-9]+")
# A time whose offset's '+' arrived as a space ("...T10:00:00 02:00"): sent unencoded, a '+'
# in a query string means a space.
_PLUS_AS_SPACE = re.compile(r".*[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)? [0-9]{2}:[0-9]{2}")


# What leaving each parameter that comes once out means, said when it is given empty.
_LEFT_OUT = {
    "start": "to match any event",
    "end": "to match any event",
    "q": "to match any event",
    "page_size": "for the default page size",
    "page_token": "for the first page",
    "group_by": "for no counts by field",
    "interval": "for no histogram",
    "limit": "for the default number of values",
    _PARTIAL: "for false",
}


def _one(params: Params, name: str, *, max_chars: int = MAX_PARAM_CHARS) -> str:
    """`name`'s value; "" when it is not given. Given empty, it is refused, as a filter value
    is: `page_size=$SIZE` with SIZE unset is a client's mistake, and taken as absent it would
    go unseen (with start, end or q, it would widen the query to every event)."""
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name}: may be given once")
    if not values:
        return ""
    if not values[0]:
        raise InvalidRequest(f"{name}: is empty: leave it out {_LEFT_OUT[name]}")
    if len(values[0]) > max_chars:
        raise InvalidRequest(f"{name}: is longer than {max_chars} characters")
    return values[0]


def _int(params: Params, name: str) -> int:
    text = _one(params, name)
    if not text:
        return 0
    if _INTEGER.fullmatch(text) is None:  # int() would also take "1_0" and non-ASCII digits
        raise InvalidRequest(f"{name}: must be an integer")
    # Past int32 is clamped like any value past the maximum (the sign still decides).
    return max(-(2**31), min(int(text), 2**31 - 1))


def _time(params: Params, name: str) -> Timestamp | None:
    text = _one(params, name)
    if not text:
        return None
    parsed = rfc3339.parse(text)
    if parsed is None:
        if rfc3339.out_of_range(text):
            raise InvalidRequest(f"{name}: {rfc3339.OUT_OF_RANGE}")
        hint = (
            " (a '+' in a URL must be sent as %2B)"
            if _PLUS_AS_SPACE.fullmatch(text)
            else " with its offset, such as 2026-11-27T08:00:00Z (no ages such as 1h here)"
        )
        raise InvalidRequest(f"{name}: is not an RFC 3339 date-time{hint}")
    return Timestamp(seconds=parsed[0], nanos=parsed[1])


def _filter(params: Params) -> query_service_pb2.EventFilter:
    fields: dict[str, Any] = {}
    for param, field in FILTER_PARAMS.items():
        values = params.getlist(param)
        if not all(values):
            # Dropped, it would match every event: a client with an unset variable would
            # read everyone's.
            raise InvalidRequest(f"{param}: is empty: leave it out to match any value")
        if any(len(v) > MAX_PARAM_CHARS for v in values):
            raise InvalidRequest(f"{param}: is longer than {MAX_PARAM_CHARS} characters")
        if values:
            fields[field] = values
    start, end = _time(params, "start"), _time(params, "end")
    if start is not None:
        fields["start_time"] = start
    if end is not None:
        fields["end_time"] = end
    text = _one(params, "q", max_chars=MAX_TEXT_CHARS)
    if text:
        fields["text"] = text
    return query_service_pb2.EventFilter(**fields)


def _flag(params: Params, name: str) -> bool:
    text = _one(params, name)
    if text not in ("", "true", "false"):  # "": not given
        raise InvalidRequest(f"{name}: must be true or false")
    return text == "true"


def _choice(params: Params, name: str, choices: dict[str, Any]) -> Any:
    text = _one(params, name)
    if not text:
        return 0
    if text not in choices:
        raise InvalidRequest(f"{name}: must be one of {', '.join(choices)}")
    return choices[text]


def events_request(params: Params) -> query_service_pb2.QueryEventsRequest:
    """The QueryEventsRequest for GET /v1/events."""
    return query_service_pb2.QueryEventsRequest(
        filter=_filter(params),
        page_size=_int(params, "page_size"),
        page_token=_one(params, "page_token"),
        return_partial_success=_flag(params, _PARTIAL),
    )


def aggregate_request(params: Params) -> query_service_pb2.AggregateEventsRequest:
    """The AggregateEventsRequest for GET /v1/events/aggregate."""
    return query_service_pb2.AggregateEventsRequest(
        filter=_filter(params),
        group_by=_choice(params, "group_by", GROUP_BY),
        limit=_int(params, "limit"),
        interval=_choice(params, "interval", INTERVALS),
        return_partial_success=_flag(params, _PARTIAL),
    )


def _stamp(value: Timestamp, present: bool) -> str | None:
    return rfc3339.format_utc(value.seconds, value.nanos) if present else None


def event_json(item: event_pb2.EnrichedEvent) -> dict[str, Any]:
    """One enriched event as JSON, with the index's field names."""
    event = item.event
    return {
        "event_id": event.event_id,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "event_name": event.event_name,
        "client_timestamp": _stamp(event.client_timestamp, event.HasField("client_timestamp")),
        "app_version": event.app_version,
        "device_os": event.device_os,
        "metadata": dict(event.metadata),
        "ingestion_timestamp": _stamp(item.received_at, item.HasField("received_at")),
        "enriched_at": _stamp(item.enriched_at, item.HasField("enriched_at")),
        "corrected_timestamp": _stamp(
            item.corrected_timestamp, item.HasField("corrected_timestamp")
        ),
        "clock_skew_ms": item.clock_skew_ms,
        "clock_status": _clock_status(item.clock_status),
        "geo_country": item.geo.country_code,
        "geo_city": item.geo.city,
        "os_name": item.os_name,
        "os_version": item.os_version,
        "event_message": item.event_message,
        "app_id": item.app_id,
        "request_id": item.request_id,
    }


def _clock_status(value: int) -> str | int:
    """The status's name; its number when this gateway does not know it (an enricher newer
    than the gateway), as protobuf's JSON mapping writes an unknown enum value."""
    try:
        return event_pb2.ClockStatus.Name(event_pb2.ClockStatus.ValueType(value))
    except ValueError:
        return value


def events_json(response: query_service_pb2.QueryEventsResponse) -> dict[str, Any]:
    """The JSON answer of GET /v1/events."""
    answer: dict[str, Any] = {
        "events": [event_json(item) for item in response.events],
        "next_page_token": response.next_page_token,
        "total_size": response.total_size,
    }
    if response.unreachable:
        answer["unreachable"] = list(response.unreachable)
    return answer


def aggregate_json(response: query_service_pb2.AggregateEventsResponse) -> dict[str, Any]:
    """The JSON answer of GET /v1/events/aggregate."""
    answer: dict[str, Any] = {
        "total_count": response.total_count,
        "counts": [{"value": c.value, "count": c.count} for c in response.counts],
        "count_error_upper_bound": response.count_error_upper_bound,
        "histogram": [
            {"start_time": _stamp(b.start_time, True), "count": b.count} for b in response.histogram
        ],
    }
    if response.unreachable:
        answer["unreachable"] = list(response.unreachable)
    return answer


class GrpcQueryClient:
    """Calls the gRPC QueryService with a deadline; errors keep their canonical code."""

    def __init__(self, target: str, *, timeout_s: float) -> None:
        self._target = target
        self._timeout = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: query_service_pb2_grpc.QueryServiceAsyncStub | None = None

    def _connected(self) -> query_service_pb2_grpc.QueryServiceAsyncStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._target)
            self._stub = query_service_pb2_grpc.QueryServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Closes the channel."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def query_events(
        self, request: query_service_pb2.QueryEventsRequest
    ) -> query_service_pb2.QueryEventsResponse:
        """QueryService.QueryEvents."""
        try:
            return await self._connected().QueryEvents(
                request, timeout=self._timeout, metadata=_trace_metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from None

    async def aggregate_events(
        self, request: query_service_pb2.AggregateEventsRequest
    ) -> query_service_pb2.AggregateEventsResponse:
        """QueryService.AggregateEvents."""
        try:
            return await self._connected().AggregateEvents(
                request, timeout=self._timeout, metadata=_trace_metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from None


def _trace_metadata() -> tuple[tuple[str, str], ...] | None:
    """The current span as `traceparent` metadata (None when nothing is traced)."""
    carrier: dict[str, str] = {}
    if not tracing.inject(carrier):
        return None
    return tuple(carrier.items())


def _translate(err: grpc.aio.AioRpcError) -> Exception:
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        trailers, details = tuple(err.trailing_metadata() or ()), err.details() or ""
        if (PARTIAL_ANSWER_TRAILER, "refused") in trailers:
            # Its details name the indices that did not answer and what the caller can do.
            return Unavailable(_partial_details(details))
        if (STORE_UNAVAILABLE_TRAILER, "unavailable") in trailers and details:
            return Unavailable(details)  # the QueryService's own words: try again later
        # No QueryService answered: the channel's details describe this gateway's network.
        return Unavailable("the query service is unavailable")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return UpstreamError(code, http_names(err.details() or ""))
    return UpstreamError(code, err.details() or code.name.lower())


# EventFilter field -> the query parameter that sets it (the other request fields share their
# parameter's name: page_size, page_token, group_by, interval, limit).
_PARAM_OF_FIELD = {
    **{field: param for param, field in FILTER_PARAMS.items()},
    "start_time": "start",
    "end_time": "end",
    "text": "q",
}
_FILTER_FIELD = re.compile(r"\bfilter\.([a-z_]+)\b")


def http_names(details: str) -> str:
    """The QueryService's INVALID_ARGUMENT details with the query parameters' names for the
    request fields it names (`filter.user_ids` -> `user_id`, `filter.end_time` -> `end`)."""

    def param(match: re.Match[str]) -> str:
        return _PARAM_OF_FIELD.get(match.group(1), match.group(0))

    return _FILTER_FIELD.sub(param, details) or "invalid_argument"


def _partial_details(details: str) -> str:
    """The query service's words, with the JSON route's name for its request field."""
    return details.replace("set return_partial_success", f"add {_PARTIAL}=true")
