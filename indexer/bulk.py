"""Bulk writing: documents grouped by count and bytes, sent on size or timer, several in flight.

`BulkWriter` knows nothing of NATS: it takes `BulkItem`s (a pre-rendered action and
source) and calls each item's `on_done` once with its final outcome. Retryable
failures are sent again after a capped exponential backoff, for as long as it takes;
while OpenSearch is away the writer reports itself unhealthy so intake stops fetching.
Items answered with an error that is retried (the cluster's state: a 403, an index that
cannot be created) hold no intake: they are logged (at most a line per 30 s) and counted
in `indexer_documents_awaiting_retry`.
A whole request refused as wrong (400, 413) is sent again one document per request; one
refused again and again with a retryable status that may be about its content (not 401,
404, 407, 408, 429, 502, 503, 504, nor no answer) is sent again in halves, down to the one
document it is about, which is retried alone. A request of one document refused so (split
out, or sent alone in the first place) never holds intake, and releases it: something
answered about that document, and the others may well be written.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from indexer.errors import SearchRequestError
from indexer.metrics import DLQ_EVENT_ID_COLLISION, Metrics
from indexer.outcomes import Outcome, backoff_s, failure_outcome, item_outcome, item_reason
from pipeline import logs, tracing
from pipeline.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ItemResult(NamedTuple):
    """OpenSearch's answer for one bulk item."""

    status: int
    error: Mapping[str, Any] | None = None


class BulkPort(Protocol):
    """Sends one `_bulk` body; answers one result per item, in order. Reads stored documents'
    fields back (those a 409 was answered for)."""

    async def bulk(self, body: bytes) -> Sequence[ItemResult]: ...

    async def sources(
        self, keys: Sequence[tuple[str, str]], fields: Sequence[str]
    ) -> Sequence[Mapping[str, Any] | None]:
        """`fields` of the documents at (index, id) `keys`, in order; None for one not found."""
        ...


# Told once of an item's final outcome. It may do its work at once and return None, or
# return an awaitable the writer awaits before it goes on (e.g. settling a message).
DoneCallback = Callable[["BulkItem", Outcome, str], Awaitable[None] | None]


@dataclass(eq=False, slots=True)
class BulkItem:
    """One document to create: its two NDJSON lines and who to tell when it is done."""

    payload: bytes
    on_done: DoneCallback
    tag: Any = None  # the caller's, e.g. where the document came from
    link: tracing.SpanContext | None = None  # the trace of the message the document came in
    attempts: int = 0
    limit: int = 0  # the most documents a request carrying it may hold; 0: no limit of its own
    refusals: int = 0  # whole requests that carried it refused in a row with a retryable status
    retrying: bool = False  # failed once at least, no final outcome yet (counted as awaiting)


_ACTION_HEADS: dict[str, bytes] = {}  # index name -> the action line up to the `_id` value


def render(*, index: str, doc_id: str, source: Mapping[str, Any]) -> bytes:
    """The NDJSON lines of a `create` action."""
    head = _ACTION_HEADS.get(index)
    if head is None:
        head = b'{"create":{"_index":' + orjson.dumps(index) + b',"_id":'
        if len(_ACTION_HEADS) >= 1024:  # one per daily index in practice
            _ACTION_HEADS.clear()
        _ACTION_HEADS[index] = head
    return b"".join((head, orjson.dumps(doc_id), b"}}\n", orjson.dumps(source), b"\n"))


def _collision(index: str, doc_id: str, stored: Mapping[str, Any]) -> str:
    """The dead-letter reason of an event whose id another event has in `index`."""
    who = ", ".join(f"{name} {str(stored.get(name, ''))[:80]!r}" for name in CLIENT_FIELDS[:3])
    return (
        f"{COLLISION}: {index} holds event_id {doc_id[:128]!r} for another event ({who});"
        " event ids must be unique across apps and users"
    )


