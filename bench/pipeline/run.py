"""End-to-end pipeline benchmark: gateway -> JetStream -> enricher -> indexer -> OpenSearch,
each figure beside the baseline it is judged against, measured in the same run.

    PYTHONPATH=.:gen OPENSEARCH_URL=http://127.0.0.1:9200 \\
        .local/venv/bin/python bench/pipeline/run.py [--rounds 3] [--events 50000] ...

The three services run as `python -m tpipe <service>` processes (tests/procs.py) against a
private nats-server and the OpenSearch of OPENSEARCH_URL, under a unique index prefix
that is deleted at the end. Phases, each repeated `--rounds` times:

1. flood: `--events` events in 100-event batches over 64 connections, as fast as the
   gateway accepts them. Gateway: accepted events/s and request latency. End to end:
   accepted events / (first POST -> all of them counted by `_count`).
   Baseline: the very documents the indexer wrote, read back and sent by this process to
   a fresh index with the indexer's template, as pre-rendered `_bulk` bodies (indexer's
   batch size and concurrency), timed the same way (first request -> all counted).
2. half load: batches at half the median end-to-end rate for `--duration` s; for each
   batch's first event, the time from its 202 to the first `_search` that finds it
   (polled every 50 ms), and to the first real-time `_mget` that finds it (indexed,
   before a refresh makes it searchable). Service RSS is sampled every second.
3. query: QueryEvents over gRPC against a raw `_search` with the body the indexer builds
   (indexer.queries.search_body), alternating, over everything indexed (>= 100k events).

Results go to .local/bench/<timestamp>.json and a table on stdout. `--profile indexer`
(or gateway, enricher, a comma list) runs that service under pyinstrument and prints
where its busy time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import _load  # noqa: E402
import _profile  # noqa: E402
import _report  # noqa: E402
import _system  # noqa: E402
import aiohttp  # noqa: E402 (after the path set-up)
import grpc  # noqa: E402
import orjson  # noqa: E402
from _search import OpenSearchError, Search, bulk_bodies  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from telemetry.v1 import query_service_pb2 as qs  # noqa: E402
from telemetry.v1 import query_service_pb2_grpc as qs_grpc  # noqa: E402

from indexer import queries  # noqa: E402
from indexer.config import DEFAULT_BULK_CONCURRENCY, DEFAULT_BULK_MAX_DOCS  # noqa: E402
from indexer.template import DEFAULT_REFRESH_INTERVAL  # noqa: E402
from tests.procs import APP_ID, WRITE_KEY, Pipeline  # noqa: E402
from tests.servers import NatsProcess  # noqa: E402

SERVICES = ("gateway", "enricher", "indexer")
OWN_CPU = (*SERVICES, "opensearch", "nats", "bench")
MIN_QUERY_EVENTS = 100_000
VISIBLE_TIMEOUT_S = 300.0
POLL_S = 0.05
WARMUP_S = 1.0  # gateway answers in the first second of a flood are not in its rate
QUERY_WARMUP = 10
FLOOD_DAYS_AGO = 1  # flood round n writes the daily index of n + 1 days ago


@dataclass
class Run:
    """What one bench run owns and measures."""

    args: argparse.Namespace
    tag: str
    pipeline: Pipeline
    search: Search
    session: aiohttp.ClientSession
    opensearch_pid: int | None = None  # when the node runs here, its CPU is read from /proc
    nats_pid: int | None = None
    expected: int = 0  # accepted events so far, all rounds
    last_docs: list[tuple[str, str, bytes]] = field(default_factory=list)  # of the last flood
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.pipeline.index_prefix

    @property
    def pattern(self) -> str:
        return f"{self.prefix}*"

    @property
    def refresh_interval(self) -> str:
        return str(self.args.refresh_interval or DEFAULT_REFRESH_INTERVAL)

    def pids(self) -> dict[str, int]:
        return pids(self.pipeline)


def pids(pipeline: Pipeline) -> dict[str, int]:
    """Each service's process id; fails with its log's tail when one has stopped."""
    out = {}
    for name in SERVICES:
        service = pipeline.services[name]
        if service.pid is None:
            raise RuntimeError(f"{name} is not running:\n{service.log_tail()}")
        out[name] = service.pid
    return out


class CpuMeter:
    """CPU used by each service, OpenSearch, this process and the machine over a window."""

    def __init__(self, run: Run) -> None:
        self._run = run

    async def snap(self) -> dict[str, Any]:
        pid = self._run.opensearch_pid
        return {
            "at": time.perf_counter(),
            "services": {n: _system.cpu_s(p) for n, p in self._run.pids().items()},
            "opensearch": _system.cpu_s(pid) if pid else await self._run.search.cpu_s(),
            "nats": _system.cpu_s(self._run.nats_pid) if self._run.nats_pid else 0.0,
            "bench": _system.self_cpu_s(),
            "machine": _system.MachineCpu.now(),
        }

    @staticmethod
    def cores(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """Cores used on average between two snaps (1.0 = one core busy all the time)."""
        seconds = after["at"] - before["at"]
        out = {n: (after["services"][n] - before["services"][n]) / seconds for n in SERVICES}
        for name in ("opensearch", "nats", "bench"):
            out[name] = (after[name] - before[name]) / seconds
        machine: _system.MachineCpu = after["machine"]
        out["machine_busy"] = machine.busy_since(before["machine"]) * (os.cpu_count() or 1)
        # Whatever else runs on the machine (other people's test suites, the kernel).
        out["other"] = max(0.0, out["machine_busy"] - sum(out[n] for n in OWN_CPU))
        return {k: round(v, 2) for k, v in out.items()}

    @staticmethod
    def per_event_us(
        before: dict[str, Any], after: dict[str, Any], events: int
    ) -> dict[str, float]:
        """CPU microseconds each process spent per event between two snaps."""
        out = {n: after["services"][n] - before["services"][n] for n in SERVICES}
        for name in ("opensearch", "nats", "bench"):
            out[name] = after[name] - before[name]
        return {k: round(v * 1e6 / events, 1) for k, v in out.items()} if events else {}


def rss(pipeline: Pipeline) -> dict[str, float]:
    """Each service's resident memory now, MB."""
    return {n: round(_system.rss_mb(p), 1) for n, p in pids(pipeline).items()}


