"""BulkWriter: sizing, timer, bounded concurrency, retries and request refusals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from indexer_fakes import FakeStore, ShortAnswerPort, parse_bulk

from indexer.bulk import BulkItem, BulkPort, BulkWriter, ItemResult, render
from indexer.errors import SearchRequestError, SearchUnavailableError
from indexer.metrics import Metrics
from indexer.outcomes import Outcome


class Recorder:
    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.reasons: dict[str, str] = {}
        self.all_done = asyncio.Event()
        self.expected = 0

    def item(self, doc_id: str, *, size: int = 10) -> BulkItem:
        self.expected += 1

        async def on_done(_: BulkItem, outcome: Outcome, reason: str) -> None:
            self.outcomes[doc_id] = outcome
            self.reasons[doc_id] = reason
            if len(self.outcomes) == self.expected:
                self.all_done.set()

        payload = render(index="t-x", doc_id=doc_id, source={"event_id": doc_id, "pad": "p" * size})
        return BulkItem(payload=payload, on_done=on_done)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5) -> None:
    """Lets the writer's tasks run until `condition` holds; fails past the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(0.001)


def refuse_first(refusals: dict[str, int], status: int) -> Callable[[dict[str, Any]], int | None]:
    """An item status: `status` for the first `refusals[id]` attempts of each listed id
    (counting down in `refusals`), success after them and for every other id."""

    def item_status(doc: dict[str, Any]) -> int | None:
        doc_id = str(doc["event_id"])
        if refusals.get(doc_id, 0):
            refusals[doc_id] -= 1
            return status
        return None

    return item_status


def writer(store: BulkPort, *, metrics: Metrics | None = None, **options: float) -> BulkWriter:
    settings: dict[str, float] = {
        "max_docs": 10,
        "max_bytes": 1_000_000,
        "flush_interval_s": 0.01,
        "concurrency": 2,
        "retry_base_s": 0.001,
        "retry_max_s": 0.01,
    }
    settings.update(options)
    return BulkWriter(
        store,
        max_docs=int(settings["max_docs"]),
        max_bytes=int(settings["max_bytes"]),
        flush_interval_s=settings["flush_interval_s"],
        concurrency=int(settings["concurrency"]),
        retry_base_s=settings["retry_base_s"],
        retry_max_s=settings["retry_max_s"],
        metrics=metrics,
    )


async def test_requests_are_sized_by_count() -> None:
    store, rec = FakeStore(), Recorder()
    bulk = writer(store, max_docs=10, flush_interval_s=60)
    for n in range(25):
        await bulk.add(rec.item(f"e{n}"))
    await bulk.drain()
    assert store.requests == [10, 10, 5]
    assert set(rec.outcomes.values()) == {Outcome.CREATED}


async def test_requests_are_sized_by_bytes() -> None:
    store, rec = FakeStore(), Recorder()
    bulk = writer(store, max_docs=1000, max_bytes=1000, flush_interval_s=60)
    for n in range(10):
        await bulk.add(rec.item(f"e{n}", size=300))
    await bulk.drain()
    assert max(store.requests) <= 3
    assert sum(store.requests) == 10


async def test_timer_flushes_a_partial_request() -> None:
    store, rec = FakeStore(), Recorder()
    bulk = writer(store, max_docs=100, flush_interval_s=0.01)
    bulk.start()
    await bulk.add(rec.item("lonely"))
    await asyncio.wait_for(rec.all_done.wait(), 5)
    assert rec.outcomes == {"lonely": Outcome.CREATED}
    await bulk.close()


async def test_in_flight_requests_are_bounded() -> None:
    store, rec = FakeStore(), Recorder()
    store.gate = asyncio.Event()
    bulk = writer(store, max_docs=1, concurrency=3, flush_interval_s=60)

    async def produce() -> None:
        for n in range(10):
            await bulk.add(rec.item(f"e{n}"))

    producer = asyncio.create_task(produce())
    await until(lambda: store.in_flight >= 3, "3 requests in flight")
    for _ in range(100):  # turns enough for a producer that is not held back to finish
        await asyncio.sleep(0)
    assert store.in_flight == 3
    assert not producer.done()  # add() waits for a free slot: backpressure
    store.gate.set()
    await producer
    await bulk.drain()
    assert store.max_in_flight == 3
    assert len(rec.outcomes) == 10


