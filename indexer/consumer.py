"""The NATS adapter: the durable pull consumer on TELEMETRY_ENRICHED, and the DLQ publisher.

The only module of the indexer that touches `nats`. Fetching pauses while OpenSearch
is away and while `max_ack_pending` messages are unsettled: backpressure, not memory.
A durable consumer that disappears (deleted, or lost with the stream's state) is created
again, with its configuration, when a fetch fails; while fetches keep failing, `problem`
says so, for readiness. Fetching that ends on an unexpected error is logged with its stack
and started again after a pause (NATS_RETRY_S, doubling up to FETCH_RESTART_MAX_S), the
messages it had fetched and not handed over given back; `problem` names the error meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import nats.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from indexer.bulk import BulkWriter
from indexer.errors import DeadLetterRefusedError
from indexer.intake import Intake
from indexer.metrics import Metrics
from pipeline import natsconn, subjects
from pipeline.tasks import cancel_and_wait

log = logging.getLogger(__name__)

STAGE = "indexer"
FETCH_WAIT_S = 1.0  # waiting for OpenSearch to come back before fetching again
# A fetch returns what it got only when its batch is full or this runs out: it bounds the
# latency added when traffic is light.
FETCH_TIMEOUT_S = 0.1
NATS_RETRY_S = 1.0
FETCH_RESTART_MAX_S = 30.0
ROOM_POLL_S = 0.02
STOP_FETCH_WAIT_S = 5.0
# Unsubscribing is a write to the connection, which NATS not reading (nats-py's buffer to it
# full) would hold up for ever: it is given up after this long, or less when the caller says.
UNSUBSCRIBE_TIMEOUT_S = 1.0
# JetStream's error code for a consumer that does not exist.
_CONSUMER_NOT_FOUND = 10014


class NatsDeadLetters:
    """Publishes to telemetry.dlq.v1.indexer through the shared helper, each dead letter made
    to fit the largest message the server takes (`max_payload()`, 0: no limit).

    A dead letter NATS refuses for good raises DeadLetterRefusedError; any other error (NATS
    away, a timeout, the DLQ stream unavailable) is raised as it is, to be tried again."""

    def __init__(self, js: JetStreamContext, *, max_payload: Callable[[], int] = lambda: 0) -> None:
        self._js = js
        self._max_payload = max_payload

    async def publish(
        self,
        *,
        reason: str,
        data: bytes,
        subject: str,
        headers: Mapping[str, str],
        deliveries: int,
        msg_id: str,
        source_seq: int,
    ) -> bool:
        try:
            return await natsconn.publish_dlq(
                self._js,
                stage=STAGE,
                reason=reason,
                data=data,
                source_subject=subject,
                headers=headers,
                deliveries=deliveries,
                msg_id=msg_id,
                source_seq=source_seq,
                max_payload=self._max_payload(),
            )
        except (nats.errors.MaxPayloadError, BadRequestError) as err:
            # Too large for the server, or refused by the stream (a 400: a message larger than
            # it takes, say): the same every time, as the enricher's.
            raise DeadLetterRefusedError(f"the DLQ refused it: {natsconn.describe(err)}") from err


def consumer_config(*, name: str, ack_wait_s: float, max_ack_pending: int) -> js_api.ConsumerConfig:
    """The durable consumer: explicit acks, bounded unacked messages, unlimited deliveries.

    Deliveries are not capped by JetStream: intake counts them and sends a message that
    came too often to the DLQ itself, so nothing is dropped silently.
    """
    return js_api.ConsumerConfig(
        durable_name=name,
        name=name,
        description="indexer: enriched batches into OpenSearch",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        filter_subject=subjects.ENRICHED_SUBJECTS,
    )


class EnrichedConsumer:
    """Pulls enriched batches and hands them to intake, as fast as OpenSearch takes them."""

    def __init__(
        self,
        js: JetStreamContext,
        intake: Intake,
        writer: BulkWriter,
        *,
        name: str,
        fetch_batch: int,
        max_ack_pending: int,
        ack_wait_s: float,
        pending_refresh_s: float,
        metrics: Metrics,
    ) -> None:
        self._js = js
        self._intake = intake
        self._writer = writer
        self._name = name
        self._fetch_batch = fetch_batch
        self._max_ack_pending = max_ack_pending
        self._ack_wait_s = ack_wait_s
        self._pending_refresh_s = pending_refresh_s
        self._metrics = metrics
        self._sub: JetStreamContext.PullSubscription | None = None
        self._fetching = False
        self._fetch_task: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._fetch_error = ""  # the last fetch's error while fetches fail, else empty
        self._fetch_failure = ""  # why fetching ended, until a fetch is answered again
        self._stopping = asyncio.Event()

    @property
    def problem(self) -> str | None:
        """Why fetching fails, while it keeps failing (NATS away, the consumer lost and not
        created again yet), or why it stopped; None while fetches are answered."""
        if self._fetch_failure:
            return self._fetch_failure
        if self._fetching and self._fetch_task is not None and self._fetch_task.done():
            return "fetching ended"
        return f"fetch failing: {self._fetch_error}" if self._fetch_error else None

    def _config(self) -> js_api.ConsumerConfig:
        return consumer_config(
            name=self._name, ack_wait_s=self._ack_wait_s, max_ack_pending=self._max_ack_pending
        )

    async def start(self) -> None:
        """Creates (or updates) the durable consumer and starts fetching (idempotent)."""
        if self._fetch_task is not None:
            return
        await self._js.add_consumer(subjects.ENRICHED_STREAM, config=self._config())
        self._sub = await self._js.pull_subscribe_bind(
            durable=self._name, stream=subjects.ENRICHED_STREAM
        )
        self._fetching = True
        self._fetch_task = asyncio.create_task(self._fetch_loop(self._sub), name="indexer-fetch")
        self._side_tasks = [
            asyncio.create_task(self._touch_loop(), name="indexer-in-progress"),
            asyncio.create_task(self._pending_loop(self._sub), name="indexer-pending"),
        ]

    async def stop_fetching(self, *, timeout_s: float = STOP_FETCH_WAIT_S) -> None:
        """Stops asking for messages; returns after the fetch in progress (idempotent).

        A fetch loop stuck handing events to a writer that cannot send (OpenSearch away)
        is cancelled after `timeout_s`: what it held is not acked; the service's stop naks
        it once the writer is closed.
        """
        self._fetching = False
        self._stopping.set()
        task, self._fetch_task = self._fetch_task, None
        if task is None:
            return
        await asyncio.wait({task}, timeout=timeout_s)
        await cancel_and_wait(task)

    async def close(self, *, timeout_s: float = UNSUBSCRIBE_TIMEOUT_S) -> None:
        """Stops every task and unsubscribes, waiting at most `timeout_s` for that (idempotent).

        An unsubscribe that fails or is not done in time (NATS not reading what nats-py writes
        to it) is logged and given up: the connection's drain or close, which the service
        does next, ends the subscription all the same.
        """
        await self.stop_fetching()
        await cancel_and_wait(*self._side_tasks)
        self._side_tasks = []
        sub, self._sub = self._sub, None
        if sub is None:
            return
        limit = asyncio.timeout(timeout_s)
        try:
            async with limit:
                await sub.unsubscribe()
        except Exception as err:
            if limit.expired():
                why = f"not done within {timeout_s:.1f} s"
            else:
                why = f"failed: {natsconn.describe(err)}"
            log.warning("consumer %s: unsubscribe %s; going on without it", self._name, why)

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        delay = NATS_RETRY_S
        try:
            while self._fetching:
                try:
                    await self._fetch_until_stopped(sub)
                except Exception as err:
                    self._fetch_failure = f"fetching stopped on an error: {err!r}"
                    log.error(
                        "%s; starting it again in %g s", self._fetch_failure, delay, exc_info=err
                    )
                    # Fetched, never handed over: back to JetStream, or they would be touched
                    # (held) for ever. The one being handed over comes back after ack_wait.
                    await self._intake.release_waiting()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    delay = min(delay * 2, FETCH_RESTART_MAX_S)
        finally:
            self._fetch_error = self._fetch_failure = ""  # a stopped loop is not a failing one

    async def _fetch_until_stopped(self, sub: JetStreamContext.PullSubscription) -> None:
        failing = False  # logged when fetching starts failing and when it recovers, not each try
        while self._fetching:
            if not self._writer.healthy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._writer.wait_healthy(), FETCH_WAIT_S)
                continue
            room = self._max_ack_pending - self._intake.in_progress
            if room <= 0:
                await asyncio.sleep(ROOM_POLL_S)
                continue
            try:
                msgs = await sub.fetch(batch=min(self._fetch_batch, room), timeout=FETCH_TIMEOUT_S)
            except TimeoutError:  # answered: nothing to fetch
                msgs = []
            except Exception as err:  # NATS away (it reconnects by itself), or the consumer lost
                self._fetch_error = natsconn.describe(err)
                if not failing:
                    log.warning("fetch failing: %s; retrying", self._fetch_error)
                    failing = True
                await self._restore()
                await asyncio.sleep(NATS_RETRY_S)
                continue
            self._fetch_error = self._fetch_failure = ""
            if failing:
                log.info("fetch recovered")
                failing = False
            if not msgs:
                continue
            deliveries = [natsconn.JetStreamDelivery(msg) for msg in msgs]
            # Handing them over may wait for bulk slots; meanwhile they are touched too.
            self._intake.received(deliveries)
            for delivery in deliveries:
                await self._intake.handle(delivery)

    async def _restore(self) -> None:
        """Creates the durable consumer again when JetStream says it does not exist (a fetch
        from a deleted consumer fails as one with NATS away does: nobody answers it).

        Like the first one it delivers the enriched stream from its start (what the lost
        consumer had acked is not known): nothing is lost, and the events indexed already
        answer 409 and count as duplicates. NATS away: the next failing fetch asks again.
        """
        try:
            await self._js.consumer_info(subjects.ENRICHED_STREAM, self._name)
        except NotFoundError as err:
            if err.err_code != _CONSUMER_NOT_FOUND:
                return  # the stream itself is missing: readiness names it
        except Exception as err:
            log.debug("consumer info failed: %s", natsconn.describe(err))
            return
        else:
            return  # it exists: the failure is something else
        try:
            await self._js.add_consumer(subjects.ENRICHED_STREAM, config=self._config())
        except Exception as err:
            log.warning(
                "consumer %s is missing and could not be created again: %s",
                self._name,
                natsconn.describe(err),
            )
            return
        log.warning(
            "consumer %s was missing; created it again (it delivers the enriched stream from"
            " its start: events already indexed count as duplicates)",
            self._name,
        )

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            await self._intake.touch()

    async def _pending_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                info = await sub.consumer_info()
                self._metrics.consumer_pending.set(info.num_pending or 0)
            except Exception as err:
                log.debug("consumer info failed: %s", natsconn.describe(err))
            await asyncio.sleep(self._pending_refresh_s)
