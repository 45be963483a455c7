"""Indexer benchmark: docs/s through the indexer vs OpenSearch's raw `_bulk` ceiling, and
QueryEvents p50 latency vs a raw `_search` of the same query.

    PYTHONPATH=.:gen OPENSEARCH_URL=http://127.0.0.1:19200 python bench/indexer/bench_indexer.py \
        [--docs 100000] [--per-message 50] [--queries 200]

A private nats-server (tests/servers.py) holds the pre-loaded TELEMETRY_ENRICHED stream.
The raw ceiling sends the same documents, pre-rendered, with the indexer's batch size and
concurrency, straight to `_bulk`; it runs before and after the indexer and the ratio is
taken against the mean of both. Every run writes to its own index prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import grpc
import nats
from google.protobuf.timestamp_pb2 import Timestamp
from opensearchpy import AsyncOpenSearch
from telemetry.v1 import event_pb2
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import Config, documents, queries
from indexer.bulk import BulkWriter, ItemResult, render
from indexer.intake import Intake
from indexer.store import OpenSearchStore
from pipeline import natsconn, subjects
from pipeline.config import load
from tests.servers import ROOT, NatsProcess, free_port

APP_ID = "bench"
BASE = datetime(2026, 9, 1, tzinfo=UTC)
NAMES = [f"event_{n}" for n in range(20)]
WORDS = ["red", "blue", "green", "shoes", "hat", "coat", "sale", "cart", "promo", "search"]


def _stamp(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


def make_events(count: int) -> list[event_pb2.EnrichedEvent]:
    out = []
    for n in range(count):
        when = BASE + timedelta(seconds=n * 7 * 86400 // count)
        name = NAMES[n % len(NAMES)]
        meta = {"sku": f"sku-{n % 5000}", "colour": WORDS[n % 3], "item": WORDS[3 + n % 7]}
        out.append(
            event_pb2.EnrichedEvent(
                event=event_pb2.Event(
                    event_id=str(uuid.UUID(int=n + 1)),
                    session_id=f"s-{n // 20}",
                    user_id=f"user-{n % 1000}",
                    event_name=name,
                    client_timestamp=_stamp(when),
                    metadata=meta,
                    app_version=f"2.{n % 4}.0",
                    device_os=f"iOS 17.{n % 5}",
                ),
                received_at=_stamp(when + timedelta(seconds=2)),
                enriched_at=_stamp(when + timedelta(seconds=2, milliseconds=3)),
                corrected_timestamp=_stamp(when),
                clock_skew_ms=-120,
                clock_status=event_pb2.CLOCK_STATUS_CORRECTED,
                geo=event_pb2.Geo(country_code=["GB", "FR", "DE", "US"][n % 4]),
                os_name="iOS",
                os_version=f"17.{n % 5}",
                event_message=" ".join([name, *(f"{k} {v}" for k, v in meta.items())]),
                app_id=APP_ID,
                request_id=f"r-{n // 50}",
            )
        )
    return out


async def raw_bulk(client: AsyncOpenSearch, bodies: list[bytes], concurrency: int) -> float:
    """Seconds to send pre-rendered bulk bodies with `concurrency` requests in flight."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            answer = await client.transport.perform_request(
                "POST",
                "/_bulk",
                body=body,
                params={"filter_path": "errors"},
                headers={"content-type": "application/x-ndjson"},
            )
            if answer.get("errors"):
                raise RuntimeError("raw bulk had item errors")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def bodies_for(events: list[event_pb2.EnrichedEvent], prefix: str, per_request: int) -> list[bytes]:
    lines = [
        render(
            index=documents.index_name(e, prefix=prefix),
            doc_id=e.event.event_id,
            source=documents.to_document(e),
        )
        for e in events
    ]
    return [b"".join(lines[i : i + per_request]) for i in range(0, len(lines), per_request)]


async def count(client: AsyncOpenSearch, prefix: str) -> int:
    await client.indices.refresh(index=f"{prefix}*", allow_no_indices=True)
    return int((await client.count(index=f"{prefix}*", allow_no_indices=True))["count"])


async def run_raw(
    client: AsyncOpenSearch, events: list[event_pb2.EnrichedEvent], config: Config
) -> tuple[float, str]:
    prefix = f"braw{uuid.uuid4().hex[:8]}-"
    store = OpenSearchStore(client, prefix=prefix)
    await store.install_template()
    bodies = bodies_for(events, prefix, config.bulk_max_docs)
    seconds = await raw_bulk(client, bodies, config.bulk_concurrency)
    assert await count(client, prefix) == len(events)
    return len(events) / seconds, prefix