async def test_duplicates_are_done() -> None:
    store, rec = FakeStore(), Recorder()
    bulk = writer(store)
    await bulk.add(rec.item("e1"))
    await bulk.drain()
    again = Recorder()
    await bulk.add(again.item("e1"))
    await bulk.drain()
    assert again.outcomes == {"e1": Outcome.DUPLICATE}


async def test_retryable_items_are_retried_until_they_succeed() -> None:
    store, rec = FakeStore(), Recorder()
    failures = {"e1": 3, "e2": 1}

    def status(doc: dict[str, object]) -> int | None:
        left = failures.get(str(doc["event_id"]), 0)
        if left:
            failures[str(doc["event_id"])] = left - 1
            return 429 if doc["event_id"] == "e1" else 503
        return None

    store.item_status = status
    bulk = writer(store)
    for n in range(3):
        await bulk.add(rec.item(f"e{n}"))
    await bulk.drain()
    assert rec.outcomes == {n: Outcome.CREATED for n in ("e0", "e1", "e2")}
    assert len(store.docs) == 3


async def test_rejected_items_report_the_reason_and_others_are_indexed() -> None:
    store, rec = FakeStore(), Recorder()
    store.item_status = lambda doc: 400 if doc["event_id"] == "bad" else None
    bulk = writer(store)
    for doc_id in ("a", "bad", "b"):
        await bulk.add(rec.item(doc_id))
    await bulk.drain()
    assert rec.outcomes == {"a": Outcome.CREATED, "bad": Outcome.REJECTED, "b": Outcome.CREATED}
    assert rec.reasons["bad"] == "forced: status 400"


@pytest.mark.parametrize("error_type", ["validation_exception", "index_closed_exception"])
async def test_a_400_about_the_cluster_is_retried_not_dead_lettered(error_type: str) -> None:
    # E.g. the node's shard limit reached when the day's index is created: every event of
    # the day would otherwise go to the DLQ.
    store, rec = FakeStore(), Recorder()
    store.forced_type = error_type
    refusals = {"new-day": 2}
    store.item_status = refuse_first(refusals, 400)
    bulk = writer(store)
    for doc_id in ("a", "new-day"):
        await bulk.add(rec.item(doc_id))
    await bulk.drain()
    assert rec.outcomes == {"a": Outcome.CREATED, "new-day": Outcome.CREATED}
    assert refusals == {"new-day": 0}


async def test_an_item_refused_again_and_again_waits_longer_each_time() -> None:
    # Other requests succeeding in between reset the count of failed requests; the item's
    # own attempts still lengthen its wait, up to the cap.
    store, rec = FakeStore(), Recorder()
    bulk = writer(store, retry_base_s=0.01, retry_max_s=0.08)
    stuck, fresh = rec.item("x"), rec.item("y")
    waits = []
    for attempts in range(6):
        stuck.attempts = attempts
        waits.append(bulk.retry_delay_s([stuck]))
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.08, 0.08])
    assert bulk.retry_delay_s([fresh, stuck]) == pytest.approx(0.08)  # the most tried decides
    assert bulk.retry_delay_s([fresh]) == pytest.approx(0.01)


async def test_a_429_item_among_successes_is_retried_until_written() -> None:
    store, rec = FakeStore(), Recorder()
    refusals = {"x": 4}
    store.item_status = refuse_first(refusals, 429)
    bulk = writer(store, retry_base_s=0.001, retry_max_s=0.004)
    for doc_id in ("a", "x", "b"):
        await bulk.add(rec.item(doc_id))
    await bulk.drain()
    assert rec.outcomes == {"a": Outcome.CREATED, "x": Outcome.CREATED, "b": Outcome.CREATED}