def _index_of(item: BulkItem) -> str:
    """The index named in an item's action line."""
    try:
        return _parsed(item)[0]
    except (ValueError, KeyError, TypeError, StopIteration):
        return ""


def _parsed(item: BulkItem) -> tuple[str, str, dict[str, Any]]:
    """The index, id and document of an item's two lines."""
    head, _, source = item.payload.partition(b"\n")
    action = next(iter(orjson.loads(head).values()))
    return str(action["_index"]), str(action["_id"]), orjson.loads(source)


# Fields the same in every copy of one event (a retry, a redelivery, a replay), whatever the
# enricher added each time, and plain strings (a time's text could change with a new indexer).
CLIENT_FIELDS = ("app_id", "user_id", "session_id", "event_name")
# The first word of the dead-letter reason of another event under a stored event_id, and
# its indexer_dlq_total label.
COLLISION = DLQ_EVENT_ID_COLLISION


_OUTCOMES = {200: Outcome.CREATED, 201: Outcome.CREATED, 409: Outcome.DUPLICATE}

# A whole request refused this many times in a row with a retryable status that may be about
# its content (a proxy answering 403 or 500 for some text, say) is sent again in two halves,
# and so on down to the one document it is about, retried alone for as long as it takes.
SPLIT_AFTER_REFUSALS = 3
# Statuses that say OpenSearch is away, overloaded or not ours to use (credentials, address),
# whatever the request: never split for.
_AVAILABILITY_STATUSES = frozenset({401, 404, 407, 408, 429, 502, 503, 504})
# Retries that hold no intake (and so show in no readiness) are logged at most this often.
RETRY_LOG_INTERVAL_S = 30.0


