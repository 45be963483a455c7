"""The indexer service: wires NATS, OpenSearch, bulk writing, QueryService and ops HTTP.

start(): serve QueryService and the ops routes, then, in the background, connect NATS
(waiting for it), ensure the streams (retried until JetStream answers), install the index
template (retried until OpenSearch answers), and consume (the durable consumer's creation
retried the same way); readiness says which step it waits for. A step failing on an error
that is no outage (a bug) is tried again too, less and less often, the error logged with its
stack and named by readiness (pipeline.tasks.until_done). Should that task end on an
unexpected error, it is logged with its stack, what it had set up is closed (its NATS connection
given natsconn.CLOSE_TIMEOUT_S, then left), and it starts again after a pause
(pipeline.tasks.restarting); readiness names the error until it is through.
Retention runs in the background too, started again the same way.

gRPC health: the whole server's follows readiness; QueryService's follows whether queries can
be answered, that is whether OpenSearch answers (SERVING while NATS is away). Their polls and
/readyz go by one ping of OpenSearch per poll interval between them.

stop(): stop fetching, let in-flight events be indexed and their messages acked, close the
writer, nak what is left for redelivery at once, then close everything, all within the
graceful stop time. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from indexer import retention
from indexer.api import SERVICE_NAME, QueryServer
from indexer.bulk import BulkWriter
from indexer.config import Config
from indexer.consumer import (
    STOP_FETCH_WAIT_S,
    UNSUBSCRIBE_TIMEOUT_S,
    EnrichedConsumer,
    NatsDeadLetters,
)
from indexer.errors import IndexerError
from indexer.intake import Intake
from indexer.metrics import Metrics
from indexer.store import OpenSearchStore
from indexer.store import client as store_client
from pipeline import grpcserver, natsconn, subjects, tracing
from pipeline.grpcserver import SERVER, ReadinessHealth
from pipeline.service import STOP_STEP_MIN_S, HttpServer, StopDeadline, ops_app
from pipeline.tasks import cancel_and_wait, restarting, to_the_end, until_done

log = logging.getLogger(__name__)

STEP_RETRY_S = 2.0
# What a set-up step raises while NATS, JetStream or OpenSearch is away or refuses it (the
# store's errors are translated into IndexerError): tried again every STEP_RETRY_S. Any
# other error is a bug: tried again too, less and less often (see pipeline.tasks.until_done).
_STEP_ERRORS = (IndexerError, *natsconn.ERRORS)
# Queries in flight at a stop get at most this long (of what is left of the stop).
QUERY_STOP_GRACE_S = 5.0
WRITE_SIDE_REQUESTS = 4  # requests of the writing side beside its bulk requests
_STREAMS = (subjects.ENRICHED_STREAM, subjects.DLQ_STREAM)


class Indexer:
    """Consumes enriched batches into OpenSearch and answers QueryService."""

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
        self.tracing = tracer or tracing.setup("indexer", config)
        # Writes and queries each have a client, so their connections are their own: slow
        # queries (a page of large events, an aggregation over years) never hold a bulk
        # request waiting for a connection until it times out and intake stops as for an
        # outage, nor do bulk requests hold queries up.
        self._store, self._reads = (
            OpenSearchStore(
                store_client(config, connections=connections),
                prefix=config.index_prefix,
                shards=config.index_shards,
                replicas=config.index_replicas,
                priority=config.template_priority,
                refresh_interval=config.refresh_interval,
            )
            for connections in (
                # The bulk requests in flight, and a settling `_mget`, the retention task,
                # the template and the readiness ping beside them.
                max(10, config.bulk_concurrency + WRITE_SIDE_REQUESTS),
                # A query makes one request at a time.
                config.query_max_in_flight,
            )
        )
        self._writer = BulkWriter(
            self._store,
            max_docs=config.bulk_max_docs,
            max_bytes=config.bulk_max_bytes,
            flush_interval_s=config.flush_interval_s,
            concurrency=config.bulk_concurrency,
            retry_base_s=config.retry_base_s,
            retry_max_s=config.retry_max_s,
            metrics=self.metrics,
            tracer=self.tracing,
        )
        self._query = QueryServer(
            self._reads,
            host=config.grpc_host,
            port=config.grpc_port,
            max_in_flight=config.query_max_in_flight,
            metrics=self.metrics,
            tracer=self.tracing,
        )
        # The whole server: NOT_SERVING until the indexer is ready, and whenever it is not.
        self._health = ReadinessHealth(self._query, name="indexer", logger=log, names=(SERVER,))
        # QueryService: NOT_SERVING until OpenSearch answers, and whenever it does not; queries
        # need nothing else, so a balancer checking it keeps the indexer while NATS is away.
        self._query_health = ReadinessHealth(
            self._query, name="QueryService", logger=log, names=(SERVICE_NAME,)
        )
        self._http = HttpServer(
            ops_app(self, self.metrics.registry),
            host=config.http_host,
            port=config.http_port,
            graceful_stop_s=config.graceful_stop_s,
            host_setting="INDEXER_HTTP_HOST",
            port_setting="INDEXER_HTTP_PORT",
        )
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._repair: natsconn.StreamRepair | None = None  # streams found missing, made again
        self._intake: Intake | None = None
        self._consumer: EnrichedConsumer | None = None
        self._streams_ready = asyncio.Event()
        self._template_ready = asyncio.Event()
        self._consuming = asyncio.Event()
        self._ping_lock = asyncio.Lock()  # one ping of OpenSearch at a time
        self._pinged = False  # OpenSearch's last answer to a ping
        self._pinged_at = -math.inf  # when it came
        self._waiting = ""  # what _begin is retrying, for readiness
        self._start_failure = ""  # the error _begin ended on, until a new run is through
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def grpc_port(self) -> int:
        """The port QueryService listens on (useful when configured as 0)."""
        return self._query.port

    @property
    def http_port(self) -> int:
        """The port of the ops routes (useful when configured as 0)."""
        return self._http.port

    async def start(self) -> None:
        """Serves QueryService and the ops routes, then starts the rest in the background.

        Returns once the servers listen: NATS (however long it is down), the streams, the
        index template and the consumer are waited for by a background task, so /healthz
        answers, /readyz says what is waited for, and a stop signal is honoured meanwhile.
        """
        if self._started:
            return
        self._started = True
        config = self._config
        try:
            await self._query.start()
            await self._http.start()
        except BaseException:
            # Whole, even when a stop signal cancels the start again and again meanwhile.
            await to_the_end(self.stop())
            raise
        self._writer.start()
        self._tasks.append(
            asyncio.create_task(
                restarting(self._begin, what="start-up", logger=log, failed=self._begin_failed),
                name="indexer-begin",
            )
        )
        self._tasks.append(
            asyncio.create_task(self._health.follow(self.ready), name="indexer-health")
        )
        self._tasks.append(
            asyncio.create_task(
                self._query_health.follow(self._answers_queries), name="indexer-query-health"
            )
        )
        retention.announce(
            prefix=config.index_prefix,
            keep_days=config.retention_days,
            interval_s=config.retention_interval_s,
        )
        if config.retention_days > 0:
            self._tasks.append(
                asyncio.create_task(
                    retention.run_forever(
                        self._store,
                        prefix=config.index_prefix,
                        keep_days=config.retention_days,
                        interval_s=config.retention_interval_s,
                        metrics=self.metrics,
                    ),
                    name="indexer-retention",
                )
            )
        log.info(
            "indexer listening",
            extra={"grpc_port": self.grpc_port, "http_port": self.http_port},
        )

    async def _begin(self) -> None:
        # Each step is retried until it works (NATS, JetStream or OpenSearch not there yet, a
        # conflicting consumer of the same name...); readiness says which one is waiting.
        config = self._config
        self._nc = nc = await natsconn.connect(config, name="indexer")  # waits for NATS
        self._js = js = nc.jetstream()
        await self._until_done(
            "streams not ensured yet", lambda: natsconn.ensure_streams(js, config)
        )
        self._waiting = ""
        self._repair = natsconn.StreamRepair(js, config)
        self._streams_ready.set()
        self._intake = Intake(
            self._writer,
            NatsDeadLetters(js, max_payload=lambda: int(nc.max_payload)),
            index_prefix=config.index_prefix,
            max_deliveries=config.max_deliveries,
            dated_window=config.dated_window,
            metrics=self.metrics,
            tracer=self.tracing,
        )
        self._consumer = EnrichedConsumer(
            js,
            self._intake,
            self._writer,
            name=config.consumer_name,
            fetch_batch=config.fetch_batch,
            max_ack_pending=config.max_ack_pending,
            ack_wait_s=config.ack_wait_s,
            pending_refresh_s=config.pending_refresh_s,
            metrics=self.metrics,
        )
        await self._until_done("index template not installed yet", self._store.install_template)
        self._waiting = ""
        self._template_ready.set()
        await self._until_done("not consuming yet", self._consumer.start)
        self._waiting = ""
        self._start_failure = ""
        self._consuming.set()

    async def _begin_failed(self, failure: str) -> None:
        # _begin ended on an error before it was through (the consumer was not started): what
        # it set up is closed, and the next run sets it up again, on a new connection. A close
        # of the old one that does not end (NATS not reading, a reconnect in progress) is given
        # up after natsconn.CLOSE_TIMEOUT_S: it would hold every run after it.
        self._start_failure = failure
        self._waiting = ""
        self._streams_ready.clear()
        self._template_ready.clear()
        if self._repair is not None:
            await self._repair.close()
            self._repair = None
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None
        self._intake = None
        self._js = None
        if self._nc is not None:
            await natsconn.close(self._nc)
            self._nc = None

    async def _until_done(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        await until_done(
            step,
            what=what,
            logger=log,
            waiting=self._set_waiting,
            retry_s=STEP_RETRY_S,
            errors=_STEP_ERRORS,
            retry_unexpected=True,
        )

    def _set_waiting(self, failure: str) -> None:
        self._waiting = failure

    async def stop(self) -> None:
        """Stops intake, drains in-flight events, acks, closes (idempotent).

        All of it within INDEXER_GRACEFUL_STOP_S: each step gets what is left of it (the
        fetch in progress at most STOP_FETCH_WAIT_S of it, unsubscribing the consumer at most
        UNSUBSCRIBE_TIMEOUT_S), and the closing ones (the servers' grace, then draining NATS)
        at least STOP_STEP_MIN_S each. Messages whose events were not all indexed by then are
        nak'd, never acked.
        """
        if not self._started:
            return
        self._started = False
        try:
            await self._stop_steps()
        finally:
            # Whatever step failed: the OpenSearch clients' connections are closed.
            await asyncio.gather(self._store.close(), self._reads.close())
            if self._owns_tracing:
                self.tracing.shutdown()

    async def _stop_steps(self) -> None:
        deadline = StopDeadline(self._config.graceful_stop_s)
        await cancel_and_wait(*self._tasks)  # the health polls among them
        self._tasks = []
        await self._query.set_serving(False)  # balancers look elsewhere from now on
        if self._repair is not None:
            await self._repair.close()
        if self._consumer is not None:
            await self._consumer.stop_fetching(timeout_s=min(STOP_FETCH_WAIT_S, deadline.left()))
        if self._intake is not None:
            # Fetched, never handed over: nothing will take them now; back to JetStream.
            await self._intake.release_waiting()
        await self._drain(deadline.left())
        if self._consumer is not None:
            await self._consumer.close(timeout_s=min(UNSUBSCRIBE_TIMEOUT_S, deadline.left()))
        await self._writer.close()
        if self._intake is not None:
            # Left over by the drain: nak'd only now, when nothing can ack them any more.
            released = await self._intake.release_unsettled()
            if released:
                log.warning(
                    "stopped with messages unsettled; nak'd for redelivery",
                    extra={"messages": released},
                )
        grace_s = deadline.left(at_least=STOP_STEP_MIN_S)
        await asyncio.gather(
            self._query.stop(grace_s=min(grace_s, QUERY_STOP_GRACE_S)),
            self._http.stop(grace_s=grace_s),
        )
        if self._nc is not None:
            await natsconn.drain(self._nc, timeout_s=deadline.left(at_least=STOP_STEP_MIN_S))
            self._nc = None

    async def _drain(self, timeout_s: float) -> None:
        if self._intake is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
                await self._intake.wait_idle()
        except TimeoutError:
            pass  # what is left is nak'd once the writer is closed

    async def ready(self) -> tuple[bool, str]:
        """Ready when NATS is connected, the streams exist, OpenSearch answers, the
        template is installed and the durable consumer is fetching without failing. A stream
        found missing is created again in the background (and the consumer, by the fetch loop).

        Every answer (a /readyz probe or the health poll) also sets the whole server's gRPC
        health.
        """
        ok, reason = await self._readiness()
        if self._started:
            await self._health.record(ok, reason)
        return ok, reason

    async def _answers_queries(self) -> tuple[bool, str]:
        """Whether QueryService can answer: OpenSearch answers (the answer readiness goes by).
        Sets QueryService's gRPC health."""
        ok = await self._opensearch_answers()
        reason = "ok" if ok else "opensearch not answering"
        if self._started:
            await self._query_health.record(ok, reason)
        return ok, reason

    async def _opensearch_answers(self) -> bool:
        """Whether OpenSearch answers a ping: the answer of one that came less than a health
        poll interval ago (HEALTH_POLL_S), else of a new one. So the whole server's health
        poll, QueryService's and /readyz probes ping it once per interval between them, and
        none goes by an older answer. One ping at a time: who asks meanwhile gets its answer."""
        async with self._ping_lock:
            if time.monotonic() - self._pinged_at >= grpcserver.HEALTH_POLL_S:
                self._pinged = await self._store.ping()
                self._pinged_at = time.monotonic()
            return self._pinged

    async def _readiness(self) -> tuple[bool, str]:
        if self._start_failure:
            return False, self._start_failure
        if self._nc is None or not self._nc.is_connected or self._js is None:
            return False, "nats not connected"
        if not self._streams_ready.is_set():
            return False, self._waiting or "streams not ensured yet"
        problem = await natsconn.stream_problem(self._js, _STREAMS)
        if problem is not None:
            if self._repair is not None:  # a stream deleted, or lost: made again
                self._repair.check(problem)
            return False, problem.reason
        if not await self._opensearch_answers():
            return False, "opensearch not answering"
        if not self._template_ready.is_set():
            return False, self._waiting or "index template not installed"
        if not self._consuming.is_set():
            return False, self._waiting or "not consuming yet"
        failing = self._consumer.problem if self._consumer is not None else None
        if failing is not None:
            return False, failing
        return True, "ok"