async def test_an_answer_with_too_few_items_sends_the_whole_request_again() -> None:
    # Which item the answer left out is unknown: every one must go again, or a document
    # would never be told its outcome and its message would never be settled.
    port, rec = ShortAnswerPort(), Recorder()
    metrics = Metrics()
    bulk = writer(port, metrics=metrics, flush_interval_s=3600)
    for n in range(5):
        await bulk.add(rec.item(f"e{n}"))
    await bulk.drain()
    assert rec.outcomes == {f"e{n}": Outcome.CREATED for n in range(5)}
    assert port.sizes == [5, 5]  # the whole request, sent again once
    assert len(port.store.docs) == 5
    assert metrics.registry.get_sample_value("indexer_bulk_retries_total") == 5.0


async def test_an_outage_holds_intake_and_recovers_without_loss() -> None:
    store, rec = FakeStore(), Recorder()
    store.down = True
    bulk = writer(store)
    for n in range(5):
        await bulk.add(rec.item(f"e{n}"))
    await bulk.flush()
    await until(lambda: not bulk.healthy, "unhealthy")
    assert rec.outcomes == {}
    store.down = False
    await asyncio.wait_for(bulk.wait_healthy(), 5)
    await bulk.drain()
    assert bulk.healthy
    assert rec.outcomes == {f"e{n}": Outcome.CREATED for n in range(5)}


async def test_the_documents_of_a_refused_request_go_alone_at_once() -> None:
    # E.g. a proxy's body limit below INDEXER_BULK_MAX_BYTES: every request is refused (413)
    # and split. The documents must not trickle out one per flush tick.
    store, rec = FakeStore(), Recorder()
    store.refuse_request_when = lambda docs: len(docs) > 1
    bulk = writer(store, max_docs=50, flush_interval_s=3600, concurrency=4)
    for n in range(200):
        await bulk.add(rec.item(f"d{n}"))
    for _ in range(500):  # no drain(), no timer: only what the writer does by itself
        if len(rec.outcomes) == 200:
            break
        await asyncio.sleep(0.01)
    assert rec.outcomes == {f"d{n}": Outcome.CREATED for n in range(200)}
    assert store.requests.count(1) == 200


async def test_a_refused_request_is_split_to_find_the_culprit() -> None:
    store, rec = FakeStore(), Recorder()
    store.refuse_request_when = lambda docs: any(d["event_id"] == "poison" for d in docs)
    bulk = writer(store)
    for doc_id in ("a", "poison", "b"):
        await bulk.add(rec.item(doc_id))
    await bulk.drain()
    assert rec.outcomes == {
        "a": Outcome.CREATED,
        "poison": Outcome.REJECTED,
        "b": Outcome.CREATED,
    }
    assert "request refused" in rec.reasons["poison"]


