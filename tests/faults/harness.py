"""The fault harness: a load generator that remembers what got a 202, and a checker.

The load generator runs in a thread of its own (with its own event loop), so a test
can inject faults with plain blocking calls while traffic flows. Every event has a
fresh id; an id counts as accepted only when the gateway answered 202 for its batch.
A 429 or 503 is retried with the same batch, after the Retry-After the gateway asked
for, up to a bound; a connection error (the gateway is gone) is retried the same way,
and a batch that never got its 202 is not accepted (it may still be indexed: once, that is
neither lost nor duplicated; twice, it is duplicated).

The checker waits (bounded) until OpenSearch holds every accepted id, then counts the
documents of each id under the test's index prefix: lost = accepted ids with no
document, duplicated = ids the load sent (accepted or not) with more than one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from tests.procs import WRITE_KEY

BATCH_SIZE = 10
CONCURRENCY = 8
MAX_RETRY_WAIT_S = 90.0  # a batch is given up after this long without its 202
MAX_RETRY_AFTER_S = 5.0
REQUEST_TIMEOUT_S = 30.0
MAX_PENDING_BATCHES = 20_000  # open loop: batches under way (sent or waiting to retry)
SETTLE_TIMEOUT_S = 180.0
PAGE = 1000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_batch(size: int, tag: str) -> list[dict[str, Any]]:
    """`size` valid events with fresh ids, as the Swift client sends them."""
    session = f"sess-{uuid.uuid4().hex[:8]}"
    return [
        {
            "event_id": str(uuid.uuid4()),
            "session_id": session,
            "user_id": f"user-{tag}",
            "event_name": "screen_view",
            "client_timestamp": _now(),
            "app_version": "3.1.0",
            "device_os": "iOS 17.4",
            "metadata": {"screen": "home", "fault": tag},
        }
        for _ in range(size)
    ]


class Http1:
    """A lean HTTP/1.1 keep-alive connection for POSTing JSON (the load generator's own
    client: a general one costs more CPU per request than the gateway under test)."""

    def __init__(self, base_url: Callable[[], str]) -> None:
        self._base_url = base_url
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, dict[str, str], bytes]:
        """One request; raises OSError/EOFError/ValueError when the connection fails."""
        if self._writer is None:
            parts = urllib.parse.urlsplit(self._base_url())
            self._reader, self._writer = await asyncio.open_connection(parts.hostname, parts.port)
        assert self._reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: loadgen\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        await self._writer.drain()
        status_line = await self._reader.readline()
        if not status_line:
            raise EOFError("connection closed")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        answer = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, answer

    def close(self) -> None:
        """Drops the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class LoadResult:
    """What the load generator saw."""

    accepted: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)  # the ids of every batch offered, accepted or not
    offered_batches: int = 0
    accepted_batches: int = 0
    given_up_batches: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    retry_after_missing: int = 0

    @property
    def count_503(self) -> int:
        """503 answers seen."""
        return self.statuses["503"]

    @property
    def count_429(self) -> int:
        """429 answers seen."""
        return self.statuses["429"]


