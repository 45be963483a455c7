"""The gateway as a Service: HTTP and gRPC servers over one ingest core and one broker."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway import _query
from gateway._auth import KeyStore
from gateway._clientinfo import ClientIpResolver
from gateway._grpc import GrpcServer, IngestServicer
from gateway._http import HttpLimits, build_app
from gateway._ingest import IngestCore, Publisher
from gateway._metrics import Metrics
from gateway._publisher import JetStreamPublisher
from gateway._ratelimit import RateLimiter
from gateway._validate import Limits
from gateway.config import GatewayConfig
from pipeline import tracing
from pipeline.grpcserver import ReadinessHealth
from pipeline.service import STOP_STEP_MIN_S, HttpServer, StopDeadline
from pipeline.tasks import cancel_and_wait, to_the_end

log = logging.getLogger(__name__)


class Broker(Publisher, Protocol):
    """The publisher with its lifecycle and readiness."""

    async def start(self) -> None: ...

    async def stop(self, *, timeout_s: float) -> None:
        """Drains the connection and closes it, within `timeout_s`."""
        ...

    async def ready(self) -> tuple[bool, str]: ...


class QueryClient(_query.QueryPort, Protocol):
    """The query port with its lifecycle."""

    async def close(self) -> None: ...


class Gateway:
    """HTTP (JSON, Connect, ops) and gRPC front door; publishes raw batches to JetStream."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        keys: KeyStore | None = None,
        broker: Broker | None = None,
        query: QueryClient | None = None,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self._owns_tracing = tracer is None
        self.tracing = tracer or tracing.setup("gateway", config)
        self._broker: Broker = broker or JetStreamPublisher(
            config, publish_timeout_s=config.publish_timeout_s
        )
        self._query: QueryClient = query or _query.GrpcQueryClient(
            config.query_target, timeout_s=config.query_timeout_s
        )
        keys = keys or KeyStore.from_config(config)
        limiter = RateLimiter(rate=config.rate_limit_rps, burst=config.rate_limit_burst)
        self.core = IngestCore(
            publisher=self._broker,
            limits=Limits.from_config(config),
            metrics=self.metrics,
            max_in_flight=config.max_in_flight,
            max_in_flight_bytes=config.max_in_flight_bytes,
            tracer=self.tracing,
        )
        self.app = build_app(
            core=self.core,
            keys=keys,
            resolver=ClientIpResolver(config.trusted_proxies),
            query=self._query,
            metrics=self.metrics,
            limits=HttpLimits(
                max_body_bytes=config.max_body_bytes,
                max_decompressed_bytes=config.max_decompressed_bytes,
                retry_after_s=config.retry_after_s,
            ),
            ready=self.ready,
            registry=self.metrics.exposed,
            limiter=limiter,
            tracer=self.tracing,
        )
        self._http = HttpServer(
            self.app,
            host=config.host,
            port=config.http_port,
            graceful_stop_s=config.graceful_stop_s,
            reuse_port=config.reuse_port,
            host_setting="GATEWAY_HOST",
            port_setting="GATEWAY_HTTP_PORT",
        )
        self._grpc = GrpcServer(
            IngestServicer(
                core=self.core,
                keys=keys,
                metrics=self.metrics,
                retry_after_s=config.retry_after_s,
                limiter=limiter,
                tracer=self.tracing,
            ),
            host=config.host,
            port=config.grpc_port,
            max_message_bytes=config.max_decompressed_bytes,
            graceful_stop_s=config.graceful_stop_s,
            reuse_port=config.reuse_port,
        )
        # gRPC health follows readiness; becoming ready, the limits are checked against the
        # broker's max_payload (known once connected).
        self._health = ReadinessHealth(
            self._grpc, name="gateway", logger=log, on_ready=self._warn_if_events_may_not_fit
        )
        self._health_task: asyncio.Task[None] | None = None
        self._started = False
        self._serving = False  # the start finished: the stop drains what was served

    @property
    def http_port(self) -> int:
        """The bound HTTP port."""
        return self._http.port

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port."""
        return self._grpc.port

    async def start(self) -> None:
        """Serves HTTP and gRPC, then starts connecting to NATS in the background (not ready
        until NATS is).

        A server that cannot listen raises ListenError before NATS is connected to; what was
        started is stopped first, without a word of a drain.
        """
        if self._started:
            return
        self._started = True
        try:
            # gRPC first: a port it cannot take is said before uvicorn says it runs.
            await self._grpc.start()
            await self._http.start()
            await self._broker.start()
        except BaseException:
            # Whole, even when a stop signal cancels the start again and again meanwhile.
            await to_the_end(self.stop())
            raise
        self._health_task = asyncio.create_task(self._health.follow(self.ready))
        self._serving = True
        log.info(
            "gateway listening",
            extra={"http_port": self.http_port, "grpc_port": self.grpc_port},
        )

    def _warn_if_events_may_not_fit(self) -> None:
        """Warns when the limits allow events larger than one broker message (known once
        connected): the gateway then rejects each such event, as no split could store it."""
        sizes = self.core.events_may_not_fit()
        if sizes is None:
            return
        largest, room = sizes
        log.warning(
            "GATEWAY_MAX_METADATA_ENTRIES, GATEWAY_MAX_METADATA_KEY_CHARS, "
            "GATEWAY_MAX_METADATA_VALUE_CHARS, GATEWAY_MAX_FIELD_CHARS and "
            "GATEWAY_MAX_EVENT_ID_CHARS allow events of up to %d bytes, but the broker's "
            "max_payload leaves room for %d: larger events are rejected as "
            "REJECTION_REASON_EVENT_TOO_LARGE; lower those limits or raise NATS max_payload",
            largest,
            room,
            extra={"largest_event_bytes": largest, "event_room_bytes": room},
        )

    async def stop(self) -> None:
        """Stops intake, lets in-flight requests (and their publishes) finish, drains NATS.

        All of it within GATEWAY_GRACEFUL_STOP_S: the requests get what the stop is given
        (those still running then are cancelled, never answered 202), the NATS drain what is
        left, at least STOP_STEP_MIN_S.
        """
        if not self._started:
            return
        self._started = False
        served, self._serving = self._serving, False
        deadline = StopDeadline(self.config.graceful_stop_s)
        self.core.close()
        if self._health_task is not None:
            await cancel_and_wait(self._health_task)
            self._health_task = None
        grace_s = deadline.left(at_least=STOP_STEP_MIN_S)
        await asyncio.gather(self._http.stop(grace_s=grace_s), self._grpc.stop(grace_s=grace_s))
        await self._broker.stop(timeout_s=deadline.left(at_least=STOP_STEP_MIN_S))
        await self._query.close()
        if self._owns_tracing:
            self.tracing.shutdown()
        if served:  # a start that failed or was cancelled served nothing to drain
            log.info("gateway drained and closed")

    async def ready(self) -> tuple[bool, str]:
        """Ready when NATS is connected and the raw stream exists.

        Every answer (a /readyz probe or the health poll) also sets gRPC health, so a caller
        who saw /readyz say ready finds the gRPC port SERVING too.
        """
        ok, reason = await self._broker.ready()
        if self._started:
            await self._health.record(ok, reason)
        return ok, reason
