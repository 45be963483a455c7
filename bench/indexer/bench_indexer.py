"""Indexer benchmark: docs/s through the indexer vs OpenSearch's raw `_bulk` ceiling, and
QueryEvents p50 latency vs a raw `_search` of the same query.

    PYTHONPATH=.:gen OPENSEARCH_URL=http://127.0.0.1:19200 python bench/indexer/bench_indexer.py \
        [--docs 100000] [--per-message 50] [--rounds 3] [--warmup 2] [--queries 200] \
        [--isolate] [--profile]

A private nats-server (tests/servers.py) holds the pre-loaded TELEMETRY_ENRICHED stream.
The raw ceiling sends the same documents, pre-rendered, with the indexer's batch size and
concurrency, straight to `_bulk`; after warm-up loads it runs before and after each indexer
round, and each round's ratio is taken against the mean of the two around it; the figure is
the median of the rounds. Every load writes to its own index prefix, deleted once counted.
`--profile` runs the indexer under pyinstrument (its figures then carry the sampler's cost)
and prints where its busy time went.

By default OpenSearch shares every CPU with the indexer, NATS and this process, so what
the indexer spends per document is CPU OpenSearch does not get. `--isolate` gives OpenSearch
a CPU of its own (its threads' affinity, restored at the end) and the rest to this process
and its children: the ratio then says whether the indexer keeps OpenSearch as busy as a
client sending ready-made bodies does, as when OpenSearch runs on machines of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any, ClassVar, NamedTuple

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

# bench/pipeline/'s helpers: processes read from /proc, and profiles as `run.py --profile`.
sys.path.insert(0, str(ROOT / "bench" / "pipeline"))
import _profile
import _system

PROFILING = ROOT / "bench" / "pipeline" / "profiling"

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


class Phase(NamedTuple):
    """One load: documents per second, OpenSearch's CPU while it ran, and the share of
    the machine's CPUs that were busy meanwhile (anything, this process included)."""

    docs_per_s: float
    seconds: float
    opensearch_cpu_s: float
    prefix: str
    busy: float

    def describe(self, docs: int) -> str:
        return (
            f"{self.docs_per_s:8,.0f} docs/s, "
            f"OpenSearch {self.opensearch_cpu_s / self.seconds:.2f} cores, "
            f"{self.opensearch_cpu_s * 1e6 / docs:.0f} us/doc, "
            f"machine {self.busy * os.cpu_count():.2f} of {os.cpu_count()} cores busy"
        )


async def run_raw(
    client: AsyncOpenSearch,
    events: list[event_pb2.EnrichedEvent],
    config: Config,
    opensearch: int,
) -> Phase:
    prefix = f"braw{uuid.uuid4().hex[:8]}-"
    store = OpenSearchStore(client, prefix=prefix)
    await store.install_template()
    bodies = bodies_for(events, prefix, config.bulk_max_docs)
    cpu = _system.cpu_s(opensearch)
    machine = _system.MachineCpu.now()
    seconds = await raw_bulk(client, bodies, config.bulk_concurrency)
    busy = _system.MachineCpu.now().busy_since(machine)
    cpu = _system.cpu_s(opensearch) - cpu
    assert await count(client, prefix) == len(events)
    return Phase(len(events) / seconds, seconds, cpu, prefix, busy)


async def drop(client: AsyncOpenSearch, prefix: str) -> None:
    """Deletes a run's indices and template: each load starts on a node of the same size."""
    await client.indices.delete(index=f"{prefix}*", allow_no_indices=True)
    await client.indices.delete_index_template(name=f"{prefix}events", ignore=[404])


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

    def __init__(
        self,
        nats_url: str,
        opensearch_url: str,
        prefix: str,
        *,
        consumer: str,
        profile_to: Path | None,
    ) -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        path = [str(ROOT), str(ROOT / "gen")]
        if profile_to is not None:  # bench/pipeline/profiling/sitecustomize.py starts it
            path.insert(0, str(PROFILING))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(path),
            "BENCH_PYINSTRUMENT_OUT": str(profile_to or ""),
            "NATS_URL": nats_url,
            "OPENSEARCH_URL": opensearch_url,
            "INDEXER_INDEX_PREFIX": prefix,
            "INDEXER_CONSUMER_NAME": consumer,
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
        return _system.cpu_s(self._proc.pid)

    def stop(self) -> None:
        self._proc.send_signal(signal.SIGTERM)
        self._proc.wait(timeout=60)


