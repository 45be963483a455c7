"""The gRPC server: IngestService on the shared core, plus health checking and reflection."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
from telemetry.v1 import event_pb2, ingest_service_pb2, ingest_service_pb2_grpc

from gateway._auth import KeyStore, Kind, presented_key
from gateway._clientinfo import grpc_peer_ip, request_id
from gateway._ingest import IngestCore, Origin, annotate
from gateway._metrics import Metrics
from gateway._ratelimit import RateLimiter
from gateway._status import code_of
from gateway._validate import check_proto_count
from gateway.errors import SEND_SMALLER, GatewayError, TooLarge
from pipeline import grpcserver, tracing

log = logging.getLogger(__name__)

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
INGEST_METHOD = f"/{SERVICE_NAME}/IngestEvents"


def receive_cap(max_message_bytes: int) -> int:
    """The most bytes gRPC reads of one message: twice the gateway's limit. Up to it, a
    message past the limit is refused by the gateway as too large (INVALID_ARGUMENT, like
    every batch past a limit) without being parsed; past it, gRPC itself refuses it
    (RESOURCE_EXHAUSTED, 'Received message larger than max') without reading it."""
    return 2 * max_message_bytes


class _Refused:
    """What the request deserializer yields for a message it will not parse."""

    __slots__ = ("error",)

    def __init__(self, error: GatewayError) -> None:
        self.error = error


def request_reader(
    max_message_bytes: int, *, max_events: int
) -> Callable[[bytes], ingest_service_pb2.IngestEventsRequest | _Refused]:
    """The IngestEvents request deserializer: a message past `max_message_bytes`, or of more
    than `max_events` events, is not parsed; the servicer refuses it as too large once the
    caller is authenticated."""

    def read(data: bytes) -> ingest_service_pb2.IngestEventsRequest | _Refused:
        if len(data) > max_message_bytes:
            return _Refused(
                TooLarge(f"the message is larger than {max_message_bytes} bytes; {SEND_SMALLER}")
            )
        try:
            check_proto_count(data, max_events=max_events)
        except TooLarge as err:
            return _Refused(err)
        return ingest_service_pb2.IngestEventsRequest.FromString(data)

    return read


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
        request: ingest_service_pb2.IngestEventsRequest | _Refused,
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
        request: ingest_service_pb2.IngestEventsRequest | _Refused,
        context: grpc.aio.ServicerContext[
            ingest_service_pb2.IngestEventsRequest, ingest_service_pb2.IngestEventsResponse
        ],
        metadata: dict[str, str],
        received: float,
        span: tracing.Span,
    ) -> ingest_service_pb2.IngestEventsResponse:
        try:
            # The key's rate was taken by the interceptor, before the message was read.
            key = presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
            principal = self._keys.require(key, Kind.WRITE)
            span.set_attribute("pipeline.app_id", principal.name)
            if isinstance(request, _Refused):
                raise request.error
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
            span.set_attribute("rpc.grpc.status_code", code_of(err).value[0])
            tracing.failed(span, type(err).__name__)
            await self.refuse(err, context)
        except Exception as err:
            # Logged here, inside the request's span, so the line carries its trace (grpc
            # would log it once the span has ended, and send the error's text to the caller).
            _log_unexpected(metadata, in_span=self._tracing.enabled)
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.INTERNAL.value[0])
            tracing.failed(span, type(err).__name__)
            await self.fail(context)
        self._metrics.grpc_requests.labels(method="IngestEvents", code="OK").inc()
        span.set_attribute("rpc.grpc.status_code", 0)
        annotate(span, receipt)
        return receipt.to_proto()

    async def refuse(self, err: GatewayError, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Ends the call with the error's code (and Retry-After when retryable), counted."""
        code = code_of(err)
        self._metrics.grpc_requests.labels(method="IngestEvents", code=code.name).inc()
        if err.retryable:
            wait_s = err.retry_after(self._retry_after_s)
            context.set_trailing_metadata((("retry-after", str(wait_s)),))
        await context.abort(code, str(err))

    async def fail(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Ends the call on an unexpected error, already logged: INTERNAL with 'internal
        error' (never the error's own text), counted."""
        self._metrics.grpc_requests.labels(method="IngestEvents", code="INTERNAL").inc()
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    @property
    def max_events(self) -> int:
        """The most events a batch may hold."""
        return self._core.max_events

    def key_check(self) -> grpc.aio.ServerInterceptor:
        """An interceptor refusing IngestEvents calls without a valid write key, or past
        their key's rate, before their message is read (see _KeyCheck)."""
        return _KeyCheck(self)

    def check_key(self, metadata: dict[str, str]) -> None:
        """Raises for metadata without a valid write key, or a key past its rate (which
        this takes a request from)."""
        key = presented_key(metadata.get("authorization"), metadata.get("x-api-key"))
        self._limiter.take(self._keys.require(key, Kind.WRITE))


