"""A request that fails on an unexpected error: answered 500 / INTERNAL, and its log line
names the request's trace, as the lines written inside its span do."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc
import orjson
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id
from telemetry.v1 import event_pb2, ingest_service_pb2, ingest_service_pb2_grpc, query_service_pb2

from gateway import Gateway
from gateway._auth import KeyStore
from gateway._grpc import IngestServicer
from gateway._metrics import Metrics
from gateway._ratelimit import RateLimiter
from pipeline import tracing
from pipeline.logs import JsonFormatter
from tests.unit.gateway.conftest import (
    READ_KEY,
    WRITE_KEY,
    FakeBroker,
    FakeQuery,
    asgi_client,
    unit_config,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
EVENT = {
    "event_id": "e-1",
    "session_id": "s",
    "user_id": "u",
    "event_name": "tap",
    "client_timestamp": "2026-01-31T12:00:00Z",
}


class BrokenBroker(FakeBroker):
    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        raise RuntimeError("a bug in publishing")


class BrokenQuery(FakeQuery):
    async def query_events(
        self, request: query_service_pb2.QueryEventsRequest
    ) -> query_service_pb2.QueryEventsResponse:
        raise RuntimeError("a bug in querying")


class Lines:
    """The gateway's log lines as the JSON formatter writes them, formatted as written (a
    line's trace ids are those of the moment it is written)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def one(self, msg: str) -> dict[str, Any]:
        parsed = [orjson.loads(line) for line in self.stream.getvalue().splitlines()]
        (line,) = [line for line in parsed if line["msg"] == msg]
        found: dict[str, Any] = line
        return found


@pytest.fixture
def lines() -> Iterator[Lines]:
    written = Lines()
    handler = logging.StreamHandler(written.stream)
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        yield written
    finally:
        logger.removeHandler(handler)


def _exporting(exporter: InMemorySpanExporter) -> tracing.Tracing:
    return tracing.Tracing.exporting("gateway", exporter, batch=False)


def _span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


def _span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format_span_id(span.context.span_id)


async def _post_track(gateway: Gateway, headers: dict[str, str]) -> int:
    async with asgi_client(gateway) as http:
        answer = await http.post(
            "/v1/track",
            content=orjson.dumps([EVENT]),
            headers={"Authorization": f"Bearer {WRITE_KEY}", **headers},
        )
    assert answer.json() == {"code": "internal", "message": "internal error"}
    return answer.status_code


# --- HTTP ---------------------------------------------------------------------------------


async def test_an_unexpected_error_on_track_is_logged_with_the_request_trace(
    lines: Lines,
) -> None:
    exporter = InMemorySpanExporter()
    gateway = Gateway(
        unit_config(), broker=BrokenBroker(), query=FakeQuery(), tracer=_exporting(exporter)
    )

    assert await _post_track(gateway, {"traceparent": TRACEPARENT}) == 500

    server = _span(exporter, "POST /v1/track")
    assert server.status.status_code is StatusCode.ERROR
    line = lines.one("unexpected error in /v1/track")
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == _span_id(server)
    assert "RuntimeError: a bug in publishing" in line["exc"]


async def test_an_unexpected_error_on_a_read_route_is_logged_with_the_request_trace(
    lines: Lines,
) -> None:
    exporter = InMemorySpanExporter()
    gateway = Gateway(
        unit_config(), broker=FakeBroker(), query=BrokenQuery(), tracer=_exporting(exporter)
    )

    async with asgi_client(gateway) as http:
        answer = await http.get(
            "/v1/events", headers={"X-Api-Key": READ_KEY, "traceparent": TRACEPARENT}
        )

    assert answer.status_code == 500
    server = _span(exporter, "GET /v1/events")
    line = lines.one("unexpected error in /v1/events")
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == _span_id(server)


async def test_a_trace_started_here_is_the_one_the_line_names(lines: Lines) -> None:
    exporter = InMemorySpanExporter()
    gateway = Gateway(
        unit_config(), broker=BrokenBroker(), query=FakeQuery(), tracer=_exporting(exporter)
    )

    assert await _post_track(gateway, {}) == 500

    server = _span(exporter, "POST /v1/track")
    assert server.context is not None
    line = lines.one("unexpected error in /v1/track")
    assert line["trace_id"] == format_trace_id(server.context.trace_id)
    assert line["span_id"] == _span_id(server)


