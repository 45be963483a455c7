"""The enricher service: consumer, gRPC and observability HTTP, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from enricher import _nats
from enricher._clock import NANOS_PER_S
from enricher._enrich import EnrichOptions
from enricher._geo import MaxMindGeo, OfflineGeo, open_geo
from enricher._grpc import EnrichServicer, GrpcServer
from enricher._handler import Handler
from enricher._metrics import Metrics
from enricher._policy import RetryPolicy
from enricher.config import Config
from enricher.errors import BrokerError
from pipeline import tracing
from pipeline.grpcserver import ReadinessHealth
from pipeline.service import STOP_STEP_MIN_S, HttpServer, StopDeadline, ops_app
from pipeline.tasks import cancel_and_wait, to_the_end, until_done

log = logging.getLogger(__name__)

# Room left in an enriched message for its headers, below the server's max_payload.
PAYLOAD_HEADROOM_BYTES = 4096

NAME = "enricher"
BROKER_RETRY_S = 1.0
BROKER_RETRY_MAX_S = 30.0
# Consuming that ends on an unexpected error is started again after this pause, doubling up to
# CONSUME_RESTART_MAX_S while it keeps ending so.
CONSUME_RESTART_S = 1.0
CONSUME_RESTART_MAX_S = 30.0


class Enricher:
    """Consumes TELEMETRY_RAW, publishes TELEMETRY_ENRICHED, serves EnrichService.

    `start()` and `stop()` are idempotent. Stop: stop fetching, finish the
    batches in hand (publish, ack), drain the NATS connection, close.

    Consuming that ends on an unexpected error (a fetch loop's, or one setting it up) is
    logged with its stack and started again, on a new connection, after a pause
    (CONSUME_RESTART_S, doubling up to CONSUME_RESTART_MAX_S); readiness names the error until
    it runs again. The messages the ended loops held unsettled are nak'd, for redelivery at
    once, before that connection is closed (closing it failing is logged with its stack, and
    consuming started again all the same). Consuming that ends on an error while the enricher
    stops is logged as a warning, with its stack, and not started again.
    """

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        self._config = config
        self.metrics = metrics or Metrics()
        self._owns_tracing = tracer is None
        self.tracing = tracer or tracing.setup(NAME, config)
        self._options = EnrichOptions(
            max_skew_ns=int(config.max_clock_skew_s * NANOS_PER_S),
            event_message_max_chars=config.event_message_max_chars,
        )
        self._consumer = _nats.ConsumerSettings(
            name=config.consumer_name,
            ack_wait_s=config.ack_wait_s,
            max_ack_pending=config.max_ack_pending,
            fetch_batch=config.fetch_batch,
            fetch_timeout_s=config.fetch_timeout_s,
        )
        self._retry = RetryPolicy(
            max_deliver=config.max_deliver,
            base_delay_s=config.nak_delay_s,
            max_delay_s=config.nak_max_delay_s,
        )
        self._geo: OfflineGeo | MaxMindGeo | None = None
        self._broker: _nats.Broker | None = None
        self._loops: list[_nats.FetchLoop] = []
        self._handler: Handler | None = None
        self._consumer_task: asyncio.Task[None] | None = None
        self._consume_failure = ""  # why consuming ended, until it runs again
        self._waiting = ""  # the set-up step being tried again, with its last error
        self._health_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self._health: ReadinessHealth | None = None
        self._http: HttpServer | None = None
        self._started = False
        self._serving = False  # the start finished: a stop then says the enricher stopped

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port (useful when configured as 0)."""
        return self._grpc.port if self._grpc else 0

    @property
    def http_port(self) -> int:
        """The bound observability HTTP port (useful when configured as 0)."""
        return self._http.port if self._http else 0

    async def start(self) -> None:
        """Opens the GeoIP data, serves HTTP and gRPC, then consumes in the background.

        Returns once the servers listen; NATS is connected to (and waited for,
        however long it is down) by the consumer task, so /healthz answers,
        /readyz says why not, and a stop signal is honoured meanwhile. gRPC health
        follows readiness: NOT_SERVING until the enricher is ready, and whenever it is not.
        """
        if self._started:
            return
        self._started = True
        try:
            await self._serve()
        except BaseException:
            # Whole, even when a stop signal cancels the start again and again meanwhile.
            await to_the_end(self.stop())
            raise
        self._consumer_task = asyncio.create_task(self._consume_until_stopped())
        assert self._health is not None
        self._health_task = asyncio.create_task(self._health.follow(self.ready))
        self._serving = True

    async def _serve(self) -> None:
        config = self._config
        self._geo = open_geo(config.geoip_db)
        # gRPC first: a port it cannot take is said before uvicorn says it runs.
        self._grpc = GrpcServer(
            EnrichServicer(
                geo=self._geo,
                options=self._options,
                max_events=config.grpc_max_events,
                metrics=self.metrics,
            ),
            host=config.grpc_host,
            port=config.grpc_port,
        )
        await self._grpc.start()  # NOT_SERVING until ready() says otherwise
        self._health = ReadinessHealth(self._grpc, name=NAME, logger=log)
        self._http = HttpServer(
            ops_app(self, self.metrics.registry),
            host=config.http_host,
            port=config.http_port,
            graceful_stop_s=config.stop_timeout_s,
            host_setting="ENRICHER_HTTP_HOST",
            port_setting="ENRICHER_HTTP_PORT",
        )
        await self._http.start()

    async def _open_broker(self) -> _nats.Broker:
        """Connects (waiting for NATS), then ensures the streams and binds the consumer, each
        step tried again on that connection until JetStream takes it (JetStream not there yet,
        a consumer of the same name set up otherwise...); readiness says which one it waits
        for, with its last error."""
        config = self._config
        self._broker = broker = await _nats.Broker.connect(
            config, timeout_s=config.publish_timeout_s
        )
        await self._until_done("streams not ensured yet", broker.ensure_streams)
        await self._until_done(
            "consumer not created yet",
            lambda: broker.bind(self._consumer, subscriptions=config.concurrency),
        )
        self._waiting = ""
        return broker

    async def _until_done(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        self._waiting = what
        await until_done(
            step,
            what=what,
            logger=log,
            waiting=self._set_waiting,
            retry_s=BROKER_RETRY_S,
            retry_max_s=BROKER_RETRY_MAX_S,
            errors=(BrokerError,),
        )

    def _set_waiting(self, failure: str) -> None:
        self._waiting = failure

    async def _consume_until_stopped(self) -> None:
        """Runs `_consume` until the enricher stops; started again when it ends otherwise.

        An error it ends on while a stop is under way is logged as a warning, with its stack
        (`consuming ended on an error while stopping: <error>`), and the stop goes on: nothing
        is started again. A close of the connection of consuming that ended which fails is
        logged as an error, with its stack (`consuming: closing its connection failed:
        <error>`), and consuming is started again all the same, on a new connection."""
        delay = CONSUME_RESTART_S
        while True:
            error: Exception | None = None
            try:
                await self._consume()
            except Exception as err:
                error = err
            if not self._started:  # stopped
                if error is not None:
                    log.warning(
                        "consuming ended on an error while stopping: %r", error, exc_info=error
                    )
                return
            self._consume_failure = (
                f"consuming stopped on an error: {error!r}" if error else "consuming stopped"
            )
            log.error(
                "%s; starting it again in %g s",
                self._consume_failure,
                delay,
                exc_info=error,
            )
            self._loops = []
            try:
                await self._close_broker("consuming ended", timeout_s=self._config.stop_timeout_s)
            except Exception as err:  # the next run starts over, on a new connection, all the same
                log.error("consuming: closing its connection failed: %r", err, exc_info=err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONSUME_RESTART_MAX_S)

    async def _consume(self) -> None:
        """Connects, binds the consumer and runs the fetch loops until they are stopped, or
        until one ends on an error (the others are cancelled then, and it is raised)."""
        config = self._config
        assert self._geo is not None
        broker = await self._open_broker()
        handler = Handler(
            sink=broker.sink(timeout_s=config.publish_timeout_s),
            geo=self._geo,
            options=self._options,
            retry=self._retry,
            metrics=self.metrics,
            tracer=self.tracing,
            max_message_bytes=lambda: broker.max_payload - PAYLOAD_HEADROOM_BYTES,
            max_events=config.max_events_per_message,
            touch_every_s=config.ack_wait_s / 3,
        )
        self._handler = handler
        self._loops = broker.fetch_loops(handler, self._consumer)
        self._consume_failure = ""
        lag = asyncio.create_task(self._refresh_lag())
        log.info(
            "enricher consuming",
            extra={
                "consumer": config.consumer_name,
                "grpc_port": self.grpc_port,
                "http_port": self.http_port,
            },
        )
        runs = [asyncio.create_task(loop.run(), name="enricher-fetch") for loop in self._loops]
        try:
            await asyncio.gather(*runs)
        finally:
            # The one that failed is logged by the caller; the others end here.
            await cancel_and_wait(lag, *(run for run in runs if not run.done()))

    async def _close_broker(self, ended: str, *, timeout_s: float) -> None:
        """Naks the messages the handler did not settle, then closes the broker (its drain
        sends the naks): the naks and the release of the subscriptions within `timeout_s`, the
        drain within what is left of it, and at least STOP_STEP_MIN_S. Only once the fetch
        loops have ended: no publish of those messages can be taken any more.

        They are redelivered at once, to another process or the next start, instead of after
        the consumer's ack wait; a nak NATS does not take leaves its message to that.
        """
        closing = StopDeadline(timeout_s)
        handler, self._handler = self._handler, None
        broker, self._broker = self._broker, None
        try:
            if handler is not None and (unsettled := handler.unsettled):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(closing.left()):
                        await handler.release_unsettled()
                log.warning(
                    "%s with messages unsettled; nak'd for redelivery",
                    ended,
                    extra={"messages": unsettled},
                )
        finally:  # the connection is closed whatever the naks did
            if broker is not None:
                await broker.close(timeout_s=closing.left(), drain_at_least_s=STOP_STEP_MIN_S)

    async def ready(self) -> tuple[bool, str]:
        """Ready when NATS is connected, the streams exist and the consumer is bound; or why
        not: `nats not connected`, the set-up step waited for (`streams not ensured yet` or
        `consumer not created yet`, with JetStream's last answer), what the broker finds
        wrong since, or why consuming stopped.

        Every answer (a /readyz probe or the health poll) also sets gRPC health.
        """
        ok, reason = await self._readiness()
        if self._started and self._health is not None:
            await self._health.record(ok, reason)
        return ok, reason

    async def _readiness(self) -> tuple[bool, str]:
        if self._consume_failure:
            return False, self._consume_failure
        broker = self._broker
        if broker is None or not broker.connected:
            return False, "nats not connected"
        if not self._loops:
            return False, self._waiting or "not consuming yet"
        return await broker.ready()

    async def stop(self) -> None:
        """Stops fetching, lets the batches in hand finish (publish, ack), then closes.

        All of it within ENRICHER_STOP_TIMEOUT_S: each step gets what is left of it, and the
        closing ones (draining NATS, then the gRPC and HTTP servers' grace) at least
        STOP_STEP_MIN_S each. A batch not finished by then is cancelled, its messages not
        acked (nothing is acked before its publish is); once it has ended, every message
        fetched and not settled is nak'd before the drain, in what is left of the stop, and
        JetStream delivers it again at once (after the ack wait if the nak is lost, or not
        sent: with nothing left, those after one that waits for room in the outgoing buffer).
        """
        if not self._started:
            return
        self._started = False
        served, self._serving = self._serving, False
        deadline = StopDeadline(self._config.stop_timeout_s)
        if self._health_task is not None:
            await cancel_and_wait(self._health_task)
            self._health_task = None
        task, self._consumer_task = self._consumer_task, None
        if task is not None:
            if not self._loops:
                await cancel_and_wait(task)  # still setting up: nothing in hand
            for loop in self._loops:
                loop.stop()
            if self._handler is not None:
                # Messages held for NATS are given back once no fetch of this process can
                # take them again (each ends within one fetch timeout).
                handler = self._handler
                pulls = asyncio.gather(*(loop.pulls_done() for loop in self._loops))
                pulls.add_done_callback(lambda _: handler.stop())
            await asyncio.wait([task], timeout=deadline.left())
            await cancel_and_wait(task)  # what it still holds is given back below
        self._loops = []
        try:
            await self._close_broker("stopped", timeout_s=deadline.left())
        except Exception as err:  # the servers and GeoIP are closed all the same
            log.error("stop: closing the NATS connection failed: %r", err, exc_info=err)
        grace_s = deadline.left(at_least=STOP_STEP_MIN_S)
        servers = []
        if self._grpc is not None:
            servers.append(self._grpc.stop(grace_s=grace_s))
            self._grpc = None
            self._health = None
        if self._http is not None:
            servers.append(self._http.stop(grace_s=grace_s))
            self._http = None
        await asyncio.gather(*servers)
        if isinstance(self._geo, MaxMindGeo):
            self._geo.close()
        self._geo = None
        if self._owns_tracing:
            self.tracing.shutdown()
        if served:  # a start that failed says why in a line of its own, and nothing else
            log.info("enricher stopped")

    async def _refresh_lag(self) -> None:
        while True:
            if self._broker is not None:
                try:
                    pending = await self._broker.pending()
                except BrokerError:
                    pass  # the gauge keeps its last value; readiness reports the outage
                else:
                    self.metrics.consumer_pending.set(pending)
            await asyncio.sleep(self._config.lag_refresh_s)
