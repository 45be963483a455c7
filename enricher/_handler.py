"""Handling fetched raw messages: enrich, publish, and only then ack.

A publish NATS does not take (no ack in time, the stream unreachable) is tried again in
place, the message kept in progress meanwhile, until NATS takes it: a broker failure never
spends a message's deliveries, so an outage of the enriched stream or the DLQ sends nothing
to the DLQ, and the fetch loop waiting on it is the backpressure. Only other failures are
nak'ed and count towards the delivery limit. A dead letter NATS refuses for good (too
large, or refused by the stream) is logged as an error and its message terminated.

The handler speaks to the broker through two small ports, `Delivery` (a raw
message as delivered) and `Sink` (where enriched batches and dead letters go),
so tests drive it with fakes and the NATS adapter stays thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from enricher import _policy
from enricher._enrich import (
    EnrichOptions,
    enrich_batch_bytes,
    enriched_at_slack,
    split_enriched,
)
from enricher._geo import GeoLookup
from enricher._metrics import (
    OUTCOME_DEAD_LETTERED,
    OUTCOME_ENRICHED,
    OUTCOME_RETRIED,
    Metrics,
)
from enricher._raw import app_id_of, decode_raw, enriched_msg_id
from enricher.errors import BrokerError, DeadLetterRefusedError
from pipeline import logs, subjects, tracing

log = logging.getLogger(__name__)


class Delivery(Protocol):
    """One raw message as the broker delivered it."""

    @property
    def data(self) -> bytes: ...

    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def stream_seq(self) -> int:
        """The message's sequence in the raw stream (the same on every redelivery)."""
        ...

    @property
    def deliveries(self) -> int:
        """How often the message has been delivered, this time included."""
        ...

    @property
    def stored_ns(self) -> int:
        """When the broker stored the message, in nanoseconds since the epoch."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay_s: float) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None:
        """Still being worked on: restarts the broker's ack-wait timer."""
        ...


class Sink(Protocol):
    """Where the handler's output goes. Both methods raise BrokerError when NATS fails."""

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
        """Publishes; returns once the stream has acked, True when it was a duplicate.

        A duplicate is a publish the stream dropped because a message with the
        same Nats-Msg-Id is already stored: a redelivery of a raw message whose
        first publish had landed.
        """
        ...

    async def dead_letter(self, delivery: Delivery, *, reason: str, detail: str) -> bool:
        """Stores the original message in the DLQ stream with the reason; True when the
        stream already had it (an earlier delivery was dead-lettered, its term lost).
        Raises DeadLetterRefusedError when NATS refuses it for good."""
        ...


@dataclass(frozen=True, slots=True)
class _Outgoing:
    subject: str
    # (Nats-Msg-Id, enriched batch, events, events whose event_message is cut); usually one
    parts: list[tuple[str, bytes, int, int]]
    headers: dict[str, str]
    events: int


def _among(indices: set[int], first: int, end: int) -> int:
    """How many of `indices` are in [first, end): the cut events of one part."""
    return sum(first <= index < end for index in indices) if indices else 0


# While publishing fails, every message and redelivery is retried: one warning this often.
RETRY_LOG_INTERVAL_S = 30.0
# Dead letters come in runs (a poison producer, a replay failing again): one warning this
# often. Each is in the DLQ stream itself, with its reason; the line only points there.
DEAD_LETTER_LOG_INTERVAL_S = 30.0
# A message held for a failing publish is touched this often by default (below ack_wait).
DEFAULT_TOUCH_EVERY_S = 10.0
# Messages given back on stop: redelivered at once, to another process or the next start.
RELEASE_DELAY_S = 0.0

T = TypeVar("T")

_Prepared = _Outgoing | _policy.DeadLetter | Exception


class _Stopped(Exception):
    """The handler stopped while a message waited for NATS to take its publish."""