async def indexer_bulk_stats(
    session: aiohttp.ClientSession, pipeline: Pipeline
) -> dict[str, float]:
    """Bulk requests, their total seconds and the documents written so far (indexer /metrics)."""
    async with session.get(f"{pipeline.indexer.base_url}/metrics") as resp:
        text = await resp.text()
    out = {"requests": 0.0, "seconds": 0.0, "documents": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "indexer_bulk_seconds_count":
            out["requests"] = float(value)
        elif name == "indexer_bulk_seconds_sum":
            out["seconds"] = float(value)
        elif name.startswith("indexer_documents_total{"):
            out["documents"] += float(value)
    return out


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def flood_round(
    run: Run, sender: _load.Sender, number: int, *, events: int = 0
) -> dict[str, Any]:
    """One flood and its raw baseline; `events` (default `--events`) events; number -1 is
    the warm-up."""
    args = run.args
    meter = CpuMeter(run)
    # Each round writes a day of its own: the pipeline, like the raw baseline, fills a
    # fresh index rather than one that earlier rounds have grown.
    label = f"f{number}" if number >= 0 else "warm"
    batches = _load.make_batches(
        run.tag,
        label,
        events or args.events,
        args.batch,
        days_ago=FLOOD_DAYS_AGO + (number if number >= 0 else args.rounds),
    )
    # The baseline runs on both sides of the flood: OpenSearch's JVM keeps getting cheaper
    # per document for several hundred thousand documents, so a baseline taken only after
    # the flood would always meet a warmer node. Before: the previous round's documents.
    raw_first = await raw_bulk(run, run.last_docs, f"{label}b") if run.last_docs else None
    bulk_before = await indexer_bulk_stats(run.session, run.pipeline)
    before = await meter.snap()
    load = await sender.flood(batches, args.connections)
    flood_end = await meter.snap()
    peak_rss = rss(run.pipeline)
    run.expected += load.accepted
    visible = await run.search.wait_count(run.pattern, run.expected, timeout_s=VISIBLE_TIMEOUT_S)
    if visible is None:
        raise RuntimeError(f"not all {run.expected} accepted events searchable in time")
    after = await meter.snap()
    bulk_after = await indexer_bulk_stats(run.session, run.pipeline)
    e2e_s = visible - load.started
    bulk = {k: bulk_after[k] - bulk_before[k] for k in bulk_after}

    # The same documents, straight to `_bulk` from here.
    docs = await run.search.documents(run.pattern, f"{run.tag}-{label}-")
    if len(docs) != load.accepted:
        raise RuntimeError(f"read back {len(docs)} documents, {load.accepted} accepted")
    raw_second = await raw_bulk(run, docs, f"{label}a")
    run.last_docs = docs
    raws = [r for r in (raw_first, raw_second) if r is not None]
    raw_rate = statistics.fmean(r["docs_per_s"] for r in raws)
    raw_cpu = {
        name: round(statistics.fmean(r["cpu_us_per_doc"][name] for r in raws), 1)
        for name in raw_second["cpu_us_per_doc"]
    }
    return {
        "events": load.accepted,
        "statuses": load.statuses,
        "gateway_events_per_s": round(load.rate_after(WARMUP_S)),
        "gateway_p50_ms": round(pct(load.latencies, 0.5) * 1000, 1),
        "gateway_p99_ms": round(pct(load.latencies, 0.99) * 1000, 1),
        "gateway_send_s": round(load.finished - load.started, 2),
        "e2e_s": round(e2e_s, 2),
        "e2e_events_per_s": round(load.accepted / e2e_s),
        "drain_after_last_202_s": round(visible - load.finished, 2),
        "raw_bulk_docs_per_s": round(raw_rate),
        "raw_bulk_runs": raws,
        "raw_bulk_acked_docs_per_s": round(statistics.fmean(r["acked_docs_per_s"] for r in raws)),
        "ratio_e2e_raw": round((load.accepted / e2e_s) / raw_rate, 3),
        "indexer_bulk_requests": int(bulk["requests"]),
        "indexer_docs_per_bulk": round(bulk["documents"] / bulk["requests"])
        if bulk["requests"]
        else None,
        "indexer_bulk_mean_ms": round(bulk["seconds"] / bulk["requests"] * 1000, 1)
        if bulk["requests"]
        else None,
        "raw_bulk_requests": raw_second["requests"],
        "cpu_us_per_event": CpuMeter.per_event_us(before, after, load.accepted),
        "raw_cpu_us_per_doc": raw_cpu,
        "cores_during_flood": CpuMeter.cores(before, flood_end),
        "cores_during_drain": CpuMeter.cores(flood_end, after),
        "cores_raw_bulk": raw_second["cores"],
        "rss_mb_end_of_flood": peak_rss,
    }


async def raw_bulk(run: Run, docs: list[tuple[str, str, bytes]], label: str) -> dict[str, Any]:
    """`docs` sent by this process as pre-rendered `_bulk` bodies to a fresh index made from
    the indexer's template, timed from the first request until all are counted."""
    meter = CpuMeter(run)
    raw_prefix = f"bench-{run.tag}-raw{label}-"
    await run.search.install_template(raw_prefix, run.refresh_interval)
    bodies = bulk_bodies(docs, run.prefix, raw_prefix, DEFAULT_BULK_MAX_DOCS)
    before = await meter.snap()
    started = time.perf_counter()
    await run.search.bulk(bodies, DEFAULT_BULK_CONCURRENCY)
    acked = time.perf_counter()
    visible = await run.search.wait_count(f"{raw_prefix}*", len(docs), timeout_s=VISIBLE_TIMEOUT_S)
    after = await meter.snap()
    await run.search.drop(raw_prefix)
    if visible is None:
        raise RuntimeError("raw _bulk documents not searchable in time")
    return {
        "seconds": round(visible - started, 2),
        "docs_per_s": len(docs) / (visible - started),
        "acked_docs_per_s": len(docs) / (acked - started),
        "requests": len(bodies),
        "cpu_us_per_doc": CpuMeter.per_event_us(before, after, len(docs)),
        "cores": CpuMeter.cores(before, after),
    }


async def latency_round(run: Run, sender: _load.Sender, number: int, rate: float) -> dict[str, Any]:
    """Accept -> searchable (and -> indexed) of each batch's first event at `rate` events/s."""
    args = run.args
    count = max(1, round(rate * args.duration / args.batch))
    batches = _load.make_batches(run.tag, f"h{number}", count * args.batch, args.batch)
    index = run.prefix + datetime.now(UTC).date().isoformat()
    accepted_at: dict[str, float] = {}
    searchable: dict[str, float] = {}
    stored: dict[str, float] = {}
    sending = True

    def accepted(batch: _load.Batch, at: float) -> None:
        accepted_at[batch.marker] = at

    async def poll() -> None:
        deadline = float("inf")
        while True:
            pending = [m for m in accepted_at if m not in searchable]
            unstored = [m for m in accepted_at if m not in stored]
            # A new index answers 503 or 404 until its shard has started: nothing found yet.
            with contextlib.suppress(OpenSearchError):
                if unstored:
                    found = await run.search.stored(index, unstored)
                    now = time.perf_counter()
                    stored.update((m, now) for m in found)
                if pending:
                    found = await run.search.searchable(run.pattern, pending)
                    now = time.perf_counter()
                    searchable.update((m, now) for m in found)
            if not sending:
                if len(searchable) == len(accepted_at):
                    return
                deadline = min(deadline, time.perf_counter() + 60)
                if time.perf_counter() > deadline:
                    return
            await asyncio.sleep(POLL_S)

    samples: list[dict[str, float]] = []

    async def sample_rss() -> None:
        while sending:
            samples.append(rss(run.pipeline))
            await asyncio.sleep(1.0)

    meter = CpuMeter(run)
    before = await meter.snap()
    poller = asyncio.create_task(poll())
    sampler = asyncio.create_task(sample_rss())
    load = await sender.paced(batches, rate / args.batch, hook=accepted)
    after = await meter.snap()
    sending = False
    await asyncio.gather(poller, sampler)
    run.expected += load.accepted
    to_search = [searchable[m] - accepted_at[m] for m in accepted_at if m in searchable]
    to_store = [stored[m] - accepted_at[m] for m in accepted_at if m in stored]
    return {
        "offered_events_per_s": round(rate),
        "achieved_events_per_s": round(load.accepted / (load.finished - load.started)),
        "markers": len(accepted_at),
        "markers_never_seen": len(accepted_at) - len(to_search),
        "searchable_p50_s": round(pct(to_search, 0.5), 3) if to_search else None,
        "searchable_p99_s": round(pct(to_search, 0.99), 3) if to_search else None,
        "searchable_max_s": round(max(to_search), 3) if to_search else None,
        "indexed_p50_s": round(pct(to_store, 0.5), 3) if to_store else None,
        "indexed_p99_s": round(pct(to_store, 0.99), 3) if to_store else None,
        "gateway_p50_ms": round(pct(load.latencies, 0.5) * 1000, 1),
        "gateway_p99_ms": round(pct(load.latencies, 0.99) * 1000, 1),
        "statuses": load.statuses,
        "cores": CpuMeter.cores(before, after),
        # Every marker's latencies in send order, ms, to look for a pattern in the tail.
        "indexed_ms": [
            round((stored[m] - accepted_at[m]) * 1000) for m in accepted_at if m in stored
        ],
        "searchable_ms": [
            round((searchable[m] - accepted_at[m]) * 1000) for m in accepted_at if m in searchable
        ],
        "rss_mb_median": {n: round(statistics.median(s[n] for s in samples), 1) for n in SERVICES}
        if samples
        else rss(run.pipeline),
    }


QUERIES: dict[str, qs.QueryEventsRequest] = {
    "newest 50, no filter": qs.QueryEventsRequest(page_size=50),
    "user + event name": qs.QueryEventsRequest(
        filter=qs.EventFilter(user_ids=["user-7"], event_names=["tap"]), page_size=50
    ),
    "text + country + os": qs.QueryEventsRequest(
        filter=qs.EventFilter(text="red shoes", country_codes=["GB"], device_os=["iOS"]),
        page_size=50,
    ),
}


async def query_phase(run: Run) -> dict[str, Any]:
    """QueryEvents against the raw `_search` of the same body, calls alternating."""
    total = await run.search.count(run.pattern)
    out: dict[str, Any] = {"indexed_events": total, "kinds": {}}
    target = f"127.0.0.1:{run.pipeline.indexer_grpc_port}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = qs_grpc.QueryServiceStub(channel)
        # The floor of any gRPC call to the indexer: grpc.health.v1 Check, no OpenSearch.
        health = health_pb2_grpc.HealthStub(channel)
        floor: list[float] = []
        for n in range(QUERY_WARMUP + run.args.queries):
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            if n >= QUERY_WARMUP:
                floor.append(time.perf_counter() - started)
        out["grpc_floor_p50_ms"] = round(statistics.median(floor) * 1000, 3)
        for label, request in QUERIES.items():
            body, _ = queries.search_body(request)
            raw_body = orjson.dumps(body)
            via_grpc: list[float] = []
            via_raw: list[float] = []
            rounds = QUERY_WARMUP + run.args.queries
            for n in range(rounds):
                started = time.perf_counter()
                reply = await stub.QueryEvents(request)
                took_grpc = time.perf_counter() - started
                started = time.perf_counter()
                answer = await run.search.search_raw(
                    run.pattern, raw_body, queries.EVENTS_FILTER_PATH
                )
                took_raw = time.perf_counter() - started
                if n >= QUERY_WARMUP:
                    via_grpc.append(took_grpc)
                    via_raw.append(took_raw)
            raw_total = int(answer.get("hits", {}).get("total", {}).get("value", 0))
            if raw_total != reply.total_size:
                raise RuntimeError(f"{label}: gRPC total {reply.total_size}, raw {raw_total}")
            grpc_p50, raw_p50 = statistics.median(via_grpc), statistics.median(via_raw)
            out["kinds"][label] = {
                "hits": raw_total,
                "returned": len(reply.events),
                "grpc_p50_ms": round(grpc_p50 * 1000, 2),
                "grpc_p99_ms": round(pct(via_grpc, 0.99) * 1000, 2),
                "raw_p50_ms": round(raw_p50 * 1000, 2),
                "raw_p99_ms": round(pct(via_raw, 0.99) * 1000, 2),
                "ratio_p50": round(grpc_p50 / raw_p50, 3),
            }
    return out


def spread(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


async def phases(
    args: argparse.Namespace, tag: str, pipeline: Pipeline, nats_port: int
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.connections + 8)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sender = _load.Sender(session, pipeline.gateway.base_url, WRITE_KEY)
        search = Search(session, args.opensearch_url)
        run = Run(
            args=args,
            tag=tag,
            pipeline=pipeline,
            search=search,
            session=session,
            opensearch_pid=_system.local_process(await search.node_pid(), "opensearch"),
            nats_pid=_system.find_process("nats-server", f"{nats_port}"),
        )
        if args.warmup:
            # A fresh OpenSearch compiles its hot paths during the first flood: not measured.
            row = await flood_round(run, sender, -1, events=args.warmup)
            _progress("warm-up flood (not reported)", row, "e2e_events_per_s")
        floods = []
        for number in range(args.rounds):
            row = await flood_round(run, sender, number)
            floods.append(row)
            _progress(f"flood {number + 1}/{args.rounds}", row, "e2e_events_per_s")
        run.results["flood"] = {
            "rounds": floods,
            **{
                key: spread(floods, key)
                for key in (
                    "gateway_events_per_s",
                    "gateway_p50_ms",
                    "gateway_p99_ms",
                    "e2e_events_per_s",
                    "raw_bulk_docs_per_s",
                    "raw_bulk_acked_docs_per_s",
                    "ratio_e2e_raw",
                    "indexer_docs_per_bulk",
                    "indexer_bulk_mean_ms",
                )
            },
        }
        if not args.skip_latency:
            rate = args.half_rate or run.results["flood"]["e2e_events_per_s"]["median"] / 2
            halves = []
            for number in range(args.rounds):
                row = await latency_round(run, sender, number, rate)
                halves.append(row)
                _progress(f"half load {number + 1}/{args.rounds}", row, "searchable_p99_s")
            run.results["half_load"] = {
                "rounds": halves,
                **{
                    key: spread(halves, key)
                    for key in (
                        "searchable_p50_s",
                        "searchable_p99_s",
                        "indexed_p50_s",
                        "indexed_p99_s",
                        "gateway_p99_ms",
                    )
                },
            }
        if not args.skip_query:
            await _top_up(run, sender)
            run.results["query"] = await query_phase(run)
        run.results["rss_mb_idle_end"] = rss(run.pipeline)
    return run.results


async def _top_up(run: Run, sender: _load.Sender) -> None:
    """Floods more events until the index holds `--query-events` (queries need a real size)."""
    missing = run.args.query_events - run.expected
    if missing <= 0:
        return
    batches = _load.make_batches(run.tag, "q", missing, run.args.batch)
    load = await sender.flood(batches, run.args.connections)
    run.expected += load.accepted
    await run.search.wait_count(run.pattern, run.expected, timeout_s=VISIBLE_TIMEOUT_S)


def _progress(label: str, row: dict[str, Any], key: str) -> None:
    print(f"  {label}: {key} = {row.get(key)}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each phase")
    parser.add_argument("--events", type=int, default=100_000, help="events per flood round")
    parser.add_argument(
        "--warmup",
        type=int,
        default=30_000,
        help="events of an unreported first flood that warms OpenSearch and the services (0: none)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per half-load round")
    parser.add_argument("--half-rate", type=float, default=0.0, help="events/s (0: measured)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--queries", type=int, default=200, help="calls per query kind")
    parser.add_argument(
        "--query-events",
        type=int,
        default=MIN_QUERY_EVENTS,
        help="events indexed before the query phase (topped up when the floods made fewer)",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--refresh-interval",
        default="",
        help="index.refresh_interval of the pipeline's indices (the indexer's "
        "INDEXER_REFRESH_INTERVAL) and of the raw baseline's (default: the indexer's default)",
    )
    parser.add_argument("--skip-query", action="store_true")
    parser.add_argument(
        "--profile",
        default="",
        help="comma list of services to run under pyinstrument (figures then carry its cost)",
    )
    parser.add_argument(
        "--opensearch-url",
        default=os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200"),
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SERVICE:NAME=VALUE",
        help="an environment setting for one service (repeatable), "
        "e.g. enricher:ENRICHER_FETCH_TIMEOUT_S=0.2",
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".local" / "bench")
    args = parser.parse_args(argv)
    for item in args.set:
        service, _, setting = item.partition(":")
        if service not in SERVICES or "=" not in setting:
            parser.error(f"--set {item!r}: expected SERVICE:NAME=VALUE, SERVICE one of {SERVICES}")
    unknown = {s for s in args.profile.split(",") if s} - set(SERVICES)
    if unknown:
        parser.error(f"--profile: unknown services {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        with urllib.request.urlopen(args.opensearch_url, timeout=5):
            pass
    except OSError as err:
        print(f"OpenSearch at {args.opensearch_url} does not answer: {err}", file=sys.stderr)
        print("start it (`make run`) or set OPENSEARCH_URL / --opensearch-url", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = "b" + stamp.lower()
    profiled = [s for s in args.profile.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": stamp,
        "machine_start": _system.machine(),
        "options": {k: str(v) for k, v in vars(args).items()},
        "code": _code_state(),
    }
    with tempfile.TemporaryDirectory(prefix="pipebench-") as tmp:
        nats = NatsProcess(Path(tmp) / "nats")
        nats.start()
        env_path = os.pathsep.join([str(ROOT), str(ROOT / "gen")])
        overrides: dict[str, dict[str, str]] = {
            "gateway": {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32"},
        }
        if args.refresh_interval:
            overrides.setdefault("indexer", {})["INDEXER_REFRESH_INTERVAL"] = args.refresh_interval
        for item in args.set:
            service, _, setting = item.partition(":")
            name, _, value = setting.partition("=")
            overrides.setdefault(service, {})[name] = value
        for name in profiled:
            overrides.setdefault(name, {}).update(
                {
                    "PYTHONPATH": os.pathsep.join([str(HERE / "profiling"), env_path]),
                    "BENCH_PYINSTRUMENT_OUT": str(args.out / f"{stamp}-{name}"),
                }
            )
        pipeline = Pipeline(
            nats_url=nats.url,
            opensearch_url=args.opensearch_url,
            index_prefix=f"bench-{tag}-p-",
            log_dir=Path(tmp),
            env={"LOG_LEVEL": "WARNING", "PYTHONPATH": env_path},
            overrides=overrides,
        )
        try:
            pipeline.start()
            results["rss_mb_idle_start"] = rss(pipeline)
            results.update(asyncio.run(phases(args, tag, pipeline, nats.port)))
        finally:
            pipeline.stop()
            nats.stop()
            asyncio.run(_cleanup(args.opensearch_url, tag))
    results["machine_end"] = _system.machine()
    results["app_id"] = APP_ID
    if profiled:
        results["profiles"] = {
            name: _profile.summarise(args.out / f"{stamp}-{name}.pyisession") for name in profiled
        }
    path = args.out / f"{stamp}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(_report.table(results))
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def _code_state() -> dict[str, Any]:
    """The commit measured, and the files that differ from it (the tree may be mid-edit)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    changed = [
        line[3:]
        for line in git("status", "--porcelain").splitlines()
        if line[3:].split("/", 1)[0] in (*SERVICES, "pipeline")
    ]
    return {"head": git("rev-parse", "--short", "HEAD"), "service_files_changed": changed}


async def _cleanup(url: str, tag: str) -> None:
    """Deletes every index and template this run created (all named bench-<tag>-...)."""
    async with aiohttp.ClientSession() as session:
        await Search(session, url).drop_all(f"bench-{tag}-")


if __name__ == "__main__":
    sys.exit(main())
