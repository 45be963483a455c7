"""The HTTP app: POST /v1/track, Connect IngestEvents, GET /v1/events(/aggregate), ops, OpenAPI."""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from telemetry.v1 import event_pb2

from gateway import _connect, _query
from gateway._auth import KeyStore, Kind, Principal, presented_key
from gateway._body import check_encoding, media_type, read_body
from gateway._clientinfo import ClientIpResolver, request_id
from gateway._ingest import IngestCore, Origin, Reservation, annotate
from gateway._metrics import Metrics
from gateway._openapi import document
from gateway._ratelimit import RateLimiter
from gateway._responses import error_response, internal_error, json_response
from gateway.errors import GatewayError, InvalidRequest, UnsupportedMedia
from pipeline import tracing
from pipeline.service import ops_routes

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Body bounds and the Retry-After value."""

    max_body_bytes: int
    max_decompressed_bytes: int
    retry_after_s: int


class _RequestIds:
    """ASGI middleware: request id in and out, and requests counted by route and status."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: frozenset[str]) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        rid = request_id(Headers(scope=scope).get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        path = scope["path"]
        route = path if path in self._routes else "other"
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            self._metrics.http_requests.labels(route=route, status=str(status)).inc()


def _guarded(handler: Handler, retry_after_s: int) -> Handler:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as err:
            return error_response(err, retry_after_s=retry_after_s)
        except ClientDisconnect:
            return error_response(InvalidRequest("client disconnected"), retry_after_s=0)
        except Exception:
            log.exception("unexpected error in %s", request.url.path, extra=_trace_of(request))
            return internal_error()

    return guarded


def _trace_of(request: Request) -> dict[str, str]:
    """The request's trace for a log line written once its server span has ended: the ids
    that span noted, else (nothing recorded) the trace id of the request's traceparent, as a
    line about a message names its trace; {} when there is neither."""
    ids: tuple[str, str] | None = getattr(request.state, "trace_ids", None)
    if ids is not None:
        return {"trace_id": ids[0], "span_id": ids[1]}
    return tracing.trace_id_of(request.headers)


class _Routes:
    def __init__(
        self,
        *,
        core: IngestCore,
        keys: KeyStore,
        resolver: ClientIpResolver,
        query: _query.QueryPort,
        limits: HttpLimits,
        limiter: RateLimiter,
        tracer: tracing.Tracing,
    ) -> None:
        self._tracing = tracer
        self._core = core
        self._keys = keys
        self._limiter = limiter
        self._resolver = resolver
        self._query = query
        self._limits = limits

    def _principal(self, request: Request, kind: Kind) -> Principal:
        headers = request.headers
        key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
        principal = self._keys.require(key, kind)
        self._limiter.take(principal)
        return principal

    def _origin(self, request: Request, app_id: str, received: float, protocol: int) -> Origin:
        headers = request.headers
        peer = request.client.host if request.client else ""
        # Every X-Forwarded-For line, in order: a proxy may append its own line after one
        # the client sent, and the first line alone would be the client's word.
        forwarded = ",".join(headers.getlist("x-forwarded-for"))
        return Origin(
            app_id=app_id,
            client_ip=self._resolver.resolve(peer, forwarded),
            user_agent=headers.get("user-agent", "")[:512],
            request_id=request.state.request_id,
            protocol=protocol,
            received_at=received,
            idempotency_key=headers.get("idempotency-key", ""),
        )

    async def _body(self, request: Request, reservation: Reservation) -> bytes:
        headers = request.headers
        return await read_body(
            request.stream(),
            content_length=headers.get("content-length"),
            gzip=check_encoding(headers.get("content-encoding")),
            max_body=self._limits.max_body_bytes,
            max_decompressed=self._limits.max_decompressed_bytes,
            charge=reservation.charge,
        )

    @contextmanager
    def _server_span(self, request: Request, name: str) -> Iterator[tracing.Span]:
        """A route's server span, continuing the caller's traceparent. Its ids are noted on
        the request: an unexpected error is logged (by `_guarded`) after the span ends."""
        with self._tracing.span(
            name,
            kind=tracing.SpanKind.SERVER,
            parent=self._tracing.incoming(request.headers),
            attributes={"pipeline.request_id": request.state.request_id},
        ) as span:
            request.state.trace_ids = tracing.current_ids()
            yield span

    async def track(self, request: Request) -> Response:
        received = time.time()
        with self._server_span(request, "POST /v1/track") as span:
            principal = self._principal(request, Kind.WRITE)
            span.set_attribute("pipeline.app_id", principal.name)
            if media_type(request.headers.get("content-type")) not in ("", "application/json"):
                raise UnsupportedMedia("Content-Type must be application/json")
            check_encoding(request.headers.get("content-encoding"))
            with self._core.admit() as reservation:
                body = await self._body(request, reservation)
                origin = self._origin(
                    request, principal.name, received, event_pb2.INGEST_PROTOCOL_HTTP_JSON
                )
                receipt = await self._core.ingest_json(body, origin)
            annotate(span, receipt)
        return json_response(receipt.to_json(), status=202)

    async def connect_ingest(self, request: Request) -> Response:
        with self._server_span(request, _connect.PATH) as span:
            return await self._connect_ingest(request, span)

    async def _connect_ingest(self, request: Request, span: tracing.Span) -> Response:
        received = time.time()
        try:
            headers = request.headers
            codec = _connect.codec(
                media_type(headers.get("content-type")), headers.get("connect-protocol-version")
            )
            principal = self._principal(request, Kind.WRITE)
            span.set_attribute("pipeline.app_id", principal.name)
            check_encoding(headers.get("content-encoding"))
            with self._core.admit() as reservation:
                message = _connect.decode(
                    await self._body(request, reservation),
                    codec,
                    most_json_values=self._core.most_json_values,
                    max_events=self._core.max_events,
                )
                origin = self._origin(
                    request, principal.name, received, event_pb2.INGEST_PROTOCOL_CONNECT
                )
                receipt = await self._core.ingest_proto(message, origin)
        except UnsupportedMedia as err:
            tracing.failed(span, type(err).__name__)
            return error_response(err, retry_after_s=0)
        except GatewayError as err:
            tracing.failed(span, type(err).__name__)
            return error_response(err, retry_after_s=self._limits.retry_after_s, refined=False)
        annotate(span, receipt)
        body = _connect.encode(receipt.to_proto(), codec)
        return Response(body, status_code=200, media_type=codec)

    async def events(self, request: Request) -> Response:
        with self._query_route(request, "GET /v1/events", _query.EVENTS_PARAMS) as (span, params):
            query = _query.events_request(params)
            with self._rpc_span("QueryEvents"):
                response = await self._query.query_events(query)
            span.set_attribute("pipeline.events", len(response.events))
        return json_response(_query.events_json(response))

    async def aggregate(self, request: Request) -> Response:
        route = "GET /v1/events/aggregate"
        with self._query_route(request, route, _query.AGGREGATE_PARAMS) as (_, params):
            query = _query.aggregate_request(params)
            with self._rpc_span("AggregateEvents"):
                response = await self._query.aggregate_events(query)
        return json_response(_query.aggregate_json(response))

    @contextmanager
    def _query_route(
        self, request: Request, name: str, allowed: tuple[str, ...]
    ) -> Iterator[tuple[tracing.Span, QueryParams]]:
        """A read route's server span (continuing the caller's traceparent), with the read key
        and the query parameters checked inside it; the span and the parameters."""
        with self._server_span(request, name) as span:
            span.set_attribute("pipeline.reader", self._principal(request, Kind.READ).name)
            yield span, _query_params(request, allowed)

    def _rpc_span(self, method: str) -> AbstractContextManager[tracing.Span]:
        """The client span of a QueryService call; the query client sends it as traceparent."""
        return self._tracing.span(
            f"{_query.SERVICE}/{method}",
            kind=tracing.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.method": method},
        )


