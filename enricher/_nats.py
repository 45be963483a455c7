"""The NATS adapter: the durable pull consumer, the fetch loop, and the publishing sink.

The only module of the enricher that touches `nats`. NATS errors are
translated here into BrokerError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from enricher._handler import Delivery, Handler
from enricher.errors import BrokerError, DeadLetterRefusedError, PublishRefusedError
from pipeline import natsconn, subjects
from pipeline.settings import NatsSettings

log = logging.getLogger(__name__)

STAGE = "enricher"
CLIENT_NAME = "enricher"
_STREAMS = (subjects.RAW_STREAM, subjects.ENRICHED_STREAM, subjects.DLQ_STREAM)
_RETRY_FETCH_AFTER_ERROR_S = 0.5
# JetStream's error code for a consumer that does not exist.
_CONSUMER_NOT_FOUND = 10014


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How the durable consumer on the raw stream is set up and read."""

    name: str
    ack_wait_s: float
    max_ack_pending: int
    fetch_batch: int
    fetch_timeout_s: float


class JsSink:
    """Publishes enriched batches and dead letters to JetStream, waiting for the PubAck."""

    def __init__(
        self, js: JetStreamContext, *, timeout_s: float, max_payload: Callable[[], int]
    ) -> None:
        """`max_payload()`: the largest message the server connected to takes, in bytes."""
        self._js = js
        self._timeout_s = timeout_s
        self._max_payload = max_payload

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
        try:
            ack = await self._js.publish(
                subject,
                data,
                timeout=self._timeout_s,
                stream=subjects.ENRICHED_STREAM,
                headers=dict(headers),
            )
        except (nats.errors.MaxPayloadError, BadRequestError) as err:
            raise PublishRefusedError(
                f"publish to {subject} refused: {natsconn.describe(err)}"
            ) from err
        except natsconn.ERRORS as err:
            raise BrokerError(f"publish to {subject}: {natsconn.describe(err)}") from err
        return bool(ack.duplicate)

    async def dead_letter(self, delivery: Delivery, *, reason: str, detail: str) -> bool:
        """Raises DeadLetterRefusedError when NATS refuses it for good, BrokerError when
        NATS may take it later."""
        try:
            return await natsconn.publish_dlq(
                self._js,
                stage=STAGE,
                reason=f"{reason}: {detail}",
                data=delivery.data,
                source_subject=delivery.subject,
                headers=delivery.headers,
                deliveries=delivery.deliveries,
                msg_id=subjects.dead_letter_id(
                    stream_seq=delivery.stream_seq,
                    msg_id=delivery.headers.get(subjects.MSG_ID_HEADER, ""),
                    data=delivery.data,
                ),
                source_seq=delivery.stream_seq,
                max_payload=self._max_payload(),
                timeout_s=self._timeout_s,
            )
        except (nats.errors.MaxPayloadError, BadRequestError) as err:
            # Too large for the server, or refused by the stream (a 400: a wrong expected
            # sequence, a message larger than the stream takes): the same every time.
            raise DeadLetterRefusedError(f"the DLQ refused it: {natsconn.describe(err)}") from err
        except natsconn.ERRORS as err:
            raise BrokerError(f"publish to the DLQ: {natsconn.describe(err)}") from err


def consumer_config(settings: ConsumerSettings) -> js_api.ConsumerConfig:
    """The durable pull consumer the enricher processes share.

    The broker redelivers without limit (max_deliver -1): the delivery limit is
    the enricher's own, so a message past it goes to the DLQ instead of
    silently stopping.
    """
    return js_api.ConsumerConfig(
        name=settings.name,
        durable_name=settings.name,
        description="enricher: raw batches to enriched batches",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=settings.max_ack_pending,
        filter_subject=subjects.RAW_SUBJECTS,
        replay_policy=js_api.ReplayPolicy.INSTANT,
    )


async def bind_consumer(
    js: JetStreamContext, settings: ConsumerSettings, *, subscriptions: int = 1
) -> list[JetStreamContext.PullSubscription]:
    """Creates or updates the durable consumer, then binds pull subscriptions to it.

    One subscription per fetch loop: fetches that share a subscription share its
    inbox, and one fetch would take the messages and status replies of another.
    Raises BrokerError saying what JetStream answered (the subscriptions bound before
    it are released).
    """
    subs: list[JetStreamContext.PullSubscription] = []
    try:
        await js.add_consumer(subjects.RAW_STREAM, consumer_config(settings))
        for _ in range(subscriptions):
            subs.append(
                await js.pull_subscribe_bind(durable=settings.name, stream=subjects.RAW_STREAM)
            )
    except natsconn.ERRORS as err:
        for sub in subs:
            await release(sub)
        raise BrokerError(natsconn.describe(err)) from err
    return subs