class ScriptedPort:
    """A `_bulk` that fails whole requests with the given errors, in turn, then answers 201."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)

    async def bulk(self, body: bytes) -> list[ItemResult]:
        await asyncio.sleep(0)
        if self.errors:
            raise self.errors.pop(0)
        return [ItemResult(201)] * len(parse_bulk(body))


async def test_a_refusal_after_an_outage_resumes_intake() -> None:
    # 503, then the retried request refused as a whole (413): nothing is left in flight to
    # answer 2xx, yet OpenSearch did answer, so intake must not stay held.
    metrics = Metrics()
    port = ScriptedPort(
        SearchUnavailableError("opensearch answered 503"), SearchRequestError(413, "too large")
    )
    rec = Recorder()
    bulk = writer(port, metrics=metrics, flush_interval_s=60)
    await bulk.add(rec.item("big"))
    await bulk.flush()
    while port.errors[1:]:  # noqa: ASYNC110 - until the 503 is answered
        await asyncio.sleep(0)
    assert not bulk.healthy
    assert metrics.registry.get_sample_value("indexer_intake_held") == 1.0
    await bulk.drain()
    assert rec.outcomes == {"big": Outcome.REJECTED}
    assert bulk.healthy
    assert metrics.registry.get_sample_value("indexer_intake_held") == 0.0


@pytest.mark.parametrize(("status", "lines"), [(413, 2), (400, 0)])
async def test_a_request_split_for_being_too_large_is_logged_once(
    status: int, lines: int, caplog: pytest.LogCaptureFixture
) -> None:
    store, rec = FakeStore(), Recorder()
    store.refuse_status = status
    store.refuse_request_when = lambda docs: len(docs) > 1
    bulk = writer(store, max_docs=5, flush_interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="indexer.bulk"):
        for n in range(10):
            await bulk.add(rec.item(f"d{n}"))
        await bulk.drain()
    assert rec.outcomes == {f"d{n}": Outcome.CREATED for n in range(10)}
    assert caplog.text.count("too large for OpenSearch (413)") == lines


class ContentRefusingPort:
    """A proxy refusing, with a retryable status, every request that carries one of `bad`."""

    def __init__(self, status: int, *bad: str) -> None:
        self.status = status
        self.bad = frozenset(bad or ("poison",))
        self.sizes: list[int] = []
        self.store = FakeStore()

    async def bulk(self, body: bytes) -> Sequence[ItemResult]:
        docs = [doc for _, doc in parse_bulk(body)]
        self.sizes.append(len(docs))
        if any(doc["event_id"] in self.bad for doc in docs):
            await asyncio.sleep(0)
            raise SearchUnavailableError(f"answered {self.status}", status=self.status)
        return await self.store.bulk(body)

    async def sources(
        self, keys: Sequence[tuple[str, str]], fields: Sequence[str]
    ) -> list[Mapping[str, Any] | None]:
        return await self.store.sources(keys, fields)


@pytest.mark.parametrize("status", [403, 500])
async def test_a_request_refused_again_and_again_is_split_down_to_the_culprit(status: int) -> None:
    port, rec = ContentRefusingPort(status), Recorder()
    bulk = writer(port, max_docs=16, flush_interval_s=3600)
    ids = [f"d{n}" for n in range(15)]
    ids.insert(9, "poison")
    for doc_id in ids:
        await bulk.add(rec.item(doc_id))
    for _ in range(1000):  # no drain(): the culprit is retried for as long as it takes
        if len(rec.outcomes) == 15 and port.sizes[-3:] == [1, 1, 1]:
            break
        await asyncio.sleep(0.005)
    assert rec.outcomes == {f"d{n}": Outcome.CREATED for n in range(15)}
    assert "poison" not in rec.outcomes  # a retryable status is no rejection
    assert port.sizes[:3] == [16, 16, 16]
    assert port.sizes[-3:] == [1, 1, 1]  # retried alone
    assert bulk.healthy  # the culprit alone does not hold intake for the others
    await bulk.close()


# Every status that says OpenSearch is away, written out (not read from the writer's set,
# which would take a status dropped from it out of this test too); no answer at all as well.
@pytest.mark.parametrize("status", [None, 401, 404, 407, 408, 429, 502, 503, 504])
async def test_an_outage_does_not_split_requests(status: int | None) -> None:
    rec = Recorder()
    failures = [SearchUnavailableError("away", status=status) for _ in range(8)]
    port = ScriptedPort(*failures)
    sizes: list[int] = []
    answer = port.bulk

    async def sized(body: bytes) -> list[ItemResult]:
        sizes.append(len(parse_bulk(body)))
        return await answer(body)

    port.bulk = sized  # type: ignore[method-assign]
    bulk = writer(port, max_docs=10)
    for n in range(10):
        await bulk.add(rec.item(f"e{n}"))
    await bulk.drain()
    assert rec.outcomes == {f"e{n}": Outcome.CREATED for n in range(10)}
    assert sizes == [10] * 9


@pytest.mark.parametrize("status", [403, 500])
async def test_a_document_refused_alone_in_its_first_request_does_not_hold_intake(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Light traffic: the timer sends a one-event message's document alone. A proxy refusing
    # it says nothing of OpenSearch; it is retried, and the fetch loop keeps fetching.
    metrics = Metrics()
    port, rec = ContentRefusingPort(status), Recorder()
    bulk = writer(port, metrics=metrics)
    bulk.start()
    await bulk.add(rec.item("poison"))
    await until(lambda: len(port.sizes) >= 4, "retried")
    assert bulk.healthy
    assert metrics.registry.get_sample_value("indexer_intake_held") == 0.0
    await bulk.add(rec.item("good"))
    await until(lambda: "good" in rec.outcomes, "the next document written")
    assert rec.outcomes == {"good": Outcome.CREATED}
    await bulk.close()
    [line] = [r.getMessage() for r in caplog.records if "sent alone is refused" in r.getMessage()]
    assert "since the last line" not in line  # the first line: none held back to count


async def test_documents_refused_until_split_to_singles_release_intake() -> None:
    # Two refused documents in one request: the request holds intake while it may be an
    # outage, but once split down to single documents refused alone, intake resumes.
    metrics = Metrics()
    port, rec = ContentRefusingPort(403, "poison", "poison-2"), Recorder()
    bulk = writer(port, metrics=metrics, max_docs=2, flush_interval_s=3600)
    bulk.start()
    await bulk.add(rec.item("poison"))
    await bulk.add(rec.item("poison-2"))
    await until(lambda: port.sizes.count(1) >= 4, "split down to single documents")
    assert bulk.healthy
    assert metrics.registry.get_sample_value("indexer_intake_held") == 0.0
    assert rec.outcomes == {}  # retried, never rejected
    await bulk.close()


@pytest.mark.parametrize("status", [None, 401, 404, 407, 408, 429, 502, 503, 504])
async def test_an_outage_answered_to_a_single_document_holds_intake(status: int | None) -> None:
    port = ScriptedPort(*[SearchUnavailableError("away", status=status) for _ in range(3)])
    rec = Recorder()
    bulk = writer(port, flush_interval_s=3600)
    await bulk.add(rec.item("only"))
    await bulk.flush()
    await until(lambda: not bulk.healthy, "intake held")
    await bulk.drain()
    assert bulk.healthy
    assert rec.outcomes == {"only": Outcome.CREATED}


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "validation_exception"),
        (404, "index_not_found_exception"),
        (403, "security_exception"),
    ],
)
async def test_items_retried_for_the_clusters_state_are_logged_and_counted_as_awaiting(
    status: int, error_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The request succeeds, so intake is not held and readiness stays ok: the log line and
    # the gauge are what show that documents wait (e.g. the shard limit at a new day's index).
    metrics = Metrics()
    store, rec = FakeStore(), Recorder()
    store.forced_type = error_type
    refusals = {"new-day": 6}
    store.item_status = refuse_first(refusals, status)
    bulk = writer(store, metrics=metrics)
    bulk.start()
    awaiting: list[float | None] = []
    with caplog.at_level(logging.WARNING, logger="indexer.bulk"):
        await bulk.add(rec.item("new-day"))
        await until(lambda: refusals["new-day"] <= 3, "retried")
        awaiting.append(metrics.registry.get_sample_value("indexer_documents_awaiting_retry"))
        await until(lambda: "new-day" in rec.outcomes, "written")
    assert bulk.healthy
    assert rec.outcomes == {"new-day": Outcome.CREATED}
    assert awaiting == [1.0]
    assert metrics.registry.get_sample_value("indexer_documents_awaiting_retry") == 0.0
    lines = [r for r in caplog.records if "bulk items not written; retrying" in r.getMessage()]
    assert len(lines) == 1  # six retries, one line: at most one per interval
    assert lines[0].getMessage().endswith(" (1 in this request)")  # none held back before it
    assert error_type in lines[0].getMessage()
    assert f"status {status}" in lines[0].getMessage()  # OpenSearch's reason (the fake's)
    assert lines[0].__dict__["index"] == "t-x"
    await bulk.close()