def _query_params(request: Request, allowed: tuple[str, ...]) -> QueryParams:
    """The query string's parameters; InvalidRequest for one that is not UTF-8 or not known.

    Decoded here rather than by `request.query_params`, which replaces bytes that are not
    UTF-8 (a stray %FF) with U+FFFD: a filter that quietly matches nothing. Bytes sent as
    they are (`?user_id=José`), which some HTTP servers pass on, are read as UTF-8 too, not
    as Latin-1.
    """
    try:
        pairs = urllib.parse.parse_qsl(
            request.scope.get("query_string", b"").decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
        )
    except UnicodeDecodeError:
        raise InvalidRequest(
            "the query string is not UTF-8: percent-encode each parameter's UTF-8 bytes"
        ) from None
    params = QueryParams(pairs)
    unknown = sorted(set(params.keys()) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown query parameters: {', '.join(unknown)[:200]}")
    return params


def build_app(
    *,
    core: IngestCore,
    keys: KeyStore,
    resolver: ClientIpResolver,
    query: _query.QueryPort,
    metrics: Metrics,
    limits: HttpLimits,
    ready: Callable[[], Awaitable[tuple[bool, str]]],
    registry: CollectorRegistry,
    limiter: RateLimiter,
    tracer: tracing.Tracing | None = None,
) -> ASGIApp:
    """The gateway's ASGI app."""
    routes = _Routes(
        core=core,
        keys=keys,
        resolver=resolver,
        query=query,
        limits=limits,
        limiter=limiter,
        tracer=tracer or tracing.Tracing.disabled(),
    )
    retry = limits.retry_after_s

    async def openapi(_: Request) -> Response:
        return json_response(document())

    async def no_route(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 answers, in the {"code", "message"} shape of every error.
        assert isinstance(exc, HTTPException)
        path = request.url.path[:200]
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            response = json_response(
                {
                    "code": "unimplemented",
                    "message": f"{request.method} is not allowed on {path}; use {allowed}",
                },
                status=405,
            )
            response.headers["Allow"] = allowed
            return response
        if exc.status_code == 404:
            return json_response(
                {"code": "not_found", "message": f"no such route: {path}"}, status=404
            )
        return json_response(
            {"code": "unknown", "message": str(exc.detail)}, status=exc.status_code
        )

    app = Starlette(
        routes=[
            Route("/v1/track", _guarded(routes.track, retry), methods=["POST"]),
            Route(_connect.PATH, _guarded(routes.connect_ingest, retry), methods=["POST"]),
            Route("/v1/events", _guarded(routes.events, retry), methods=["GET"]),
            Route("/v1/events/aggregate", _guarded(routes.aggregate, retry), methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *ops_routes(ready, registry),
        ],
        exception_handlers={HTTPException: no_route},
    )
    # `/v1/events/` is a path that does not exist (a 404 in the usual shape), not a redirect:
    # one would come before the key check and name http:// behind a TLS proxy.
    app.router.redirect_slashes = False
    paths = frozenset(route.path for route in app.routes if isinstance(route, Route))
    return _RequestIds(app, metrics=metrics, routes=paths)
