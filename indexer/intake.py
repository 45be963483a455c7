"""From NATS messages to bulk items and back: a message is acked once all its events are done.

`Intake.handle()` takes one delivered message (through the `Delivery` port, so tests
use fakes), turns each event of its `EnrichedBatch` into a bulk item and settles the
message when the last item is done: ack, or nak when a dead letter could not be
published. Undecodable messages, batches of no events and messages delivered too often go
to the DLQ whole and are terminated. A dead letter NATS refuses for good (too large, a 400
from the DLQ stream) is logged as an error and counted, not tried again: its message is
terminated, or for a rejected event acked with the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import DecodeError
from telemetry.v1 import event_pb2

from indexer import documents
from indexer.bulk import COLLISION, BulkItem, BulkWriter, render
from indexer.errors import DeadLetterRefusedError, DocumentError
from indexer.metrics import (
    DLQ_EMPTY_BATCH,
    DLQ_MAX_DELIVERIES,
    DLQ_REJECTED,
    DLQ_UNDECODABLE,
    SETTLED_ACKED,
    SETTLED_NAKKED,
    SETTLED_TERMED,
    Metrics,
)
from indexer.outcomes import Outcome
from pipeline import logs, subjects, tracing

log = logging.getLogger(__name__)

NAK_DELAY_S = 5.0  # when a dead letter could not be published
RELEASE_DELAY_S = 0.0  # messages given back on stop: for another replica, or the next start
EVENT_SCHEMA = "telemetry.v1.EnrichedEvent"  # payload of a dead letter for one rejected event
# While the DLQ cannot be published to, every message and redelivery that needs a dead letter
# fails again: one warning this often.
DLQ_FAILURE_LOG_INTERVAL_S = 30.0
# Dead letters come in runs (a poison producer, a replay failing again): one warning this
# often. Each is in the DLQ stream itself, with its reason; the line only points there.
DEAD_LETTER_LOG_INTERVAL_S = 30.0


def _dead_letter_id(delivery: Delivery) -> str:
    """The id of the dead letters of a message (that of one of its events adds the event's
    position): its stream sequence and its own Nats-Msg-Id, or the digest of its bytes when it
    has none. The same on every redelivery, so a dead letter published again is dropped as a
    duplicate. The sequence alone would not do: TELEMETRY_ENRICHED made anew (the stream
    repair does it) numbers its messages from 1 again, and within the duplicate window the DLQ
    would drop a new message's dead letter as an earlier one's, the message settled all the
    same and its dead letter lost."""
    return subjects.dead_letter_id(
        stream_seq=delivery.stream_seq,
        msg_id=delivery.headers.get(subjects.MSG_ID_HEADER, ""),
        data=delivery.data,
    )


def _dlq_label(reason: str) -> str:
    """The indexer_dlq_total label of a rejected event: event_id_collision for another event
    under a stored id, rejected for one OpenSearch refused or that is no document."""
    return COLLISION if reason.startswith(f"{COLLISION}:") else DLQ_REJECTED


class Delivery(Protocol):
    """One delivered JetStream message."""

    @property
    def data(self) -> bytes: ...

    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def deliveries(self) -> int: ...

    @property
    def stream_seq(self) -> int:
        """The message's sequence in the enriched stream (the same on every redelivery)."""
        ...

    @property
    def msg_id(self) -> str:
        """`<stream>:<sequence>`, for logs (not for dead letters' ids: a stream made anew
        numbers its messages from 1 again)."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay_s: float) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


class DeadLetters(Protocol):
    """Publishes what the indexer gives up on to the DLQ stream."""

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
        """True when the DLQ already had it (dead-lettered before, by an earlier delivery).
        Raises DeadLetterRefusedError when NATS refuses it for good; any other error means it
        may be taken later.

        `msg_id` names it in the DLQ's duplicate window; `source_seq` is the sequence of the
        message it came from in the enriched stream (Telemetry-Dlq-Source-Seq).
        """
        ...


@dataclass(eq=False, slots=True)
class _Message:
    """A message being indexed: how many of its events are still open, and their outcomes."""

    intake: Intake
    delivery: Delivery
    events: Sequence[event_pb2.EnrichedEvent]
    remaining: int
    created: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)

    def done(self, item: BulkItem, outcome: Outcome, reason: str) -> Awaitable[None] | None:
        """The bulk writer's callback: one event is done; the last one settles the message."""
        if outcome is Outcome.CREATED:
            self.created += 1
        elif outcome is Outcome.DUPLICATE:
            self.duplicates += 1
        else:
            self.rejected.append((item.tag, reason))
        self.remaining -= 1
        if self.remaining:
            return None
        return self.intake._settle(self)