async def test_without_tracing_the_line_names_the_trace_of_the_traceparent(lines: Lines) -> None:
    gateway = Gateway(unit_config(), broker=BrokenBroker(), query=FakeQuery())

    assert await _post_track(gateway, {"traceparent": TRACEPARENT}) == 500
    assert await _post_track(gateway, {"x-request-id": "no-trace"}) == 500

    stream = lines.stream.getvalue().splitlines()
    first, second = (orjson.loads(line) for line in stream)
    assert first["trace_id"] == TRACE_ID
    assert "span_id" not in first
    assert "trace_id" not in second


# --- gRPC ---------------------------------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """What IngestEvents reads from its ServicerContext, and an abort that raises."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = (("x-api-key", WRITE_KEY), *metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


def _servicer(tracer: tracing.Tracing | None) -> tuple[IngestServicer, Metrics]:
    config = unit_config()
    gateway = Gateway(config, broker=BrokenBroker(), query=FakeQuery())
    metrics = Metrics()
    servicer = IngestServicer(
        core=gateway.core,
        keys=KeyStore.from_config(config),
        metrics=metrics,
        retry_after_s=1,
        limiter=RateLimiter(rate=0, burst=1),
        tracer=tracer,
    )
    return servicer, metrics


def _request() -> ingest_service_pb2.IngestEventsRequest:
    event = event_pb2.Event(
        event_id="e-1",
        session_id="s",
        user_id="u",
        event_name="tap",
        client_timestamp=Timestamp(seconds=1_700_000_000),
    )
    return ingest_service_pb2.IngestEventsRequest(events=[event])


async def test_an_unexpected_error_in_ingest_events_is_internal_and_logged_with_the_trace(
    lines: Lines,
) -> None:
    exporter = InMemorySpanExporter()
    servicer, metrics = _servicer(_exporting(exporter))
    call: Any = Context((("traceparent", TRACEPARENT),))

    with pytest.raises(Aborted) as ended:
        await servicer.IngestEvents(_request(), call)

    assert ended.value.code is grpc.StatusCode.INTERNAL
    assert str(ended.value) == "internal error"  # never the error's own text
    server = _span(exporter, "telemetry.v1.IngestService/IngestEvents")
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["error.type"] == "RuntimeError"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    line = lines.one("unexpected error in IngestEvents")
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == _span_id(server)
    assert "RuntimeError: a bug in publishing" in line["exc"]
    labels = {"method": "IngestEvents", "code": "INTERNAL"}
    assert metrics.registry.get_sample_value("gateway_grpc_requests_total", labels) == 1


async def test_without_tracing_ingest_events_logs_the_trace_of_the_traceparent(
    lines: Lines,
) -> None:
    servicer, _ = _servicer(None)
    call: Any = Context((("traceparent", TRACEPARENT),))

    with pytest.raises(Aborted):
        await servicer.IngestEvents(_request(), call)

    line = lines.one("unexpected error in IngestEvents")
    assert line["trace_id"] == TRACE_ID
    assert "span_id" not in line


class BrokenKeys(KeyStore):
    def lookup(self, presented: str | None) -> None:
        raise RuntimeError("a bug in the key check")


async def test_an_unexpected_error_in_the_key_check_is_internal_and_logged_with_the_trace(
    lines: Lines,
) -> None:
    config = unit_config(GATEWAY_HTTP_PORT="0", GATEWAY_GRPC_PORT="0")
    gateway = Gateway(
        config,
        keys=BrokenKeys.from_config(config),
        broker=FakeBroker(),
        query=FakeQuery(),
        tracer=_exporting(InMemorySpanExporter()),
    )
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stub.IngestEvents(
                    _request(), metadata=(("x-api-key", WRITE_KEY), ("traceparent", TRACEPARENT))
                )
    finally:
        await gateway.stop()

    assert ended.value.code() is grpc.StatusCode.INTERNAL
    assert ended.value.details() == "internal error"  # never the error's own text
    line = lines.one("unexpected error in IngestEvents")
    assert line["level"] == "error"
    assert line["trace_id"] == TRACE_ID
    assert "RuntimeError: a bug in the key check" in line["exc"]
    labels = {"method": "IngestEvents", "code": "INTERNAL"}
    assert gateway.metrics.registry.get_sample_value("gateway_grpc_requests_total", labels) == 1