async def preload(nats_url: str, events: list[event_pb2.EnrichedEvent], per_message: int) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await natsconn.ensure_streams(js, load(Config, {}))
    acks = []
    for start in range(0, len(events), per_message):
        batch = event_pb2.EnrichedBatch(events=events[start : start + per_message], app_id=APP_ID)
        acks.append(js.publish(subjects.enriched_subject(APP_ID), batch.SerializeToString()))
        if len(acks) >= 500:
            await asyncio.gather(*acks)
            acks = []
    await asyncio.gather(*acks)
    await nc.close()


class IndexerProcess:
    """`python -m indexer` in its own process, as it runs in production."""

    def __init__(self, nats_url: str, opensearch_url: str, prefix: str) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
            "NATS_URL": nats_url,
            "OPENSEARCH_URL": opensearch_url,
            "INDEXER_INDEX_PREFIX": prefix,
            "INDEXER_GRPC_PORT": str(self.grpc_port),
            "INDEXER_HTTP_PORT": str(self.http_port),
            "INDEXER_RETENTION_DAYS": "0",
            "LOG_LEVEL": "WARNING",
        }
        self._proc = subprocess.Popen([sys.executable, "-m", "indexer"], env=env, cwd=ROOT)

    async def wait_ready(self) -> None:
        """Returns once /readyz answers 200: the template is in place and consuming starts,
        so the clock starts where the raw load's does, at the first write."""
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError("indexer exited")
            try:
                status = await asyncio.to_thread(_status, url)
            except OSError:
                status = 0
            if status == 200:
                return
            await asyncio.sleep(0.01)

    def cpu_seconds(self) -> float:
        """User + system CPU time the indexer process has used so far."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._proc.send_signal(signal.SIGTERM)
        self._proc.wait(timeout=60)


async def run_indexer(
    nats_url: str, opensearch_url: str
) -> tuple[float, float, str, IndexerProcess]:
    """Seconds (and indexer CPU seconds) from the indexer being ready until every message of
    the stream is acked."""
    prefix = f"bidx{uuid.uuid4().hex[:8]}-"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    total = (await js.stream_info(subjects.ENRICHED_STREAM)).state.messages
    process = IndexerProcess(nats_url, opensearch_url, prefix)
    await process.wait_ready()
    started = time.perf_counter()
    cpu_before = process.cpu_seconds()
    while True:
        try:
            info = await js.consumer_info(subjects.ENRICHED_STREAM, "indexer")
            if info.ack_floor is not None and info.ack_floor.stream_seq >= total:
                break
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    cpu = process.cpu_seconds() - cpu_before
    await nc.close()
    return seconds, cpu, prefix, process


class _AllCreated:
    """A bulk port that answers 201 for every item without any network."""

    async def bulk(self, body: bytes) -> list[ItemResult]:
        return [ItemResult(201)] * (body.count(b"\n") // 2)


class _Settled:
    """A delivery that only records being settled."""

    subject = subjects.enriched_subject(APP_ID)
    headers: ClassVar[dict[str, str]] = {}
    deliveries = 1
    msg_id = "bench"

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def ack(self) -> None:
        return None

    async def nak(self, delay_s: float) -> None:
        return None

    async def term(self) -> None:
        return None

    async def in_progress(self) -> None:
        return None


class _NoDeadLetters:
    async def publish(self, **_: Any) -> None:
        raise RuntimeError("no dead letters expected")


async def pipeline_alone(
    events: list[event_pb2.EnrichedEvent], per_message: int, config: Config
) -> float:
    """Docs/s of decode -> document -> bulk body -> settle, with no server at all."""
    messages = [
        event_pb2.EnrichedBatch(events=events[i : i + per_message]).SerializeToString()
        for i in range(0, len(events), per_message)
    ]
    writer = BulkWriter(
        _AllCreated(),
        max_docs=config.bulk_max_docs,
        max_bytes=config.bulk_max_bytes,
        flush_interval_s=config.flush_interval_s,
        concurrency=config.bulk_concurrency,
        retry_base_s=config.retry_base_s,
        retry_max_s=config.retry_max_s,
    )
    intake = Intake(writer, _NoDeadLetters(), index_prefix="bench-", max_deliveries=5)
    started = time.perf_counter()
    for data in messages:
        await intake.handle(_Settled(data))
    await writer.drain()
    await intake.wait_idle()
    return len(events) / (time.perf_counter() - started)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def query_latency(
    indexer: IndexerProcess, client: AsyncOpenSearch, prefix: str, rounds: int
) -> list[tuple[str, float, float]]:
    requests = {
        "newest 50, no filter": qs.QueryEventsRequest(page_size=50),
        "user + event name": qs.QueryEventsRequest(
            filter=qs.EventFilter(user_ids=["user-7"], event_names=["event_7"]), page_size=50
        ),
        "text + country + os": qs.QueryEventsRequest(
            filter=qs.EventFilter(text="red shoes", country_codes=["GB"], device_os=["iOS"]),
            page_size=50,
        ),
    }
    out = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{indexer.grpc_port}") as channel:
        stub = qs_grpc.QueryServiceStub(channel)
        for label, request in requests.items():
            body, _ = queries.search_body(request)
            via_grpc: list[float] = []
            via_raw: list[float] = []
            for _ in range(10):  # warm up both paths
                await stub.QueryEvents(request)
                await client.search(index=f"{prefix}*", body=body)
            for _ in range(rounds):
                started = time.perf_counter()
                await stub.QueryEvents(request)
                via_grpc.append(time.perf_counter() - started)
                started = time.perf_counter()
                answer: dict[str, Any] = await client.search(
                    index=f"{prefix}*", body=body, ignore_unavailable=True, allow_no_indices=True
                )
                via_raw.append(time.perf_counter() - started)
                assert answer["hits"]["total"]["value"] >= 0
            out.append((label, p50_ms(via_grpc), p50_ms(via_raw)))
    return out


async def main_async(args: argparse.Namespace) -> None:
    opensearch_url = os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:19200")
    config = load(Config, {})
    events = make_events(args.docs)
    client = AsyncOpenSearch(hosts=[opensearch_url], timeout=120)
    prefixes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "nats")
        server.start()
        indexer: IndexerProcess | None = None
        try:
            await preload(server.url, events, args.per_message)
            # A freshly started node compiles its indexing path during the first run.
            _, warm = await run_raw(client, events, config)
            prefixes.append(warm)
            raw_before, prefix = await run_raw(client, events, config)
            prefixes.append(prefix)
            seconds, cpu, prefix, indexer = await run_indexer(server.url, opensearch_url)
            through = len(events) / seconds
            prefixes.append(prefix)
            raw_after, other = await run_raw(client, events, config)
            prefixes.append(other)
            assert await count(client, prefix) == len(events)
            raw = (raw_before + raw_after) / 2
            print(f"documents: {len(events)}, {args.per_message} events per NATS message")
            print(f"bulk: {config.bulk_max_docs} docs/request, {config.bulk_concurrency} in flight")
            print(f"raw _bulk ceiling: {raw_before:,.0f} docs/s before, {raw_after:,.0f} after")
            print(
                f"indexer (NATS -> OpenSearch): {through:,.0f} docs/s, "
                f"indexer process CPU {cpu / seconds:.2f} cores "
                f"({cpu * 1e6 / len(events):.0f} us/doc) of {os.cpu_count()} shared with OpenSearch"
            )
            print(f"ratio indexer / raw ceiling: {through / raw:.2f} (target >= 0.90)")
            alone = await pipeline_alone(events, args.per_message, config)
            print(f"indexer pipeline alone (no NATS, no OpenSearch): {alone:,.0f} docs/s")
            print(f"query latency over {len(events)} docs, p50 of {args.queries} calls:")
            for label, grpc_ms, raw_ms in await query_latency(
                indexer, client, prefix, args.queries
            ):
                print(
                    f"  {label:<22} QueryEvents {grpc_ms:6.2f} ms   raw _search {raw_ms:6.2f} ms"
                    f"   ratio {grpc_ms / raw_ms:.2f} (target <= 1.10)"
                )
        finally:
            if indexer is not None:
                indexer.stop()
            server.stop()
            for prefix in prefixes:
                await client.indices.delete(index=f"{prefix}*", allow_no_indices=True)
                await client.indices.delete_index_template(name=f"{prefix}events", ignore=[404])
            await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--per-message", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