class Intake:
    """Feeds delivered messages to a `BulkWriter` and settles them."""

    def __init__(
        self,
        writer: BulkWriter,
        dead_letters: DeadLetters,
        *,
        index_prefix: str,
        max_deliveries: int,
        dated_window: documents.DatedWindow = documents.DEFAULT_WINDOW,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
        dlq_failure_log: logs.Throttle | None = None,
        dead_letter_log: logs.Throttle | None = None,
    ) -> None:
        """`dlq_failure_log` paces the warnings about dead letters not published (default:
        one per DLQ_FAILURE_LOG_INTERVAL_S), `dead_letter_log` those about messages
        dead-lettered (one per DEAD_LETTER_LOG_INTERVAL_S)."""
        self._tracing = tracer or tracing.Tracing.disabled()
        self._writer = writer
        self._dead_letters = dead_letters
        self._prefix = index_prefix
        self._window = dated_window
        self._max_deliveries = max_deliveries
        self._metrics = metrics or Metrics()
        self._counted = {
            outcome: self._metrics.documents.labels(outcome=outcome.value)
            for outcome in Outcome
            if outcome.done
        }
        self._dlq_failure_log = dlq_failure_log or logs.Throttle(DLQ_FAILURE_LOG_INTERVAL_S)
        self._dead_letter_log = dead_letter_log or logs.Throttle(DEAD_LETTER_LOG_INTERVAL_S)
        self._open: set[_Message] = set()
        # Fetched together, not handed to handle() yet (it waits while every bulk slot is
        # busy): touched too, by identity, or JetStream would redeliver them meanwhile.
        self._waiting: dict[int, Delivery] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_progress(self) -> int:
        """Messages received and not yet settled."""
        return len(self._open) + len(self._waiting)

    def received(self, deliveries: Sequence[Delivery]) -> None:
        """Deliveries fetched together, about to be handed to handle() one by one: until
        each is, touch() tells JetStream about it too."""
        for delivery in deliveries:
            self._waiting[id(delivery)] = delivery
        self._count()

    async def wait_idle(self) -> None:
        """Returns once every received message is settled."""
        await self._idle.wait()

    async def release_waiting(self) -> int:
        """Naks the fetched messages not handed to handle() yet, for redelivery at once.

        Once fetching has ended (a stop, or an error it ended on): nothing else would take
        them, and JetStream would otherwise hold them until their ack wait runs out, or for
        ever, touch() keeping them in progress. Returns how many.
        """
        waiting = list(self._waiting.values())
        self._waiting.clear()
        self._count()
        await self._release(waiting)
        return len(waiting)

    async def release_unsettled(self) -> int:
        """Naks every message received and not settled, for redelivery at once.

        Only once nothing can write or settle them any more (the writer closed): a message
        nak'd while its events may still be written would then be acked too, racing its
        redelivery to another replica. Its documents already written answer 409 on the
        redelivery. Returns how many.
        """
        unsettled = [message.delivery for message in self._open]
        unsettled.extend(self._waiting.values())
        self._open.clear()
        self._waiting.clear()
        self._count()
        self._idle.set()
        await self._release(unsettled)
        return len(unsettled)

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await self._quietly(delivery.nak(RELEASE_DELAY_S), SETTLED_NAKKED)

    async def touch(self) -> None:
        """Tells JetStream the unsettled messages are still being worked on."""
        unsettled = [message.delivery for message in self._open]
        for delivery in [*unsettled, *self._waiting.values()]:
            try:
                await delivery.in_progress()
            except Exception as err:  # NATS away: the message may be redelivered, which is safe
                log.debug("in_progress failed: %s", err)

    async def handle(self, delivery: Delivery) -> None:
        """Processes one message; returns once its events are queued (not yet written)."""
        self._waiting.pop(id(delivery), None)
        try:
            await self._handle(delivery)
        finally:
            self._count()  # settled, or open now instead of waiting

    async def _handle(self, delivery: Delivery) -> None:
        if delivery.deliveries > self._max_deliveries:
            reason = f"delivered {delivery.deliveries} times, more than {self._max_deliveries}"
            await self._give_up(delivery, reason, DLQ_MAX_DELIVERIES)
            return
        try:
            batch = event_pb2.EnrichedBatch.FromString(delivery.data)
        except DecodeError as err:
            await self._give_up(delivery, f"not an EnrichedBatch: {err}", DLQ_UNDECODABLE)
            return
        events = batch.events
        if not events:
            # The enricher never publishes one (it dead-letters a raw batch of no events):
            # these are the bytes of something else that happened to parse, or none at all.
            reason = "an EnrichedBatch of no events (the enricher publishes none)"
            await self._give_up(delivery, reason, DLQ_EMPTY_BATCH)
            return
        message = _Message(self, delivery, events, len(events))
        link = self._tracing.incoming_link(delivery.headers)
        done = message.done
        prefix = self._prefix
        window = self._window
        placed_document = documents.placed_document
        items: list[BulkItem] = []
        for position, event in enumerate(events):
            try:
                index, doc = placed_document(event, prefix=prefix, window=window)
            except DocumentError as err:
                # Not a document at all: dead-lettered with the others when the message settles.
                message.rejected.append((position, str(err)))
                message.remaining -= 1
                continue
            payload = render(index=index, doc_id=doc["event_id"], source=doc)
            items.append(BulkItem(payload, done, position, link))
        # Open from here on, not before: a message whose items could not be made (an error
        # the fetch loop ends on) is then not held for ever, but redelivered after ack_wait.
        self._track(message)
        if items:
            await self._writer.add_all(items)
        else:  # every event was unusable: nothing to write
            await self._settle(message)

    async def _give_up(self, delivery: Delivery, reason: str, label: str) -> None:
        try:
            again = await self._dead_letters.publish(
                reason=f"{label}: {reason}",  # as the enricher's: the kind first
                data=delivery.data,
                subject=delivery.subject,
                headers=delivery.headers,
                deliveries=delivery.deliveries,
                msg_id=_dead_letter_id(delivery),
                source_seq=delivery.stream_seq,
            )
        except DeadLetterRefusedError as err:
            # Refused for good: nak'd, the message would come back and be refused again for
            # ever, holding an ack-pending slot.
            self._log_refused("message dropped", delivery, err, reason=label)
            self._metrics.dlq_refused.inc()
            await self._quietly(delivery.term(), SETTLED_TERMED)
            return
        except Exception as err:
            self._dlq_failed(delivery, err)
            await self._quietly(delivery.nak(NAK_DELAY_S), SETTLED_NAKKED)
            return
        self._log_dead_letter(delivery, label)
        if not again:
            self._metrics.dlq.labels(reason=label).inc()
        await self._quietly(delivery.term(), SETTLED_TERMED)

    def _log_refused(
        self,
        what: str,
        delivery: Delivery,
        err: DeadLetterRefusedError,
        *,
        reason: str,
        position: int | None = None,
    ) -> None:
        """Logs a message or event dropped because NATS refused its dead letter for good: an
        error, as it is lost and should never be (something makes dead letters the DLQ cannot
        take). `position` is a rejected event's in its batch."""
        at = {} if position is None else {"position": position}
        log.error(
            "%s: its dead letter was refused: %s",
            what,
            err,
            extra={
                "reason": reason,
                "subject": delivery.subject,
                "message_id": delivery.msg_id,
                "deliveries": delivery.deliveries,
                **at,
                **tracing.trace_id_of(delivery.headers),
            },
        )

    def _log_dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Logs a message dead-lettered (one line per interval, with this one's details and
        how many were left out: each is in the DLQ with its reason, and counted)."""
        about = {"reason": reason, "subject": delivery.subject, "message_id": delivery.msg_id}
        logs.warn_paced(
            log,
            self._dead_letter_log,
            "message dead-lettered",
            what="more dead-lettered",
            extra={
                **about,
                "stream_sequence": delivery.stream_seq,
                "deliveries": delivery.deliveries,
                **tracing.trace_id_of(delivery.headers),
            },
        )

    def _dlq_failed(self, delivery: Delivery, err: Exception) -> None:
        """Logs a dead letter not published, its message nak'd (one line per interval)."""
        held_back = self._dlq_failure_log.admit()
        if held_back is not None:
            log.warning(
                "dead letter not published, message left for redelivery: %s%s",
                err,
                logs.since_last_line(held_back),
                extra={
                    "subject": delivery.subject,
                    "message_id": delivery.msg_id,
                    "deliveries": delivery.deliveries,
                    "held_back": held_back,
                },
            )

    def _track(self, message: _Message) -> None:
        self._open.add(message)
        self._idle.clear()
        self._count()

    def _count(self) -> None:
        """indexer_messages_in_progress: open messages and those waiting to be handed over."""
        self._metrics.messages_in_progress.set(self.in_progress)

    async def _settle(self, message: _Message) -> None:
        """Dead-letters the message's rejected events, then acks it (naks it if the DLQ failed).

        The first dead letter that fails stops the others: the message is nak'd whatever
        follows, and each publish more could wait its whole timeout, holding the writer's
        answer to the other messages. The redelivery publishes them all again; JetStream
        drops those it has by their message ids.

        A dead letter NATS refuses for good does not stop the others, and the message is
        settled as if it had been stored: trying again cannot help. Its event is logged as an
        error when the message is not nak'd, and counted with the ack (a message nak'd comes
        back and its event is refused again then).
        """
        dlq_failed = False
        refused: list[tuple[int, str, DeadLetterRefusedError]] = []  # (position, reason, error)
        delivery = message.delivery
        letter_id = _dead_letter_id(delivery) if message.rejected else ""
        for position, reason in message.rejected:
            event = message.events[position]
            try:
                again = await self._dead_letters.publish(
                    reason=reason,
                    data=event.SerializeToString(),
                    subject=delivery.subject,
                    headers={**delivery.headers, subjects.SCHEMA_HEADER: EVENT_SCHEMA},
                    deliveries=delivery.deliveries,
                    # By position: two rejected events may share an id (both empty, say).
                    msg_id=f"{letter_id}:{position}",
                    source_seq=delivery.stream_seq,
                )
            except DeadLetterRefusedError as err:  # the same on every delivery: given up
                refused.append((position, reason, err))
            except Exception as err:  # NATS away: nak the message, the event comes back
                self._dlq_failed(delivery, err)
                dlq_failed = True
                break
            else:  # counted once, not again for a redelivery (after a DLQ failure, say)
                if not again:
                    self._metrics.dlq.labels(reason=_dlq_label(reason)).inc()
                    self._counted[Outcome.REJECTED].inc()
        self._open.discard(message)
        self._count()
        if not self._open:
            self._idle.set()
        if dlq_failed:
            await self._quietly(delivery.nak(NAK_DELAY_S), SETTLED_NAKKED)
            return
        for position, reason, refusal in refused:
            self._log_refused(
                "rejected event dropped",
                delivery,
                refusal,
                reason=_dlq_label(reason),
                position=position,
            )
        # Written documents, and events whose dead letter was refused, are counted with the ack
        # that ends their message: a message nak'd or not acked comes back, and they are
        # counted then (the documents as duplicates), not twice.
        if await self._quietly(delivery.ack(), SETTLED_ACKED):
            if message.created:
                self._counted[Outcome.CREATED].inc(message.created)
            if message.duplicates:
                self._counted[Outcome.DUPLICATE].inc(message.duplicates)
            if refused:
                self._metrics.dlq_refused.inc(len(refused))
                self._counted[Outcome.REJECTED].inc(len(refused))

    async def _quietly(self, settling: Awaitable[None], label: str) -> bool:
        """Settles a message; False when NATS did not take it (the message comes back)."""
        try:
            await settling
        except Exception as err:  # NATS away: JetStream redelivers, documents answer 409
            log.debug("message not %s: %s", label, err)
            return False
        self._metrics.messages.labels(outcome=label).inc()
        return True
