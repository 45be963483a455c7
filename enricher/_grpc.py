"""gRPC EnrichService: the enrichment functions as a service, with health and reflection."""

from __future__ import annotations

import time

import grpc
from telemetry.v1 import enrich_service_pb2, enrich_service_pb2_grpc, event_pb2

from enricher._enrich import EnrichOptions, enrich_batch_bytes
from enricher._geo import GeoLookup
from enricher._metrics import Metrics
from pipeline import grpcserver, subjects

SERVICE_NAME = enrich_service_pb2.DESCRIPTOR.services_by_name["EnrichService"].full_name
# The largest message a gRPC client takes by default (grpc.max_receive_message_length):
# a larger response would reach it as the client's own RESOURCE_EXHAUSTED, saying nothing
# of what to change. Enrichment makes events about twice their size.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class EnrichServicer(enrich_service_pb2_grpc.EnrichServiceServicer):
    """EnrichEvents: enriches a raw batch and returns the events; publishes nothing."""

    def __init__(
        self, *, geo: GeoLookup, options: EnrichOptions, max_events: int, metrics: Metrics
    ) -> None:
        self._geo = geo
        self._options = options
        self._max_events = max_events
        self._metrics = metrics

    async def EnrichEvents(  # the generated method name
        self,
        request: enrich_service_pb2.EnrichEventsRequest,
        context: grpc.aio.ServicerContext[
            enrich_service_pb2.EnrichEventsRequest, enrich_service_pb2.EnrichEventsResponse
        ],
    ) -> enrich_service_pb2.EnrichEventsResponse:
        raw = request.batch
        if len(raw.events) > self._max_events:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch.events: {len(raw.events)} events, at most {self._max_events} allowed",
            )
        app_id = raw.context.app_id
        if app_id and not subjects.valid_token(app_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "batch.context.app_id: letters, digits, '_' or '-', at most 64",
            )
        now = time.time_ns()
        cut: set[int] = set()  # the events whose event_message is cut
        data = enrich_batch_bytes(
            raw,
            app_id=app_id,
            fallback_received_ns=now,
            now_ns=now,
            geo=self._geo,
            options=self._options,
            cut=cut,
        )
        # The response holds the enriched batch's events: at most its size.
        if len(data) > MAX_RESPONSE_BYTES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch.events: enriched, the {len(raw.events)} events take {len(data)} bytes, "
                f"more than a response may hold ({MAX_RESPONSE_BYTES}); send fewer per request",
            )
        batch = event_pb2.EnrichedBatch.FromString(data)
        self._metrics.grpc_events.inc(len(batch.events))
        if cut:  # counted as the events are answered, as the consumer counts them published
            self._metrics.event_message_truncated.inc(len(cut))
        return enrich_service_pb2.EnrichEventsResponse(events=batch.events)


class GrpcServer(grpcserver.GrpcServer):
    """The gRPC server: EnrichService, grpc.health.v1 and server reflection."""

    def __init__(self, servicer: EnrichServicer, *, host: str, port: int) -> None:
        super().__init__(
            service_name=SERVICE_NAME,
            host=host,
            port=port,
            host_setting="ENRICHER_GRPC_HOST",
            port_setting="ENRICHER_GRPC_PORT",
        )
        self._servicer = servicer

    def register(self, server: grpc.aio.Server) -> None:
        enrich_service_pb2_grpc.add_EnrichServiceServicer_to_server(self._servicer, server)