class BulkWriter:
    """Groups items into bulk requests and sees each item through to a final outcome."""

    def __init__(
        self,
        port: BulkPort,
        *,
        max_docs: int,
        max_bytes: int,
        flush_interval_s: float,
        concurrency: int,
        retry_base_s: float,
        retry_max_s: float,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        self._tracing = tracer or tracing.Tracing.disabled()
        self._port = port
        self._max_docs = max_docs
        self._max_bytes = max_bytes
        self._interval_s = flush_interval_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._metrics = metrics or Metrics()
        self._slots = asyncio.Semaphore(concurrency)
        self._buffer: list[BulkItem] = []
        self._buffer_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._failures = 0
        self._refused_log = logs.Throttle(RETRY_LOG_INTERVAL_S)
        self._item_retry_log = logs.Throttle(RETRY_LOG_INTERVAL_S)
        self._healthy = asyncio.Event()
        self._healthy.set()

    @property
    def healthy(self) -> bool:
        """False while OpenSearch fails whole requests with retryable errors."""
        return self._healthy.is_set()

    async def wait_healthy(self) -> None:
        """Returns once OpenSearch answers again."""
        await self._healthy.wait()

    def start(self) -> None:
        """Starts the flush timer (idempotent)."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._tick(), name="bulk-flush-timer")

    async def add(self, item: BulkItem) -> None:
        """Queues an item; sends a request when a size limit is reached (may wait for a slot)."""
        self._buffer.append(item)
        self._buffer_bytes += len(item.payload)
        if len(self._buffer) >= self._max_docs or self._buffer_bytes >= self._max_bytes:
            await self.flush()

    async def add_all(self, items: Sequence[BulkItem]) -> None:
        """Queues items in order, as `add` each would, with one check of the limits."""
        self._buffer.extend(items)
        self._buffer_bytes += sum(len(item.payload) for item in items)
        if len(self._buffer) >= self._max_docs or self._buffer_bytes >= self._max_bytes:
            await self.flush()

    async def flush(self) -> None:
        """Sends what is buffered now, waiting for a free in-flight slot if needed."""
        while self._buffer:
            await self._slots.acquire()
            batch = self._take()
            if not batch:
                self._slots.release()
                return
            self._spawn(self._send(batch))
            if self._buffer and self._buffer[0].limit:
                continue  # documents of a refused request: in small requests, all of them now
            if len(self._buffer) < self._max_docs and self._buffer_bytes < self._max_bytes:
                return

    async def drain(self) -> None:
        """Sends everything and waits until every item has its final outcome."""
        while self._buffer or self._tasks:
            await self.flush()
            if self._tasks:
                await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Stops the timer and abandons unfinished work (its messages stay un-acked)."""
        await cancel_and_wait(*(t for t in (self._timer, *self._tasks) if t is not None))
        self._timer = None
        self._tasks.clear()
        self._buffer.clear()
        self._buffer_bytes = 0
        self._metrics.awaiting_retry.set(0)  # abandoned: their messages come back

    def _take(self) -> list[BulkItem]:
        if not self._buffer:
            return []
        # Documents of a split request go with others of the same limit only.
        limit = self._buffer[0].limit
        most = min(limit, self._max_docs) if limit else self._max_docs
        count = 0
        size = 0
        for item in self._buffer:
            if item.limit != limit or count >= most:
                break
            if count and size + len(item.payload) > self._max_bytes:
                break
            count += 1
            size += len(item.payload)
        batch = self._buffer[:count]
        del self._buffer[:count]
        self._buffer_bytes -= size
        return batch

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if self._buffer:
                await self.flush()

    async def _send(self, batch: list[BulkItem]) -> None:
        if not self._tracing.enabled:
            await self._send_batch(batch, tracing.INVALID_SPAN)
            return
        # One span per bulk request, linked to the trace of every message it carries.
        contexts = {
            (item.link.trace_id, item.link.span_id): item.link
            for item in batch
            if item.link is not None
        }
        with self._tracing.span(
            "bulk",
            kind=tracing.SpanKind.CLIENT,
            # Its own trace, linked to its messages': a retry is spawned from inside the
            # failed request's span, and would otherwise be its child.
            parent=tracing.NEW_TRACE,
            links=[tracing.Link(context) for context in contexts.values()],
            attributes={
                "db.system": "opensearch",
                "db.operation.name": "bulk",
                "pipeline.documents": len(batch),
                "pipeline.messages": len(contexts),
            },
        ) as span:
            await self._send_batch(batch, span)

    async def _send_batch(self, batch: list[BulkItem], span: tracing.Span) -> None:
        body = b"".join(item.payload for item in batch)
        started = time.perf_counter()
        self._metrics.bulk_in_flight.inc()
        try:
            results = await self._port.bulk(body)
        except Exception as err:  # every failure is classified by outcomes.failure_outcome
            self._slots.release()
            tracing.failed(span, type(err).__name__)
            await self._request_failed(batch, err)
            return
        else:
            self._slots.release()
        finally:
            self._metrics.bulk_in_flight.dec()
            self._metrics.bulk_seconds.observe(time.perf_counter() - started)
        self._set_up()
        if len(results) != len(batch):
            log.warning(
                "bulk answered %d items for %d sent; sending again", len(results), len(batch)
            )
            self._retry(batch)
            return
        retry: list[BulkItem] = []
        conflicts: list[BulkItem] = []
        first_retry: ItemResult | None = None
        tally: dict[Outcome, int] = {}
        known, retry_, rejected = _OUTCOMES, Outcome.RETRY, Outcome.REJECTED
        duplicate = Outcome.DUPLICATE
        for item, (status, error) in zip(batch, results, strict=True):
            outcome = known.get(status) or item_outcome(status, error)
            tally[outcome] = tally.get(outcome, 0) + 1
            if outcome is retry_:
                if not retry:
                    first_retry = ItemResult(status, error)
                retry.append(item)
                continue
            if outcome is duplicate:
                conflicts.append(item)
                continue
            reason = item_reason(error) if outcome is rejected else ""
            if item.retrying:
                item.retrying = False
                self._metrics.awaiting_retry.dec()
            # _finish, inlined: this runs once per document.
            try:
                pending = item.on_done(item, outcome, reason)
                if pending is not None:
                    await pending
            except Exception:
                log.exception("bulk item callback failed")
        if conflicts:
            retry += await self._settle_conflicts(conflicts, tally)
        if span.is_recording():
            for outcome, count in tally.items():
                span.set_attribute(f"pipeline.documents.{outcome.value}", count)
        if Outcome.REJECTED in tally:
            # One line per request, not per document; the reasons travel with the dead letters.
            log.warning(
                "bulk request rejected documents; they go to the DLQ",
                extra={"rejected": tally[Outcome.REJECTED]},
            )
        if retry:
            if first_retry is not None:
                self._log_item_retries(retry[0], first_retry, len(retry))
            self._retry(retry)
        else:
            self._failures = 0

    async def _settle_conflicts(
        self, items: list[BulkItem], tally: dict[Outcome, int]
    ) -> list[BulkItem]:
        """Settles the items answered 409 (a document of that id is in that index); returns
        those to send again, and corrects `tally` (which counted them as duplicates).

        The stored document is read back: the same event (a retry, a redelivery, a replay:
        its client-set fields agree) is a duplicate, done; another event under the same id
        (two apps or users whose clients chose one event_id) is rejected, so it reaches the
        DLQ with the stored one named, instead of being dropped as a duplicate. When the
        documents cannot be read, or one is gone since (deleted), they are sent again.
        """
        parsed = [_parsed(item) for item in items]
        stored: Sequence[Mapping[str, Any] | None] = [None] * len(items)
        try:
            answer = await self._port.sources(
                [(index, doc_id) for index, doc_id, _ in parsed], CLIENT_FIELDS
            )
        except Exception as err:  # OpenSearch away since the bulk answer: ask again later
            log.warning("documents answered 409 not read back (%s); sending them again", err)
        else:
            if len(answer) == len(items):
                stored = answer
            else:
                log.warning(
                    "read back %d documents of %d; sending them again", len(answer), len(items)
                )
        again: list[BulkItem] = []
        for item, (index, doc_id, source), found in zip(items, parsed, stored, strict=True):
            if found is None:
                again.append(item)
                outcome = Outcome.RETRY
            elif all(found.get(name) == source.get(name) for name in CLIENT_FIELDS):
                await self._finish(item, Outcome.DUPLICATE, "")
                continue
            else:
                outcome = Outcome.REJECTED
                await self._finish(item, outcome, _collision(index, doc_id, found))
            tally[Outcome.DUPLICATE] -= 1
            tally[outcome] = tally.get(outcome, 0) + 1
        if not tally[Outcome.DUPLICATE]:
            del tally[Outcome.DUPLICATE]
        return again

    def _log_item_retries(self, item: BulkItem, result: ItemResult, count: int) -> None:
        """Items OpenSearch answered with an error that is retried (a state of the cluster
        someone must fix, or an overload): the request succeeded, so intake is not held and
        readiness stays ok; without this line they would be retried silently."""
        held_back = self._item_retry_log.admit()
        if held_back is None:
            return
        error = result.error or {}
        log.warning(
            "bulk items not written; retrying: %s %s (%d in this request)%s",
            result.status,
            item_reason(error) if error else "",
            count,
            logs.since_last_line(held_back, what="more requests with such items"),
            extra={
                "status": result.status,
                "error_type": str(error.get("type", "")),
                "index": _index_of(item),
                "documents": count,
                "held_back": held_back,
            },
        )

    async def _request_failed(self, batch: list[BulkItem], err: Exception) -> None:
        if failure_outcome(err) is Outcome.RETRY:
            status = getattr(err, "status", None)
            about_content = status is not None and status not in _AVAILABILITY_STATUSES
            if about_content and len(batch) == 1:
                # One document refused alone, however it came to be alone (split out, or the
                # only one in a timer's flush), says nothing of OpenSearch: it does not hold
                # intake for the others, nor keep it held once its request was split down.
                self._set_up()
                self._log_refused_alone(err)
            else:
                self._set_down(err)
            if about_content and len(batch) > 1:
                self._split_if_refused_again(batch, err)
            self._retry(batch)
            return
        # Refused as a whole (400, 413): OpenSearch answered, so it is up. After an outage,
        # retried requests may end here with nothing left in flight to resume intake.
        self._set_up()
        if len(batch) > 1:
            if isinstance(err, SearchRequestError) and err.status == 413:
                # Said once per request: every full request may be refused and split so.
                log.warning(
                    "bulk request too large for OpenSearch (413); sending its documents one"
                    " by one (INDEXER_BULK_MAX_BYTES above its http.max_content_length?)",
                    extra={
                        "documents": len(batch),
                        "bytes": sum(len(item.payload) for item in batch),
                    },
                )
            # A whole request refused: find the culprit by sending each document alone,
            # at once (ahead of what waits, as the request they were in was).
            for item in batch:
                item.limit = 1
            self._buffer[:0] = batch
            self._buffer_bytes += sum(len(item.payload) for item in batch)
            self._spawn(self.flush())
            return
        await self._finish(batch[0], Outcome.REJECTED, str(err))

    def _split_if_refused_again(self, batch: list[BulkItem], err: Exception) -> None:
        for item in batch:
            item.refusals += 1
        if min(item.refusals for item in batch) < SPLIT_AFTER_REFUSALS:
            return
        half = (len(batch) + 1) // 2
        for item in batch:
            item.limit = half
            item.refusals = 0
        log.warning(
            "bulk request refused %d times in a row; sending its documents in halves: %s",
            SPLIT_AFTER_REFUSALS,
            err,
            extra={"documents": len(batch), "per_request": half},
        )

    def _log_refused_alone(self, err: Exception) -> None:
        held_back = self._refused_log.admit()
        if held_back is not None:
            log.warning(
                "a document sent alone is refused with a retryable status; retrying it"
                " without holding intake: %s%s",
                err,
                logs.since_last_line(held_back, what="more refusals"),
            )

    async def _finish(self, item: BulkItem, outcome: Outcome, reason: str) -> None:
        if item.retrying:
            item.retrying = False
            self._metrics.awaiting_retry.dec()
        try:
            pending = item.on_done(item, outcome, reason)
            if pending is not None:
                await pending
        except Exception:
            log.exception("bulk item callback failed")

    def _retry(self, items: list[BulkItem]) -> None:
        self._failures += 1
        new = 0
        for item in items:
            if not item.retrying:
                item.retrying = True
                new += 1
        self._metrics.awaiting_retry.inc(new)
        delay = self.retry_delay_s(items) * random.uniform(0.8, 1.0)  # spread concurrent retries
        self._metrics.bulk_retries.inc(len(items))
        self._spawn(self._requeue(items, delay))

    def retry_delay_s(self, items: Sequence[BulkItem]) -> float:
        """The backoff before `items` go again: exponential in the requests that failed in a
        row, and in the items' own attempts, so an item refused again and again (a 429 while
        other requests succeed, which resets the first count) waits longer each time too."""
        tries = max(self._failures, 1 + max((item.attempts for item in items), default=0))
        return backoff_s(tries, base_s=self._retry_base_s, max_s=self._retry_max_s)

    async def _requeue(self, items: list[BulkItem], delay: float) -> None:
        await asyncio.sleep(delay)
        for item in items:
            item.attempts += 1
            await self.add(item)
        await self.flush()

    def _set_down(self, err: Exception) -> None:
        if self._healthy.is_set():
            log.warning("opensearch unavailable, holding intake: %s", err)
        self._healthy.clear()
        self._metrics.intake_held.set(1)

    def _set_up(self) -> None:
        if not self._healthy.is_set():
            log.info("opensearch answers again, resuming intake")
        self._healthy.set()
        self._metrics.intake_held.set(0)