async def run_indexer(
    server: NatsProcess, opensearch_url: str, profile_to: Path | None, opensearch: int, docs: int
) -> tuple[Phase, float, float, IndexerProcess]:
    """The indexer's phase, from its being ready until every message of the stream is
    acked, and the CPU seconds the indexer and nats-server used in it. Each run has a
    consumer of its own, so it reads the whole stream."""
    nats_url = server.url
    prefix = f"bidx{uuid.uuid4().hex[:8]}-"
    consumer = prefix.rstrip("-")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    total = (await js.stream_info(subjects.ENRICHED_STREAM)).state.messages
    process = IndexerProcess(
        nats_url, opensearch_url, prefix, consumer=consumer, profile_to=profile_to
    )
    await process.wait_ready()
    started = time.perf_counter()
    cpu_before = process.cpu_seconds()
    nats_before = _system.cpu_s(server.pid)
    opensearch_before = _system.cpu_s(opensearch)
    machine = _system.MachineCpu.now()
    while True:
        try:
            info = await js.consumer_info(subjects.ENRICHED_STREAM, consumer)
            if info.ack_floor is not None and info.ack_floor.stream_seq >= total:
                break
        except nats.js.errors.NotFoundError:
            pass
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    busy = _system.MachineCpu.now().busy_since(machine)
    cpu = process.cpu_seconds() - cpu_before
    nats_cpu = _system.cpu_s(server.pid) - nats_before
    opensearch_cpu = _system.cpu_s(opensearch) - opensearch_before
    await nc.close()
    return Phase(docs / seconds, seconds, opensearch_cpu, prefix, busy), cpu, nats_cpu, process