class LoadGenerator:
    """Sends batches to the gateway from `concurrency` workers until stopped.

    `rate_batches_s` bounds the offered load (0: as fast as the gateway answers);
    `max_batches` stops the load by itself after that many new batches.
    """

    def __init__(
        self,
        base_url: Callable[[], str],
        *,
        tag: str,
        batch_size: int = BATCH_SIZE,
        concurrency: int = CONCURRENCY,
        rate_batches_s: float = 0.0,
        max_batches: int = 0,
        write_key: str = WRITE_KEY,
        give_up_after_s: float = MAX_RETRY_WAIT_S,
    ) -> None:
        self._base_url = base_url
        self.tag = tag
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.rate_batches_s = rate_batches_s
        self.max_batches = max_batches
        self.write_key = write_key
        self.give_up_after_s = give_up_after_s
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._issued = 0
        self._started = 0.0

    def start(self) -> LoadGenerator:
        """Starts the load in a background thread."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def accepted_count(self) -> int:
        """Events accepted so far."""
        with self._lock:
            return len(self.result.accepted)

    def wait_accepted(self, count: int, timeout_s: float = 120.0) -> None:
        """Blocks until at least `count` events were accepted."""
        deadline = time.monotonic() + timeout_s
        while self.accepted_count() < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {self.accepted_count()} of {count} events accepted in {timeout_s} s; "
                    f"statuses {dict(self.result.statuses)}"
                )
            time.sleep(0.1)

    def stop(self) -> LoadResult:
        """Stops offering new batches, lets the ones under way finish, returns the result."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=MAX_RETRY_WAIT_S + REQUEST_TIMEOUT_S + 30)
            assert not self._thread.is_alive(), "the load generator did not stop"
        return self.result

    def run_until_done(self) -> LoadResult:
        """Waits until `max_batches` were sent (and answered), returns the result."""
        assert self.max_batches > 0
        if self._thread is not None:
            self._thread.join()
        return self.result

    def _next_slot(self) -> float | None:
        """The moment the next batch is due, or None when the load is over."""
        with self._lock:
            if self._stop.is_set() or (self.max_batches and self._issued >= self.max_batches):
                return None
            self._issued += 1
            number = self._issued
        if self.rate_batches_s > 0:
            return self._started + number / self.rate_batches_s
        return 0.0

    async def _main(self) -> None:
        self._started = time.monotonic()
        pool: asyncio.Queue[Http1] = asyncio.Queue()
        for _ in range(self.concurrency):
            pool.put_nowait(Http1(self._base_url))
        try:
            if self.rate_batches_s > 0:
                await self._open_loop(pool)
            else:
                await asyncio.gather(*(self._closed_loop(pool) for _ in range(self.concurrency)))
        finally:
            while not pool.empty():
                pool.get_nowait().close()

    async def _closed_loop(self, pool: asyncio.Queue[Http1]) -> None:
        """One client: a new batch as soon as the last one is answered (or given up)."""
        while self._next_slot() is not None:
            await self._send(pool, make_batch(self.batch_size, self.tag))

    async def _open_loop(self, pool: asyncio.Queue[Http1]) -> None:
        """New batches arrive at the set rate whatever the answers: a batch waiting out a
        Retry-After holds no connection and does not slow the arrivals."""
        pending: set[asyncio.Task[None]] = set()
        while (due := self._next_slot()) is not None:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while len(pending) >= MAX_PENDING_BATCHES:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(self._send(pool, make_batch(self.batch_size, self.tag)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def _send(self, pool: asyncio.Queue[Http1], batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps(batch)
        with self._lock:
            self.result.offered_batches += 1
            self.result.sent.update(event["event_id"] for event in batch)
        deadline = time.monotonic() + self.give_up_after_s
        while True:
            wait = 0.5
            connection = await pool.get()
            try:
                status, headers, answer = await asyncio.wait_for(
                    connection.post("/v1/track", body, self.write_key), REQUEST_TIMEOUT_S
                )
            except (OSError, EOFError, TimeoutError, ValueError) as err:
                connection.close()
                pool.put_nowait(connection)
                self._count(f"conn:{type(err).__name__}")
            else:
                pool.put_nowait(connection)
                self._count(str(status))
                if status == 202:
                    receipt = orjson.loads(answer)
                    rejected = {r["event_id"] for r in receipt["rejected"]}
                    with self._lock:
                        self.result.accepted.update(
                            e["event_id"] for e in batch if e["event_id"] not in rejected
                        )
                        self.result.accepted_batches += 1
                    return
                if status not in (429, 503):
                    return  # not retryable: not accepted
                retry_after = headers.get("retry-after")
                if retry_after is None:
                    with self._lock:
                        self.result.retry_after_missing += 1
                else:
                    wait = min(float(retry_after), MAX_RETRY_AFTER_S) or 0.1
            if time.monotonic() + wait > deadline:
                with self._lock:
                    self.result.given_up_batches += 1
                return
            await asyncio.sleep(wait)

    def _count(self, status: str) -> None:
        with self._lock:
            self.result.statuses[status] += 1


def post_batch(base_url: str, *, tag: str, write_key: str = WRITE_KEY) -> httpx.Response:
    """One batch, one answer: no retry."""
    return httpx.post(
        f"{base_url}/v1/track",
        content=orjson.dumps(make_batch(BATCH_SIZE, tag)),
        headers={"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT_S,
    )


@dataclass
class Verdict:
    """How the accepted ids came out in OpenSearch, and which ids sent (accepted or not)
    were indexed more than once."""

    accepted: int
    found: int
    lost: list[str]
    duplicated: dict[str, int]
    documents: int


def document_counts(opensearch_url: str, prefix: str) -> dict[str, int]:
    """Documents per event_id over every index under `prefix` (a composite aggregation)."""
    pattern = f"{prefix}*"
    httpx.post(
        f"{opensearch_url}/{pattern}/_refresh?ignore_unavailable=true&allow_no_indices=true",
        timeout=60,
    )
    counts: dict[str, int] = {}
    after: dict[str, str] | None = None
    while True:
        composite: dict[str, Any] = {
            "size": PAGE,
            "sources": [{"id": {"terms": {"field": "event_id"}}}],
        }
        if after is not None:
            composite["after"] = after
        response = httpx.post(
            f"{opensearch_url}/{pattern}/_search"
            "?request_cache=false&ignore_unavailable=true&allow_no_indices=true",
            json={"size": 0, "aggs": {"ids": {"composite": composite}}},
            timeout=60,
        )
        response.raise_for_status()
        aggs = response.json().get("aggregations")
        if aggs is None:
            return counts
        buckets = aggs["ids"]["buckets"]
        for bucket in buckets:
            counts[bucket["key"]["id"]] = bucket["doc_count"]
        after = aggs["ids"].get("after_key")
        if not buckets or after is None:
            return counts


def settle(
    opensearch_url: str,
    prefix: str,
    accepted: set[str],
    timeout_s: float = SETTLE_TIMEOUT_S,
    *,
    sent: set[str] | frozenset[str] = frozenset(),
) -> Verdict:
    """Waits (bounded) until every accepted id is searchable, then counts; an id of
    `accepted` or `sent` (those whose batch got no 202 too) found more than once is
    duplicated. Ids the test did not send are not judged: a prefix may be shared by tests
    that send the same id to two days' indices on purpose."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            counts = document_counts(opensearch_url, prefix)
        except httpx.HTTPError:
            counts = {}
        missing = accepted - counts.keys()
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return Verdict(
        accepted=len(accepted),
        found=len(accepted & counts.keys()),
        lost=sorted(missing),
        duplicated={k: v for k, v in counts.items() if v > 1 and (k in accepted or k in sent)},
        documents=sum(counts.values()),
    )


@dataclass
class Report:
    """One line of the fault table printed at the end of the run."""

    fault: str
    accepted: int
    lost: int
    duplicated: int
    extra: str = ""


REPORTS: list[Report] = []


def check(
    fault: str,
    result: LoadResult,
    opensearch_url: str,
    prefix: str,
    *,
    extra: str = "",
) -> Verdict:
    """Settles, records the counts for the summary, prints them, asserts the promise."""
    verdict = settle(opensearch_url, prefix, result.accepted, sent=result.sent)
    line = (
        f"[{fault}] accepted={verdict.accepted} found={verdict.found} "
        f"lost={len(verdict.lost)} duplicated={len(verdict.duplicated)} "
        f"documents={verdict.documents} batches offered={result.offered_batches} "
        f"accepted={result.accepted_batches} given_up={result.given_up_batches} "
        f"statuses={dict(result.statuses)} {extra}"
    )
    print(line)
    REPORTS.append(
        Report(fault, verdict.accepted, len(verdict.lost), len(verdict.duplicated), extra)
    )
    assert verdict.accepted > 0, line
    assert verdict.lost == [], f"{line}\nlost ids (first 10): {verdict.lost[:10]}"
    assert verdict.duplicated == {}, f"{line}\nduplicated: {list(verdict.duplicated.items())[:10]}"
    return verdict


class BulkAnswerHolder:
    """A TCP proxy to OpenSearch, in a thread of its own, that can keep one `_bulk` answer
    from its client: OpenSearch has written the documents, the client never learns it.

    `arm()` picks the next connection that sends a `_bulk` request; when OpenSearch's answer to
    it arrives, the proxy keeps it (and everything after it on that connection) and sets
    `held`. Every other connection, and that one's requests, pass through untouched.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 9200)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._armed = False
        self._holding: object | None = None  # the connection whose answer is kept
        self.held = threading.Event()
        self.held_answer = b""
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BulkAnswerHolder:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def arm(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_armed", True)

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        connection = object()

        async def requests() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if self._armed and b"_bulk" in data:
                        self._armed = False
                        self._holding = connection
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def answers() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await up_reader.read(65536):
                    if self._holding is connection:
                        self.held_answer += data
                        self.held.set()
                        continue
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(requests(), answers())