async def restore_consumer(js: JetStreamContext, settings: ConsumerSettings) -> bool:
    """Creates the durable consumer again when JetStream says it does not exist (deleted
    by hand, or lost with its stream's state); True when it did. Subscriptions bound to it
    fetch from the new one: a pull names the consumer, not a subscription of its own.
    Like the first one it delivers the raw stream from its start (what the lost consumer
    had acked is not known): nothing is lost, and the events enriched again are stored
    once, their document id being their event id.

    Raises BrokerError when JetStream cannot be asked or does not create it.
    """
    try:
        await js.consumer_info(subjects.RAW_STREAM, settings.name)
    except NotFoundError as err:
        if err.err_code != _CONSUMER_NOT_FOUND:
            raise BrokerError(f"consumer {settings.name}: {natsconn.describe(err)}") from err
    except natsconn.ERRORS as err:
        raise BrokerError(f"consumer {settings.name}: {natsconn.describe(err)}") from err
    else:
        return False
    try:
        await js.add_consumer(subjects.RAW_STREAM, consumer_config(settings))
    except natsconn.ERRORS as err:
        raise BrokerError(f"consumer {settings.name}: {natsconn.describe(err)}") from err
    return True


class FetchLoop:
    """Fetches raw messages in batches and hands them to the handler, until stopped."""

    def __init__(
        self,
        subscription: JetStreamContext.PullSubscription,
        handler: Handler,
        *,
        settings: ConsumerSettings,
        js: JetStreamContext | None = None,
    ) -> None:
        """With `js`, a fetch failing because the durable consumer is gone creates it again
        (`restore_consumer`); without, the loop only keeps trying."""
        self._sub = subscription
        self._js = js
        self._handler = handler
        self._settings = settings
        self._stopping = asyncio.Event()
        self._fetching = False
        self._pulls_done = asyncio.Event()

    def stop(self) -> None:
        """Asks the loop to stop after the batch in hand (it ends within one fetch timeout)."""
        self._stopping.set()
        if not self._fetching:
            self._pulls_done.set()

    async def pulls_done(self) -> None:
        """Returns once the loop is stopping and no fetch of its own is waiting for messages
        (a message given back before then could be delivered to that fetch, and then wait
        for ack_wait)."""
        await self._pulls_done.wait()

    async def run(self) -> None:
        """Runs until `stop()`; a NATS outage is waited out (logged once), not a crash."""
        try:
            await self._run()
        finally:
            self._pulls_done.set()

    async def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                msgs = await self._fetch()
            except TimeoutError:  # nothing to fetch: nats-py raises its own or asyncio's
                continue
            except Exception as err:  # an outage or a client bug: keep trying, never die
                if not failing and not self._stopping.is_set():  # a stop interrupts a fetch
                    log.warning("fetch failing: %s; retrying", natsconn.describe(err))
                    failing = True
                await self._restore()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), _RETRY_FETCH_AFTER_ERROR_S)
                continue
            if failing:
                log.info("fetch recovered")
                failing = False
            if msgs:  # an empty answer is an idle stream, as a timeout is: nothing to handle
                await self._handler.handle([natsconn.JetStreamDelivery(msg) for msg in msgs])

    async def _restore(self) -> None:
        """Creates the consumer again if it is missing (a fetch from a deleted consumer
        fails as one with NATS away does: JetStream has nobody to answer it)."""
        if self._js is None or self._stopping.is_set():
            return
        try:
            restored = await restore_consumer(self._js, self._settings)
        except BrokerError:
            return  # NATS away: the next failing fetch asks again
        if restored:
            log.warning("consumer %s was missing; created it again", self._settings.name)

    async def _fetch(self) -> list[Msg]:
        self._fetching = True
        try:
            return await self._sub.fetch(
                self._settings.fetch_batch, timeout=self._settings.fetch_timeout_s
            )
        finally:
            self._fetching = False
            if self._stopping.is_set():
                self._pulls_done.set()


async def consumer_pending(subscription: JetStreamContext.PullSubscription) -> int:
    """Raw messages not yet delivered to the consumer; raises BrokerError."""
    try:
        info = await subscription.consumer_info()
    except natsconn.ERRORS as err:
        raise BrokerError(f"consumer info: {natsconn.describe(err)}") from err
    return int(info.num_pending or 0)