class _AllCreated:
    """A bulk port that answers 201 for every item without any network."""

    async def bulk(self, body: bytes) -> list[ItemResult]:
        return [ItemResult(201)] * (body.count(b"\n") // 2)


class _Settled:
    """A delivery that only records being settled."""

    subject = subjects.enriched_subject(APP_ID)
    headers: ClassVar[dict[str, str]] = {}
    deliveries = 1
    stream_seq = 1
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


class CpuSplit:
    """OpenSearch's threads on the first CPU, this process (and what it starts) on the others."""

    def __init__(self, opensearch_pid: int) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--isolate needs at least 2 CPUs")
        self._pid = opensearch_pid
        self._all = set(cpus)
        self.server = {cpus[0]}
        self.clients = set(cpus[1:])

    def _pin_server(self, cpus: set[int]) -> None:
        # Per thread: a process's affinity call sets one thread's; new threads inherit their
        # creator's. One started during a pass may inherit the old set: passes go on until
        # one finds every thread on `cpus` already.
        for _ in range(100):
            moved = False
            for tid in os.listdir(f"/proc/{self._pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    if os.sched_getaffinity(int(tid)) != cpus:
                        os.sched_setaffinity(int(tid), cpus)
                        moved = True
            if not moved:
                return

    def __enter__(self) -> CpuSplit:
        self._pin_server(self.server)
        os.sched_setaffinity(0, self.clients)  # before NATS and the indexer are started
        return self

    def __exit__(self, *_: object) -> None:
        self._pin_server(self._all)
        os.sched_setaffinity(0, self._all)


async def opensearch_pid(client: AsyncOpenSearch) -> int:
    """The process id of the node, which must run on this machine (its CPU time is read)."""
    answer = await client.nodes.info(node_id="_local", metric="process")
    (node,) = answer["nodes"].values()
    pid = int(node["process"]["id"])
    if _system.local_process(pid, "opensearch") is None:
        raise SystemExit(f"OpenSearch (pid {pid}) does not run on this machine")
    return pid


async def main_async(args: argparse.Namespace) -> None:
    opensearch_url = os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:19200")
    client = AsyncOpenSearch(hosts=[opensearch_url], timeout=120)
    try:
        opensearch = await opensearch_pid(client)
    except BaseException:
        await client.close()
        raise
    if not args.isolate:
        await measure(args, client, opensearch_url, opensearch)
        return
    with CpuSplit(opensearch) as split:
        print(f"OpenSearch on CPU {sorted(split.server)}, the rest on {sorted(split.clients)}")
        await measure(args, client, opensearch_url, opensearch)


async def measure(
    args: argparse.Namespace, client: AsyncOpenSearch, opensearch_url: str, opensearch: int
) -> None:
    config = load(Config, {})
    events = make_events(args.docs)
    docs = len(events)
    prefixes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "nats")
        server.start()
        indexer: IndexerProcess | None = None
        try:
            await preload(server.url, events, args.per_message)
            # OpenSearch's cost per document keeps falling for a while after it starts (its
            # JIT): warm it up, then alternate raw and indexer loads so each indexer round is
            # compared with the raw loads just before and just after it.
            for _ in range(args.warmup):
                await drop(client, (await run_raw(client, events, config, opensearch)).prefix)
            raws = [await run_raw(client, events, config, opensearch)]
            await drop(client, raws[0].prefix)
            print(f"documents: {docs}, {args.per_message} events per NATS message")
            print(f"bulk: {config.bulk_max_docs} docs/request, {config.bulk_concurrency} in flight")
            print(
                "CPUs: OpenSearch on one of its own"
                if args.isolate
                else "CPUs: all shared by OpenSearch, NATS, the indexer and this process"
            )
            ratios = []
            for number in range(1, args.rounds + 1):
                if indexer is not None:  # the last round's stays, for the queries
                    indexer.stop()
                    await drop(client, prefixes.pop())
                profile_to = Path(tmp) / "indexer" if args.profile else None
                through, cpu, nats_cpu, indexer = await run_indexer(
                    server, opensearch_url, profile_to, opensearch, docs
                )
                prefixes.append(through.prefix)
                assert await count(client, through.prefix) == docs
                raws.append(await run_raw(client, events, config, opensearch))
                await drop(client, raws[-1].prefix)
                before, after = raws[-2:]
                ratio = through.docs_per_s / ((before.docs_per_s + after.docs_per_s) / 2)
                ratios.append(ratio)
                print(f"round {number}:")
                print(f"  raw _bulk before {before.describe(docs)}")
                print(f"  indexer          {through.describe(docs)}")
                print(
                    f"    of which the indexer {cpu / through.seconds:.2f} cores, "
                    f"{cpu * 1e6 / docs:.0f} us/doc; nats-server "
                    f"{nats_cpu / through.seconds:.2f} cores, {nats_cpu * 1e6 / docs:.1f} us/doc"
                )
                print(f"  raw _bulk after  {after.describe(docs)}")
                print(f"  ratio {ratio:.2f}")
            print(
                f"ratio indexer / raw ceiling: median {statistics.median(ratios):.2f} of "
                f"{len(ratios)} rounds ({', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.90)"
            )
            alone = await pipeline_alone(events, args.per_message, config)
            print(f"indexer pipeline alone (no NATS, no OpenSearch): {alone:,.0f} docs/s")
            print(f"query latency over {docs} docs, p50 of {args.queries} calls:")
            assert indexer is not None
            for label, grpc_ms, raw_ms in await query_latency(
                indexer, client, through.prefix, args.queries
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
                await drop(client, prefix)
            await client.close()
        if args.profile:
            print_profile(Path(tmp) / "indexer.pyisession")


def print_profile(session: Path) -> None:
    """The busy time of the last round's indexer, whole life, by area and by function."""
    summary = _profile.summarise(session)
    print(f"indexer profile: {summary['busy_s']} s busy, {summary['idle_s']} s idle")
    for kind in ("areas", "functions"):
        for row in summary[kind]:
            print(f"  {row['share']:6.1%}  {row['name']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--per-message", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="indexer runs, each between raw runs")
    parser.add_argument("--warmup", type=int, default=2, help="raw runs before measuring")
    parser.add_argument("--profile", action="store_true", help="run the indexer under pyinstrument")
    parser.add_argument(
        "--isolate", action="store_true", help="OpenSearch on one CPU, everything else on the rest"
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.docs, args.per_message, args.queries) < 1:
        parser.error("--rounds, --docs, --per-message and --queries must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
