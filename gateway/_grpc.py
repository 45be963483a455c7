"""The gRPC server: IngestService on the shared core, plus health checking and reflection."""

from __future__ import annotations

import logging
import time

import grpc
from telemetry.v1 import event_pb2, ingest_service_pb2, ingest_service_pb2_grpc

from gateway._auth import KeyStore, Kind, presented_key
from gateway._clientinfo import grpc_peer_ip, request_id
from gateway._ingest import IngestCore, Origin, annotate
from gateway._metrics import Metrics
from gateway._ratelimit import RateLimiter
from gateway._status import code_of
from gateway.errors import GatewayError
from pipeline import grpcserver, tracing

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """IngestService.IngestEvents: the JSON route's validation and publishing over gRPC."""

    def __init__(
        self,
        *,
        core: IngestCore,
        keys: KeyStore,
        metrics: Metrics,
        retry_after_s: int,
        limiter: RateLimiter,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        self._tracing = tracer or tracing.Tracing.disabled()
        self._core = core
        self._keys = keys
        self._limiter = limiter
        self._metrics = metrics
        self._retry_after_s = retry_after_s

    async def IngestEvents(
        self,
        request: ingest_service_pb2.IngestEventsRequest,
        context: grpc.aio.ServicerContext[
            ingest_service_pb2.IngestEventsRequest, ingest_service_pb2.IngestEventsResponse
        ],
    ) -> ingest_service_pb2.IngestEventsResponse:
        received = time.time()
        metadata = {
            key: value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        with self._tracing.span(
            f"{SERVICE_NAME}/IngestEvents",
            kind=tracing.SpanKind.SERVER,
            parent=self._tracing.incoming(metadata),
            attributes={"rpc.system": "grpc", "rpc.method": "IngestEvents"},
        ) as span:
            return await self._ingest(request, context, metadata, received, span)

    async def _ingest(
        self,
        request: ingest_service_pb2.IngestEventsRequest,
        context: grpc.aio.ServicerContext[
            ingest_service_pb2.IngestEventsRequest, ingest_service_pb2.IngestEventsResponse
        ],
        metadata: dict[str, str],
        received: float,
        span: tracing.Span,
    ) -> ingest_service_pb2.IngestEventsResponse:
        try:
            key = presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
            principal = self._keys.require(key, Kind.WRITE)
            self._limiter.take(principal)
            span.set_attribute("pipeline.app_id", principal.name)
            with self._core.admit() as reservation:
                reservation.charge(request.ByteSize())
                origin = Origin(
                    app_id=principal.name,
                    client_ip=grpc_peer_ip(context.peer() or ""),
                    user_agent=metadata.get("user-agent", "")[:512],
                    request_id=request_id(metadata.get("x-request-id")),
                    protocol=event_pb2.INGEST_PROTOCOL_GRPC,
                    received_at=received,
                    idempotency_key=metadata.get("idempotency-key", ""),
                )
                receipt = await self._core.ingest_proto(request, origin)
        except GatewayError as err:
            code = code_of(err)
            self._metrics.grpc_requests.labels(method="IngestEvents", code=code.name).inc()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            tracing.failed(span, type(err).__name__)
            if err.retryable:
                wait_s = err.retry_after(self._retry_after_s)
                context.set_trailing_metadata((("retry-after", str(wait_s)),))
            await context.abort(code, str(err))
        self._metrics.grpc_requests.labels(method="IngestEvents", code="OK").inc()
        span.set_attribute("rpc.grpc.status_code", 0)
        annotate(span, receipt)
        return receipt.to_proto()


class GrpcServer(grpcserver.GrpcServer):
    """grpc.aio server with IngestService, grpc.health.v1 and server reflection."""

    def __init__(
        self,
        servicer: IngestServicer,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        graceful_stop_s: float,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(
            service_name=SERVICE_NAME,
            host=host,
            port=port,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                # Off unless asked: a second gateway must not silently share the port.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
            grace_s=graceful_stop_s,
        )
        self._servicer = servicer

    def register(self, server: grpc.aio.Server) -> None:
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(self._servicer, server)