if TYPE_CHECKING:  # generic in grpc's stubs only
    _Handler = grpc.RpcMethodHandler[Any, Any]


class _KeyCheck(grpc.aio.ServerInterceptor):
    """Refuses an IngestEvents call without a valid write key, or past its key's rate, from
    its metadata alone.

    grpc.aio runs interceptors once the call's metadata is in, before it reads the request;
    a unary handler would then read the whole message (up to the receive cap) before it
    runs, so a refused call gets a request-streaming handler that ends the call without
    reading any message. An unexpected error in the check ends the call as one in
    IngestEvents does (INTERNAL, 'internal error', logged and counted), not as grpc would
    (UNKNOWN with the error's text, unlogged here and uncounted); its line names the trace
    of the call's traceparent, the call's span not having started yet.
    """

    def __init__(self, servicer: IngestServicer) -> None:
        self._servicer = servicer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        if handler_call_details.method != INGEST_METHOD:
            return await continuation(handler_call_details)
        metadata = {
            key: value
            for key, value in handler_call_details.invocation_metadata or ()
            if isinstance(value, str)
        }
        try:
            self._servicer.check_key(metadata)
        except GatewayError as err:
            return _ending(partial(self._servicer.refuse, err))
        except Exception:
            _log_unexpected(metadata, in_span=False)
            return _ending(self._servicer.fail)
        return await continuation(handler_call_details)


def _log_unexpected(metadata: dict[str, str], *, in_span: bool) -> None:
    """Logs the error being handled, with its stack, as an unexpected error in IngestEvents.
    Its line names the call's trace: that of the span recorded for it when `in_span` (the log
    formatter adds its trace and span ids), else that of the call's traceparent."""
    log.exception(
        "unexpected error in IngestEvents",
        extra={} if in_span else tracing.trace_id_of(metadata),
        stacklevel=2,
    )


def _ending(end: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]) -> _Handler:
    """A handler that ends the call with `end`, reading no message."""

    async def ended(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await end(context)

    return grpc.stream_unary_rpc_method_handler(ended)


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
                ("grpc.max_receive_message_length", receive_cap(max_message_bytes)),
                # Off unless asked: a second gateway must not silently share the port.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
            grace_s=graceful_stop_s,
            interceptors=[servicer.key_check()],
            host_setting="GATEWAY_HOST",
            port_setting="GATEWAY_GRPC_PORT",
        )
        self._servicer = servicer
        self._read_request = request_reader(max_message_bytes, max_events=servicer.max_events)

    def register(self, server: grpc.aio.Server) -> None:
        # The generated registration, with a request deserializer that does not parse a
        # message past the limit.
        handlers = {
            "IngestEvents": grpc.unary_unary_rpc_method_handler(
                self._servicer.IngestEvents,
                request_deserializer=self._read_request,
                response_serializer=ingest_service_pb2.IngestEventsResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)