class Handler:
    """Turns fetched raw messages into enriched batches, dead letters, or naks."""

    def __init__(
        self,
        *,
        sink: Sink,
        geo: GeoLookup,
        options: EnrichOptions,
        retry: _policy.RetryPolicy,
        metrics: Metrics,
        clock_ns: Callable[[], int] = time.time_ns,
        tracer: tracing.Tracing | None = None,
        max_message_bytes: int | Callable[[], int] = 0,
        max_events: int = 0,
        retry_log: logs.Throttle | None = None,
        dead_letter_log: logs.Throttle | None = None,
        touch_every_s: float = DEFAULT_TOUCH_EVERY_S,
    ) -> None:
        """`max_message_bytes` (0: no limit; a function: read for each message, the server's
        limit being able to change on a reconnect) is the most an enriched message may hold;
        a larger enriched batch is published as several; a raw message of more than
        `max_events` events (0: no limit) goes to the DLQ. `retry_log` paces the warnings
        about retried messages (default: one per RETRY_LOG_INTERVAL_S), `dead_letter_log`
        those about dead-lettered ones (one per DEAD_LETTER_LOG_INTERVAL_S). A message waiting
        for NATS to take its publish is touched (in progress) every `touch_every_s`, which
        must be shorter than the consumer's ack_wait."""
        self._tracing = tracer or tracing.Tracing.disabled()
        self._sink = sink
        self._geo = geo
        self._options = options
        self._retry = retry
        self._metrics = metrics
        self._clock_ns = clock_ns
        self._max_message_bytes = (
            max_message_bytes if callable(max_message_bytes) else lambda: max_message_bytes
        )
        self._max_events = max_events
        self._retry_log = retry_log or logs.Throttle(RETRY_LOG_INTERVAL_S)
        self._dead_letter_log = dead_letter_log or logs.Throttle(DEAD_LETTER_LOG_INTERVAL_S)
        self._touch_every_s = touch_every_s
        self._stopping = asyncio.Event()
        # Handed to handle(), not yet acked, nak'ed or terminated (by identity): those whose
        # turn has not come yet, those being published, those waiting for NATS to take it.
        self._unsettled: dict[int, Delivery] = {}

    def stop(self) -> None:
        """Messages waiting for NATS to take their publish are nak'ed at once from now on
        (redelivered to whichever process fetches next), so a stop does not wait for NATS."""
        self._stopping.set()

    @property
    def unsettled(self) -> int:
        """Messages handed to `handle()` and not yet acked, nak'ed or terminated."""
        return len(self._unsettled)

    async def release_unsettled(self) -> int:
        """Naks every message handed to `handle()` and not settled, for redelivery at once
        (to another process, or the next start) instead of after the consumer's ack wait;
        returns how many.

        Only once no `handle()` runs any more (its fetch loops ended, cancelled or not): a
        message nak'ed while its publish could still be taken would be redelivered and
        enriched again beside it.
        """
        unsettled = list(self._unsettled.values())
        self._unsettled.clear()
        for delivery in unsettled:
            await self._quietly(delivery.nak(RELEASE_DELAY_S))
        return len(unsettled)

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        """Settles every delivery: acked after its publish, terminated, or nak'ed.

        Messages are enriched one after the other (CPU), each one's publish starting
        before the next is enriched, and the event loop gets a turn between them (for
        acks, touches, other fetch loops); the publishes wait for their acks
        concurrently. Never raises for one bad message. Cancelled, it leaves the messages
        it had not settled to `release_unsettled()`. No deliveries: nothing is done, and
        enricher_batch_seconds observes nothing (it times batches, not idle fetches).
        """
        if not deliveries:
            return
        started = time.perf_counter()
        for delivery in deliveries:
            self._unsettled[id(delivery)] = delivery
        in_progress = self._metrics.messages_in_progress
        unsettled = len(deliveries)
        in_progress.inc(unsettled)

        async def settle(delivery: Delivery, item: _Prepared, span: tracing.Span) -> None:
            nonlocal unsettled
            try:
                await self._settle_traced(delivery, item, span)
            finally:
                unsettled -= 1
                in_progress.dec()

        try:
            async with asyncio.TaskGroup() as settling:
                for delivery in deliveries:
                    span = self._span(delivery)
                    item = self._prepare(delivery, span)
                    settling.create_task(settle(delivery, item, span))
                    await asyncio.sleep(0)
        finally:
            in_progress.dec(unsettled)  # those whose settling never started (cancelled)
        self._metrics.batch_seconds.observe(time.perf_counter() - started)

    def _span(self, delivery: Delivery) -> tracing.Span:
        """One span per raw message, a child of the gateway's publish (no-op when disabled)."""
        if not self._tracing.enabled:
            return tracing.INVALID_SPAN
        return self._tracing.start(
            f"enrich {subjects.RAW_STREAM}",
            kind=tracing.SpanKind.CONSUMER,
            parent=self._tracing.incoming(delivery.headers),
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": delivery.subject,
                "pipeline.stream_sequence": delivery.stream_seq,
                "pipeline.deliveries": delivery.deliveries,
            },
        )

    async def _settle_traced(self, delivery: Delivery, item: _Prepared, span: tracing.Span) -> None:
        try:
            await self._settle(delivery, item, span)
        finally:
            span.end()

    def _prepare(self, delivery: Delivery, span: tracing.Span) -> _Prepared:
        # A message delivered past the limit is tried all the same (its deliveries may have
        # been spent by stops giving it back while NATS did not take its publish), up to a
        # ceiling far past it.
        given_up = _policy.before_processing(deliveries=delivery.deliveries, policy=self._retry)
        if given_up is not None:
            return given_up
        try:
            headers = delivery.headers
            raw = decode_raw(delivery.data, headers, max_events=self._max_events)
            app_id = app_id_of(raw, delivery.subject)
            now_ns = self._clock_ns()
            cut: set[int] = set()  # the events whose event_message is cut
            data = enrich_batch_bytes(
                raw,
                app_id=app_id,
                fallback_received_ns=delivery.stored_ns,
                now_ns=now_ns,
                geo=self._geo,
                options=self._options,
                cut=cut,
            )
            msg_id = enriched_msg_id(
                stream_seq=delivery.stream_seq,
                raw_msg_id=headers.get(subjects.MSG_ID_HEADER, ""),
                data=delivery.data,
            )
            limit = self._max_message_bytes()
            split = (
                split_enriched(
                    data, limit, events=len(raw.events), slack=enriched_at_slack(now_ns), cut=cut
                )
                if limit
                else None
            )
            # Parts are named by the events they hold, and every delivery splits alike:
            # a redelivery's parts are dropped as duplicates. Were the broker's largest
            # message to change in between, the parts would get new names and be stored
            # again (the indexer answers 409 for their events), where a name reused for a
            # part holding more events would be taken for a duplicate and lose the difference.
            parts = (
                [(msg_id, data, len(raw.events), len(cut))]
                if split is None
                else [
                    (f"{msg_id}:{first}-{end}", part, end - first, _among(cut, first, end))
                    for first, end, part in split
                ]
            )
            out = {subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA}
            span.set_attribute("pipeline.app_id", app_id)
            span.set_attribute("pipeline.events", len(raw.events))
            replay_of = headers.get(subjects.DLQ_REPLAY_OF_HEADER)
            if replay_of:
                out[subjects.DLQ_REPLAY_OF_HEADER] = replay_of
            # The enriched message continues this span's trace; untraced, the raw one's.
            if not tracing.inject(out, span):
                traceparent = headers.get(subjects.TRACEPARENT_HEADER)
                if traceparent:
                    out[subjects.TRACEPARENT_HEADER] = traceparent
                    state = headers.get(tracing.TRACESTATE)
                    if state and len(state) <= tracing.MAX_TRACESTATE_CHARS:
                        out[tracing.TRACESTATE] = state
            return _Outgoing(subjects.enriched_subject(app_id), parts, out, len(raw.events))
        except Exception as err:  # classified by _policy.on_failure
            return err

    async def _settle(self, delivery: Delivery, item: _Prepared, span: tracing.Span) -> None:
        if isinstance(item, _Outgoing):
            outgoing = item
            try:
                published = await self._until_taken(delivery, lambda: self._publish(outgoing))
            except _Stopped:
                await self._finish(delivery, delivery.nak(RELEASE_DELAY_S))
                return
            except Exception as err:
                item = err
            else:
                if len(outgoing.parts) > 1:
                    span.set_attribute("pipeline.messages", len(outgoing.parts))
                duplicate = published == 0
                span.set_attribute("pipeline.outcome", OUTCOME_ENRICHED)
                span.set_attribute("pipeline.duplicate", duplicate)
                self._metrics.messages.labels(outcome=OUTCOME_ENRICHED).inc()
                if duplicate:
                    self._metrics.duplicates.inc()
                await self._finish(delivery, delivery.ack())
                return
        action = (
            item
            if isinstance(item, _policy.DeadLetter)
            else _policy.on_failure(item, deliveries=delivery.deliveries, policy=self._retry)
        )
        if isinstance(action, _policy.DeadLetter):
            letter = action
            try:
                again = await self._until_taken(
                    delivery,
                    lambda: self._sink.dead_letter(
                        delivery, reason=letter.reason, detail=letter.detail
                    ),
                )
            except _Stopped:
                await self._finish(delivery, delivery.nak(RELEASE_DELAY_S))
                return
            except DeadLetterRefusedError as err:
                # Refused for good: trying again would stall this fetch loop forever.
                tracing.failed(span, letter.reason)
                log.error(
                    "raw message dropped: its dead letter was refused: %s",
                    err,
                    extra={
                        "reason": letter.reason,
                        "subject": delivery.subject,
                        "stream_sequence": delivery.stream_seq,
                        "deliveries": delivery.deliveries,
                        **tracing.trace_id_of(delivery.headers),
                    },
                )
                self._metrics.dlq_refused.inc()
                await self._finish(delivery, delivery.term())
                return
            except Exception as err:
                # Not stored, and not NATS's doing: never term it, nak it to be tried again.
                action = _policy.on_failure(
                    BrokerError(f"dead letter not stored: {err!r}"),
                    deliveries=delivery.deliveries,
                    policy=self._retry,
                )
            else:
                tracing.failed(span, letter.reason)
                span.set_attribute("pipeline.outcome", OUTCOME_DEAD_LETTERED)
                self._log_dead_letter(delivery, letter.reason)
                self._metrics.messages.labels(outcome=OUTCOME_DEAD_LETTERED).inc()
                if not again:  # counted once, not again for a redelivery
                    self._metrics.dlq.labels(reason=letter.reason).inc()
                await self._finish(delivery, delivery.term())
                return
        assert isinstance(action, _policy.Retry)
        self._remember(delivery, item)
        span.set_attribute("pipeline.outcome", OUTCOME_RETRIED)
        self._metrics.messages.labels(outcome=OUTCOME_RETRIED).inc()
        await self._finish(delivery, delivery.nak(action.delay_s))

    async def _publish(self, item: _Outgoing) -> int:
        """Publishes every part; returns the events of the parts the stream did not have
        already (0: a duplicate, all published before). Events are counted as their part is
        taken: once each, whether a redelivery repeats all the parts or only the rest; those
        whose event_message is cut likewise."""
        published = 0
        for msg_id, data, events, cut in item.parts:
            headers = {subjects.MSG_ID_HEADER: msg_id, **item.headers}
            if not await self._sink.publish(item.subject, data, headers=headers):
                self._metrics.events.inc(events)
                if cut:
                    self._metrics.event_message_truncated.inc(cut)
                published += events
        return published

    async def _until_taken(self, delivery: Delivery, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`'s result once NATS takes it. After a BrokerError it is tried again,
        the pause doubling from the retry policy's base delay to its longest (less up to a
        fifth, at random) and the message touched meanwhile; the message is counted as
        retried once, each failed attempt in publish_retries, and logged (paced). Raises
        _Stopped when the handler stops, and any other error at once."""
        failures = 0
        try:
            while True:
                try:
                    return await attempt()
                except BrokerError as err:
                    if self._stopping.is_set():
                        raise _Stopped from err
                    if not failures:  # the message is retried: counted once, however long
                        self._metrics.messages_held.inc()
                        self._metrics.messages.labels(outcome=OUTCOME_RETRIED).inc()
                    failures += 1
                    self._remember(delivery, err)
                    self._metrics.publish_retries.inc()
                    pause = _policy.nak_delay_s(deliveries=failures, policy=self._retry)
                    # Spread: the messages held together do not all try again at once.
                    await self._pause(delivery, pause * random.uniform(0.8, 1.0))
        finally:
            if failures:
                self._metrics.messages_held.dec()

    async def _pause(self, delivery: Delivery, seconds: float) -> None:
        """Waits `seconds`, touching the message every `touch_every_s` and once at the end;
        raises _Stopped as soon as the handler stops."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(left, self._touch_every_s))
            if self._stopping.is_set():
                raise _Stopped
            await self._quietly(delivery.in_progress())

    def _remember(self, delivery: Delivery, err: _Prepared) -> None:
        """Logs why a message is retried (one line per interval)."""
        text = repr(err)[:500]
        held_back = self._retry_log.admit()
        if held_back is not None:
            log.warning(
                "raw message not enriched; retrying: %s%s",
                text,
                logs.since_last_line(held_back, what="more retried"),
                extra={
                    "subject": delivery.subject,
                    "stream_sequence": delivery.stream_seq,
                    "deliveries": delivery.deliveries,
                    "held_back": held_back,
                },
            )

    def _log_dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Logs a message dead-lettered (one line per interval, with this one's details and
        how many were left out: each is in the DLQ with its reason, and counted)."""
        logs.warn_paced(
            log,
            self._dead_letter_log,
            "raw message dead-lettered",
            what="more dead-lettered",
            extra={
                "reason": reason,
                "subject": delivery.subject,
                "stream_sequence": delivery.stream_seq,
                "deliveries": delivery.deliveries,
                **tracing.trace_id_of(delivery.headers),
            },
        )

    async def _finish(self, delivery: Delivery, settling: Awaitable[None]) -> None:
        """Acks, naks or terminates `delivery` (`settling`): from then on it is not unsettled,
        whether NATS takes it or not (a message whose ack is lost comes back all the same)."""
        self._unsettled.pop(id(delivery), None)
        await self._quietly(settling)

    async def _quietly(self, settle: Awaitable[None]) -> None:
        try:
            await settle
        except Exception:  # the broker redelivers an unsettled message
            self._metrics.ack_failures.inc()
