"""One posted batch is one trace: gateway, then enricher, then indexer (linked by the bulk).

The three services run in this process, in one event loop, each with its own tracer
provider and all exporting to one in-memory exporter; NATS is private, OpenSearch is the
test node under an index prefix of this test's own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from telemetry.v1 import event_pb2, ingest_service_pb2, ingest_service_pb2_grpc
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from enricher import Config as EnricherConfig
from enricher import Enricher
from gateway import Gateway, GatewayConfig
from indexer import Config as IndexerConfig
from indexer import Indexer
from pipeline.config import load
from pipeline.tracing import Tracing
from tests.integration.observability.observability_support import events
from tests.procs import delete_indices
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration

WRITE_KEY = "wk-observability-0123456789"
READ_KEY = "rk-observability-0123456789"
APP_ID = "obs-app"
WAIT_TIMEOUT_S = 60.0


@dataclass
class Running:
    gateway: Gateway
    enricher: Enricher
    indexer: Indexer
    exporter: InMemorySpanExporter


async def _until_ready(*services: Gateway | Enricher | Indexer) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_TIMEOUT_S
    for service in services:
        while not (await service.ready())[0]:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{type(service).__name__} not ready: {await service.ready()}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def running(tmp_path: Path, opensearch_url: str) -> AsyncIterator[Running]:
    nats = NatsProcess(tmp_path / "nats")
    nats.start()
    prefix = f"obs-{uuid.uuid4().hex[:10]}-"
    exporter = InMemorySpanExporter()
    tracers = {name: Tracing.exporting(name, exporter, batch=False) for name in SERVICES}
    indexer = Indexer(
        load(
            IndexerConfig,
            {
                "NATS_URL": nats.url,
                "OPENSEARCH_URL": opensearch_url,
                "INDEXER_INDEX_PREFIX": prefix,
                "INDEXER_GRPC_PORT": "0",
                "INDEXER_HTTP_PORT": "0",
                "INDEXER_RETENTION_DAYS": "0",
                "INDEXER_FLUSH_INTERVAL_S": "0.05",
            },
        ),
        tracer=tracers["indexer"],
    )
    enricher = Enricher(
        load(
            EnricherConfig,
            {"NATS_URL": nats.url, "ENRICHER_GRPC_PORT": "0", "ENRICHER_HTTP_PORT": "0"},
        ),
        tracer=tracers["enricher"],
    )
    started: list[Gateway | Enricher | Indexer] = []
    try:
        for service in (indexer, enricher):
            await service.start()
            started.append(service)
        gateway = Gateway(
            load(
                GatewayConfig,
                {
                    "NATS_URL": nats.url,
                    "GATEWAY_HTTP_PORT": "0",
                    "GATEWAY_GRPC_PORT": "0",
                    "GATEWAY_WRITE_KEYS": f"{WRITE_KEY}:{APP_ID}",
                    "GATEWAY_READ_KEYS": f"{READ_KEY}:obs-reader",
                    "GATEWAY_QUERY_TARGET": f"127.0.0.1:{indexer.grpc_port}",
                },
            ),
            tracer=tracers["gateway"],
        )
        await gateway.start()
        started.append(gateway)
        await _until_ready(indexer, enricher, gateway)
        yield Running(gateway, enricher, indexer, exporter)
    finally:
        for service in reversed(started):
            await service.stop()
        for tracer in tracers.values():
            tracer.shutdown()
        nats.stop()
        delete_indices(opensearch_url, prefix)


SERVICES = ("gateway", "enricher", "indexer")


def _service(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def _attr(span: ReadableSpan, key: str) -> object:
    assert span.attributes is not None
    return span.attributes.get(key)


async def _wait_for_bulk(exporter: InMemorySpanExporter, documents: int) -> list[ReadableSpan]:
    deadline = asyncio.get_running_loop().time() + WAIT_TIMEOUT_S
    while True:
        bulks = [s for s in exporter.get_finished_spans() if s.name == "bulk"]
        if sum(int(str(_attr(s, "pipeline.documents"))) for s in bulks) >= documents:
            return bulks
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("no bulk span for the batch")
        await asyncio.sleep(0.05)


async def test_a_posted_batch_is_traced_from_gateway_to_indexer(running: Running) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.gateway.http_port}", timeout=10.0
    ) as client:
        answer = await client.post(
            "/v1/track", json=events(3), headers={"Authorization": f"Bearer {WRITE_KEY}"}
        )
    assert answer.status_code == 202, answer.text
    bulks = await _wait_for_bulk(running.exporter, 3)
    spans = running.exporter.get_finished_spans()

    # The gateway: the request span, and the publish span inside it.
    (request,) = [s for s in spans if s.name == "POST /v1/track"]
    (publish,) = [s for s in spans if s.name == "publish TELEMETRY_RAW"]
    assert (_service(request), _service(publish)) == ("gateway", "gateway")
    assert request.kind is SpanKind.SERVER
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == request.context.span_id
    assert _attr(request, "pipeline.app_id") == APP_ID
    assert _attr(request, "pipeline.events.accepted") == 3

    # The enricher: one span for the raw message, a child of the publish (the NATS header).
    (enrich,) = [s for s in spans if _service(s) == "enricher"]
    assert enrich.kind is SpanKind.CONSUMER
    assert enrich.context.trace_id == request.context.trace_id
    assert enrich.parent is not None
    assert enrich.parent.span_id == publish.context.span_id
    assert _attr(enrich, "pipeline.events") == 3
    assert _attr(enrich, "pipeline.outcome") == "enriched"

    # The indexer: bulk spans link to the enricher's span (a bulk covers many messages).
    assert {_service(s) for s in bulks} == {"indexer"}
    linked = [
        bulk
        for bulk in bulks
        if any(
            link.context.trace_id == request.context.trace_id
            and link.context.span_id == enrich.context.span_id
            for link in bulk.links
        )
    ]
    assert sum(int(str(_attr(bulk, "pipeline.documents.created"))) for bulk in linked) == 3

    # In that order.
    assert request.start_time is not None
    assert publish.start_time is not None
    assert enrich.start_time is not None
    first_bulk = min(int(bulk.start_time or 0) for bulk in linked)
    assert request.start_time <= publish.start_time < enrich.start_time < first_bulk

    # Counts and ids only: no key, no client address.
    for span in spans:
        text = span.to_json()
        assert WRITE_KEY not in text
        assert "client_ip" not in text


CALLER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"


async def test_grpc_callers_continue_their_own_trace(running: Running) -> None:
    """An internal producer's traceparent (gRPC metadata) is the parent of the ingest span,
    and so of the whole path; a query call is traced the same way."""
    caller = (("traceparent", f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"),)
    now = Timestamp()
    now.GetCurrentTime()
    request = ingest_service_pb2.IngestEventsRequest(
        events=[
            event_pb2.Event(
                event_id=str(uuid.uuid4()),
                session_id="s",
                user_id="u",
                event_name="obs_grpc",
                client_timestamp=now,
            )
            for _ in range(2)
        ]
    )
    gateway = f"127.0.0.1:{running.gateway.grpc_port}"
    async with grpc.aio.insecure_channel(gateway) as channel:
        response = await ingest_service_pb2_grpc.IngestServiceStub(channel).IngestEvents(
            request, metadata=(("x-api-key", WRITE_KEY), *caller)
        )
    assert response.accepted == 2
    await _wait_for_bulk(running.exporter, 2)
    indexer = f"127.0.0.1:{running.indexer.grpc_port}"
    async with grpc.aio.insecure_channel(indexer) as channel:
        await qs_grpc.QueryServiceStub(channel).QueryEvents(
            qs.QueryEventsRequest(page_size=5), metadata=caller
        )

    spans = running.exporter.get_finished_spans()
    (ingest,) = [s for s in spans if s.name == "telemetry.v1.IngestService/IngestEvents"]
    assert _service(ingest) == "gateway"
    assert format_trace_id(ingest.context.trace_id) == CALLER_TRACE_ID
    assert ingest.parent is not None
    assert format_span_id(ingest.parent.span_id) == CALLER_SPAN_ID
    assert _attr(ingest, "rpc.grpc.status_code") == 0
    assert _attr(ingest, "pipeline.events.accepted") == 2
    (enrich,) = [s for s in spans if _service(s) == "enricher"]
    assert format_trace_id(enrich.context.trace_id) == CALLER_TRACE_ID
    (query,) = [s for s in spans if s.name == "telemetry.v1.QueryService/QueryEvents"]
    assert _service(query) == "indexer"
    assert format_trace_id(query.context.trace_id) == CALLER_TRACE_ID
    assert _attr(query, "rpc.grpc.status_code") == 0


def _child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_a_query_over_http_is_one_trace_down_to_the_indexer(running: Running) -> None:
    """GET /v1/events and /v1/events/aggregate: the gateway's server span continues the
    caller's traceparent, its client span is the parent of the indexer's QueryService span."""
    base = f"http://127.0.0.1:{running.gateway.http_port}"
    headers = {"X-Api-Key": READ_KEY, "traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"}
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
        listed = await http.get("/v1/events", params={"page_size": "5"}, headers=headers)
        counted = await http.get(
            "/v1/events/aggregate", params={"group_by": "event_name"}, headers=headers
        )
        refused = await http.get("/v1/events", params={"page_size": "-1"}, headers=headers)
    assert listed.status_code == 200, listed.text
    assert counted.status_code == 200, counted.text
    assert refused.status_code == 400, refused.text

    spans = running.exporter.get_finished_spans()
    for route, method in (
        ("GET /v1/events", "QueryEvents"),
        ("GET /v1/events/aggregate", "AggregateEvents"),
    ):
        server = next(s for s in spans if s.name == route and s.status.is_ok)
        assert _service(server) == "gateway"
        assert server.kind == SpanKind.SERVER
        assert format_trace_id(server.context.trace_id) == CALLER_TRACE_ID
        assert server.parent is not None
        assert format_span_id(server.parent.span_id) == CALLER_SPAN_ID
        assert _attr(server, "pipeline.reader") == "obs-reader"
        name = f"telemetry.v1.QueryService/{method}"
        (client,) = [s for s in spans if s.name == name and _child_of(s, server)]
        assert _service(client) == "gateway"
        assert client.kind == SpanKind.CLIENT
        (indexer,) = [s for s in spans if s.name == name and _child_of(s, client)]
        assert _service(indexer) == "indexer"
        assert indexer.kind == SpanKind.SERVER
    (bad,) = [s for s in spans if s.name == "GET /v1/events" and not s.status.is_ok]
    assert _attr(bad, "error.type") == "UpstreamError"