async def release(subscription: JetStreamContext.PullSubscription) -> None:
    """Unsubscribes the pull subscription (the durable consumer stays).

    Done before draining the connection: the subscription's queue keeps the
    broker's status replies to expired pulls, and a drain would wait for them.
    """
    with contextlib.suppress(*natsconn.ERRORS):
        await subscription.unsubscribe()


class Broker:
    """The enricher's side of NATS: the connection, the streams and the consumer's subscriptions.

    Set up in three steps, so that the service can say which one it waits for: `connect()`,
    then `ensure_streams()` and `bind()`, each tried again on the same connection until
    JetStream takes it.
    """

    def __init__(self, nc: Client, js: JetStreamContext, *, settings: NatsSettings) -> None:
        self._nc = nc
        self._js = js
        self._settings = settings
        self.subscriptions: list[JetStreamContext.PullSubscription] = []
        self._repair = natsconn.StreamRepair(js, settings)

    @classmethod
    async def connect(cls, settings: NatsSettings, *, timeout_s: float) -> Broker:
        """Connects, waiting for NATS however long it is down (it reconnects by itself
        afterwards); `timeout_s` bounds each JetStream request."""
        nc = await natsconn.connect(settings, name=CLIENT_NAME)
        return cls(nc, nc.jetstream(timeout=timeout_s), settings=settings)

    @property
    def connected(self) -> bool:
        """Connected to NATS now (not while it reconnects)."""
        return bool(self._nc.is_connected)

    async def ensure_streams(self) -> None:
        """Creates the pipeline's streams, or updates them to the configuration; raises
        BrokerError saying what JetStream answered."""
        try:
            await natsconn.ensure_streams(self._js, self._settings)
        except natsconn.ERRORS as err:
            raise BrokerError(natsconn.describe(err)) from err

    async def bind(self, consumer: ConsumerSettings, *, subscriptions: int) -> None:
        """Creates or updates the durable consumer and binds `subscriptions` pull
        subscriptions to it; raises BrokerError saying what JetStream answered."""
        self.subscriptions = await bind_consumer(self._js, consumer, subscriptions=subscriptions)

    @property
    def max_payload(self) -> int:
        """The largest message the server takes, in bytes."""
        return int(self._nc.max_payload)

    def fetch_loops(self, handler: Handler, settings: ConsumerSettings) -> list[FetchLoop]:
        """One fetch loop per subscription, each creating the consumer again if it is lost."""
        return [
            FetchLoop(sub, handler, settings=settings, js=self._js) for sub in self.subscriptions
        ]

    def sink(self, *, timeout_s: float) -> JsSink:
        """Where enriched batches and dead letters are published."""
        return JsSink(self._js, timeout_s=timeout_s, max_payload=lambda: int(self._nc.max_payload))

    async def ready(self) -> tuple[bool, str]:
        """Connected, the streams and the consumer exist; or why not. A stream found missing
        is created again in the background (and the consumer, by the fetch loops)."""
        if not self._nc.is_connected:
            return False, "nats not connected"
        problem = await natsconn.stream_problem(self._js, _STREAMS)
        if problem is not None:
            self._repair.check(problem)
            return False, problem.reason
        try:
            await self.pending()
        except BrokerError as err:
            if self.subscriptions and not isinstance(err.__cause__, NotFoundError):
                return False, f"consumer not answering: {err}"  # a timeout, say: not gone
            return False, "consumer missing"
        return True, "ok"

    async def pending(self) -> int:
        """The consumer's lag; raises BrokerError (also before `bind()`)."""
        if not self.subscriptions:
            raise BrokerError("the consumer is not bound yet")
        return await consumer_pending(self.subscriptions[0])

    async def close(self, *, timeout_s: float, drain_at_least_s: float = 0.0) -> None:
        """Releases the subscriptions, then drains the connection (flushing the last acks and
        naks), within `timeout_s`; the drain gets what is left of it, and at least
        `drain_at_least_s` however long the release took. A connection not drained by then is
        closed without it, and JetStream delivers again the messages whose acks were not sent.
        It is drained and closed whatever the steps before raise (raised after it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            await self._repair.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    for sub in self.subscriptions:
                        await release(sub)
        finally:
            await natsconn.drain(self._nc, timeout_s=max(deadline - loop.time(), drain_at_least_s))
