"""`tpipe status`: one screen on the running pipeline, refreshed every few seconds.

Per stage it shows the event rate and total (from each service's `/metrics`, scraped
twice), the consumer lag and the work in flight, the dead-letter rate and readiness;
then the size of the DLQ stream (from NATS) and OpenSearch's cluster health. A consumer
stage whose /metrics does not answer has its lag read from its durable consumer in NATS
instead, marked as such. It reads only: nothing is created on any server.

`--once` prints one snapshot and exits: 0 when every part answers and is ready (and
OpenSearch is not red, and the indexer's intake is not held), 2 when OpenSearch refuses the
credentials, 3 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import nats
import orjson
from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import ImproperlyConfigured, OpenSearchException, TransportError
from prometheus_client.parser import text_string_to_metric_families

from pipeline import subjects
from pipeline.config import load
from pipeline.errors import ConfigError
from pipeline.search import client_options
from pipeline.settings import OpenSearchSettings
from tpipe._args import (
    Subparsers,
    add_command,
    add_format_option,
    base_url,
    env_default,
    http_url,
    positive_float,
    url_list,
)
from tpipe._words import counted
from tpipe.errors import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, UsageError

# OpenSearch's answers that say its credentials are refused (not that it is down).
REFUSED_STATUSES = (401, 403)
# Defaults match `make run`.
DEFAULT_GATEWAY_URL = "http://127.0.0.1:3000"
DEFAULT_ENRICHER_URL = "http://127.0.0.1:8081"
DEFAULT_INDEXER_URL = "http://127.0.0.1:8082"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_OPENSEARCH_URL = "http://127.0.0.1:9200"
DEFAULT_INTERVAL_S = 2.0
DEFAULT_SAMPLE_S = 1.0  # --once: seconds between the two scrapes a rate is made of
REQUEST_TIMEOUT_S = 3.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"
# A lag read from NATS, not from the stage's /metrics, is marked with this in the table.
FROM_NATS = "*"

EXAMPLES = """
  tpipe status
  tpipe status --once
  tpipe status --once --format json | jq .stages
  tpipe status --interval 5 --nats nats://10.0.0.5:4222 --opensearch http://10.0.0.6:9200
"""


@dataclass(frozen=True)
class StageMetrics:
    """Which samples of a service's /metrics make its row (sums over the label matches)."""

    events: tuple[tuple[str, Mapping[str, str]], ...]
    rejected: tuple[tuple[str, Mapping[str, str]], ...] = ()
    dead_lettered: tuple[tuple[str, Mapping[str, str]], ...] = ()
    lag: str = ""
    in_flight: str = ""
    held: str = ""  # a gauge that is 1 while the stage has stopped taking work in
    held_state: str = ""  # the state shown then, in place of "ready"


STAGES: dict[str, StageMetrics] = {
    "gateway": StageMetrics(
        events=(("gateway_events_total", {"outcome": "accepted"}),),
        rejected=(("gateway_events_total", {"outcome": "rejected"}),),
        in_flight="gateway_requests_in_flight",
    ),
    "enricher": StageMetrics(
        events=(("enricher_events_total", {}),),
        dead_lettered=(("enricher_dlq_total", {}),),
        lag="enricher_consumer_pending",
        in_flight="enricher_messages_in_progress",
    ),
    "indexer": StageMetrics(
        events=(
            ("indexer_documents_total", {"outcome": "created"}),
            ("indexer_documents_total", {"outcome": "duplicate"}),
        ),
        rejected=(("indexer_documents_total", {"outcome": "rejected"}),),
        dead_lettered=(("indexer_dlq_total", {}),),
        lag="indexer_consumer_pending",
        in_flight="indexer_messages_in_progress",
        held="indexer_intake_held",
        held_state="ready, intake held: OpenSearch refuses writes",
    ),
}


@dataclass(frozen=True)
class Consumer:
    """A stage's durable consumer, named as the stage's own setting names it."""

    stream: str
    env: str
    default: str

    @property
    def name(self) -> str:
        """The consumer's name: the stage's variable when set, as the service reads it."""
        return env_default(self.env, self.default)


# Where a stage whose /metrics does not answer has its lag read from.
CONSUMERS: dict[str, Consumer] = {
    "enricher": Consumer(subjects.RAW_STREAM, "ENRICHER_CONSUMER_NAME", "enricher"),
    "indexer": Consumer(subjects.ENRICHED_STREAM, "INDEXER_CONSUMER_NAME", "indexer"),
}


@dataclass
class Scrape:
    """One service's readiness and /metrics samples at one moment."""

    at: float
    ready: bool = False
    reason: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def total(self, wanted: Iterable[tuple[str, Mapping[str, str]]]) -> float:
        """The sum of the samples named, whose labels include the given ones."""
        result = 0.0
        for name, labels in wanted:
            for found, found_labels, value in self.samples:
                if found == name and all(found_labels.get(k) == v for k, v in labels.items()):
                    result += value
        return result

    def gauge(self, name: str) -> float | None:
        """A gauge's value, or None when the service does not expose it."""
        for found, _, value in self.samples:
            if found == name:
                return value
        return None


@dataclass
class StageRow:
    """One line of the table."""

    stage: str
    state: str
    events_per_s: float | None = None
    events_total: float | None = None
    rejected_per_s: float | None = None
    dead_lettered_per_s: float | None = None
    lag: float | None = None
    in_flight: float | None = None
    lag_from_nats: bool = False  # the service did not say: its consumer's, read from NATS


@dataclass
class Snapshot:
    """What one refresh shows."""

    at: str
    window_s: float
    stages: list[StageRow]
    dlq: dict[str, object]
    opensearch: dict[str, object]

    @property
    def healthy(self) -> bool:
        """Every service ready, NATS and OpenSearch answering, OpenSearch not red."""
        return (
            all(row.state == "ready" for row in self.stages)
            and "error" not in self.dlq
            and "error" not in self.opensearch
            and self.opensearch.get("status") != "red"
        )

    @property
    def exit_code(self) -> int:
        """--once: 0 when healthy, 2 when OpenSearch refuses the credentials (a setting to
        fix, not an outage to wait out), else 3."""
        if self.healthy:
            return EXIT_OK
        if self.opensearch.get("http_status") in REFUSED_STATUSES:
            return EXIT_USAGE
        return EXIT_UNAVAILABLE


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text as (sample name, labels, value)."""
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def stage_row(stage: str, before: Scrape, after: Scrape) -> StageRow:
    """A stage's line from two scrapes: rates over the time between them, gauges from the last."""
    spec = STAGES[stage]
    state = _state(after, spec)
    if after.at <= before.at or not after.samples or not before.samples:
        return StageRow(stage, state)
    elapsed = after.at - before.at

    def rate(wanted: Sequence[tuple[str, Mapping[str, str]]]) -> float | None:
        if not wanted:
            return None
        return max(after.total(wanted) - before.total(wanted), 0.0) / elapsed

    return StageRow(
        stage=stage,
        state=state,
        events_per_s=rate(spec.events),
        events_total=after.total(spec.events),
        rejected_per_s=rate(spec.rejected),
        dead_lettered_per_s=rate(spec.dead_lettered),
        lag=after.gauge(spec.lag) if spec.lag else None,
        in_flight=after.gauge(spec.in_flight) if spec.in_flight else None,
    )


def _state(scrape: Scrape, spec: StageMetrics) -> str:
    if not scrape.ready:
        return scrape.reason or "not ready"
    # Ready (it answers queries) yet taking nothing in: events wait in the stream.
    if spec.held and scrape.gauge(spec.held):
        return spec.held_state
    return "ready"


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with client.get(url) as answer:
        return answer.status, await answer.read()


async def scrape(client: aiohttp.ClientSession, base_url: str) -> Scrape:
    """Readiness and metrics of one service; an unreachable one says so."""
    at = time.monotonic()
    try:
        ready_status, ready_body = await _get(client, f"{base_url}/readyz")
        metrics_status, metrics_body = await _get(client, f"{base_url}/metrics")
    except (aiohttp.ClientError, TimeoutError) as err:
        return Scrape(at, reason=f"unreachable ({type(err).__name__})")
    if metrics_status != 200:
        return Scrape(at, reason=f"unreachable (metrics answered {metrics_status})")
    try:
        samples = parse_metrics(metrics_body.decode(errors="replace"))
    except ValueError:  # another server on the port, a proxy's error page
        return Scrape(at, reason="unreachable (not Prometheus metrics)")
    reason = ""
    if ready_status != 200:
        with contextlib.suppress(ValueError, AttributeError):
            reason = f"not ready: {orjson.loads(ready_body).get('reason', '')}".rstrip(": ")
    return Scrape(at, ready=ready_status == 200, reason=reason, samples=samples)


@dataclass
class NatsView:
    """What status reads from NATS: the DLQ stream's size (or the error), and the messages
    each stage's durable consumer has yet to settle (those it could be read for)."""

    dlq: dict[str, object]
    pending: dict[str, int] = field(default_factory=dict)


async def nats_view(nats_urls: Sequence[str], consumers: Mapping[str, Consumer]) -> NatsView:
    """The DLQ stream's messages and bytes, and per stage of `consumers` its consumer's
    messages not yet delivered plus those delivered and not yet acked: all that waits for
    the stage. Read on every snapshot, alongside the scrapes, and used only for a stage
    whose /metrics gave no lag (`with_nats_lag`); the three requests go out together."""

    async def quiet(_: Exception) -> None:
        return None  # the failure is shown once, in the snapshot

    try:
        # One attempt per server (nats-py retries forever with 0), and a bound on the whole.
        nc = await asyncio.wait_for(
            nats.connect(
                servers=list(nats_urls),
                connect_timeout=REQUEST_TIMEOUT_S,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=quiet,
            ),
            timeout=REQUEST_TIMEOUT_S * (len(nats_urls) + 1),
        )
    except Exception as err:  # any connect failure is shown, not raised
        return NatsView({"error": f"nats unreachable ({type(err).__name__})"})
    try:
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        stages = list(consumers)

        async def lag(consumer: Consumer) -> int | None:
            try:
                info = await js.consumer_info(consumer.stream, consumer.name)
            except Exception:  # no consumer yet, a timeout: no lag shown
                return None
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

        # At once: on a slow JetStream each request may wait out its whole timeout.
        lags, stream = await asyncio.gather(
            asyncio.gather(*(lag(consumers[stage]) for stage in stages)),
            js.stream_info(subjects.DLQ_STREAM),
            return_exceptions=True,
        )
        pending: dict[str, int] = {}
        if isinstance(lags, list):
            pending = {s: n for s, n in zip(stages, lags, strict=True) if n is not None}
        if isinstance(stream, BaseException):  # a missing stream or a timeout is shown
            return NatsView({"error": f"{subjects.DLQ_STREAM}: {type(stream).__name__}"}, pending)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    dlq: dict[str, object] = {
        "stream": subjects.DLQ_STREAM,
        "messages": int(stream.state.messages),
        "bytes": int(stream.state.bytes),
    }
    return NatsView(dlq, pending)


def with_nats_lag(row: StageRow, pending: Mapping[str, int]) -> StageRow:
    """`row`, its lag read from NATS when the stage's /metrics gave none."""
    if row.lag is not None or row.stage not in pending:
        return row
    return dataclasses.replace(row, lag=float(pending[row.stage]), lag_from_nats=True)


class ClusterHealth:
    """OpenSearch's cluster health (status, nodes, shards), asked of each URL in turn until
    one answers; with the TLS and credentials the indexer uses (OPENSEARCH_CA_CERTS,
    OPENSEARCH_VERIFY_CERTS, OPENSEARCH_USERNAME/PASSWORD)."""

    KEYS = ("status", "number_of_nodes", "active_shards", "unassigned_shards")

    def __init__(self, settings: OpenSearchSettings) -> None:
        # A failed request is shown once, in the snapshot, not also logged on stderr.
        logging.getLogger("opensearch").addHandler(logging.NullHandler())
        self._clients = [
            AsyncOpenSearch(
                **client_options(
                    dataclasses.replace(
                        settings, opensearch_url=(url,), opensearch_timeout_s=REQUEST_TIMEOUT_S
                    )
                )
            )
            for url in settings.opensearch_url
        ]

    async def get(self) -> dict[str, object]:
        """The health from the first URL that answers it, else the error."""
        refused: list[tuple[int, str]] = []
        failed: list[str] = []
        for client in self._clients:
            try:
                doc: Any = await client.cluster.health()
            except TransportError as err:
                if isinstance(err.status_code, int):
                    refused.append((err.status_code, err.error))
                else:
                    failed.append(_cause(err))
                continue
            except OpenSearchException as err:  # an answer that is not JSON: not OpenSearch
                failed.append(type(err).__name__)
                continue
            except ImproperlyConfigured as err:  # TLS set up on the first request
                raise UsageError(
                    f"OpenSearch's TLS: {err} (OPENSEARCH_CA_CERTS, OPENSEARCH_VERIFY_CERTS)"
                ) from None
            if isinstance(doc, dict):
                return {key: doc.get(key) for key in self.KEYS}
            failed.append("not a cluster health")
        if refused:  # it answered: an error status says more than a node that is down
            status, error = refused[0]
            if status in REFUSED_STATUSES:
                hint = "check OPENSEARCH_USERNAME/PASSWORD"
            else:  # OpenSearch's error type, or the start of a proxy's page
                hint = " ".join(str(error).split())[:120] or "no cluster health"
            return {"error": f"opensearch answered {status}: {hint}", "http_status": status}
        where = f" at all {len(failed)} URLs" if len(failed) > 1 else ""
        return {"error": f"opensearch unreachable{where} ({failed[0]})"}

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()


def _cause(err: TransportError) -> str:
    """What kept a request from an answer: aiohttp's error, with a hint for TLS."""
    cause = err.info if isinstance(err.info, BaseException) else err
    name = type(cause).__name__
    if isinstance(cause, aiohttp.ClientSSLError):
        return f"{name}: check OPENSEARCH_CA_CERTS, OPENSEARCH_VERIFY_CERTS"
    return name


def opensearch_settings(urls: Sequence[str]) -> OpenSearchSettings:
    """The OpenSearch settings of the environment, for `urls` (--opensearch)."""
    try:
        settings = load(OpenSearchSettings)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if not urls:
        raise UsageError("--opensearch names no URL")
    if settings.opensearch_ca_certs and not os.path.exists(settings.opensearch_ca_certs):
        raise UsageError(f"OPENSEARCH_CA_CERTS={settings.opensearch_ca_certs!r}: no such file")
    return dataclasses.replace(settings, opensearch_url=tuple(urls))


@dataclass(frozen=True)
class Targets:
    """Where each part of the pipeline is."""

    services: dict[str, str]
    nats: tuple[str, ...]
    opensearch: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Targets:
        """The options' URLs; UsageError for one that is not an http(s) URL with a host, or,
        for a service, not a base URL (OpenSearch may sit under a path, behind a proxy)."""
        return cls(
            services={
                "gateway": _http_url(args.gateway, "--gateway", "TPIPE_GATEWAY_URL"),
                "enricher": _http_url(args.enricher, "--enricher", "TPIPE_ENRICHER_URL"),
                "indexer": _http_url(args.indexer, "--indexer", "TPIPE_INDEXER_URL"),
            },
            nats=tuple(url_list(args.nats)),
            # OPENSEARCH_URL may list several nodes: any one tells the cluster's health.
            opensearch=tuple(
                _http_url(url.strip(), "--opensearch", "OPENSEARCH_URL", base=False)
                for url in args.opensearch.split(",")
                if url.strip()
            ),
        )


def _http_url(url: str, option: str, env: str, *, base: bool = True) -> str:
    try:
        return base_url(url) if base else http_url(url)
    except UsageError as err:  # said with where the URL came from
        raise UsageError(f"{option} (or {env}): {err}") from None


class Monitor:
    """Scrapes the services; each refresh compares with the scrape before it."""

    def __init__(
        self, targets: Targets, client: aiohttp.ClientSession, opensearch: ClusterHealth
    ) -> None:
        self._targets = targets
        self._client = client
        self._opensearch = opensearch
        self._last: dict[str, Scrape] = {}

    async def _scrape_all(self) -> dict[str, Scrape]:
        names = list(self._targets.services)
        scrapes = await asyncio.gather(
            *(scrape(self._client, self._targets.services[name]) for name in names)
        )
        return dict(zip(names, scrapes, strict=True))

    async def prime(self) -> None:
        """Takes the first scrape the next snapshot's rates start from."""
        self._last = await self._scrape_all()

    async def snapshot(self) -> Snapshot:
        """Scrapes again and makes the snapshot (rates since the previous scrape)."""
        current, from_nats, health = await asyncio.gather(
            self._scrape_all(),
            nats_view(self._targets.nats, CONSUMERS),
            self._opensearch.get(),
        )
        before = self._last or current
        rows = [
            with_nats_lag(stage_row(name, before[name], current[name]), from_nats.pending)
            for name in current
        ]
        windows = [current[n].at - before[n].at for n in current if current[n].at > before[n].at]
        self._last = current
        return Snapshot(
            at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            window_s=round(max(windows, default=0.0), 3),
            stages=rows,
            dlq=from_nats.dlq,
            opensearch=health,
        )


def _number(value: float | None, *, rate: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if rate else f"{value:,.0f}"


def render(snapshot: Snapshot) -> list[str]:
    """The snapshot as the screen's lines."""
    header = ("STAGE", "STATE", "EVENTS/S", "EVENTS", "REJECTED/S", "DLQ/S", "LAG", "IN FLIGHT")
    rows = [header] + [
        (
            row.stage,
            row.state,
            _number(row.events_per_s, rate=True),
            _number(row.events_total),
            _number(row.rejected_per_s, rate=True),
            _number(row.dead_lettered_per_s, rate=True),
            _number(row.lag) + (FROM_NATS if row.lag_from_nats else ""),
            _number(row.in_flight),
        )
        for row in snapshot.stages
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [
        f"telemetry pipeline status at {snapshot.at} (rates over {snapshot.window_s:.1f} s)",
        "",
    ]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    if any(row.lag_from_nats for row in snapshot.stages):
        lines.append(
            f"{FROM_NATS} LAG read from NATS (the stage's /metrics did not answer): its "
            "consumer's messages not yet delivered or not yet acked"
        )
    lines.append("")
    dlq = snapshot.dlq
    if "error" in dlq:
        lines.append(f"DLQ: {dlq['error']}")
    else:
        messages = _counted(dlq["messages"], "message", spec=",")
        lines.append(f"DLQ {dlq['stream']}: {messages}, {_counted(dlq['bytes'], 'byte', spec=',')}")
    health = snapshot.opensearch
    if "error" in health:
        lines.append(f"OpenSearch: {health['error']}")
    else:
        lines.append(
            f"OpenSearch: {health['status']}, {_counted(health['number_of_nodes'], 'node')}, "
            f"{_counted(health['active_shards'], 'active shard')}, "
            f"{health['unassigned_shards']} unassigned"
        )
    return lines


def _counted(value: object, noun: str, *, spec: str = "") -> str:
    """`counted` for a number of an answer; anything else (OpenSearch's health without the
    key, None) is shown as it is, with the plural."""
    return counted(value, noun, spec=spec) if isinstance(value, int) else f"{value} {noun}s"


def _print(snapshot: Snapshot, fmt: str, *, clear: bool) -> None:
    if fmt == "json":
        doc = {**asdict(snapshot), "healthy": snapshot.healthy}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        text = "\n".join(render(snapshot)) + "\n"
        sys.stdout.write((CLEAR_SCREEN if clear else "") + text)
    sys.stdout.flush()


async def status(args: argparse.Namespace) -> int:
    """Runs the command: one snapshot with --once, else a refresh every --interval seconds."""
    targets = Targets.from_args(args)
    opensearch = ClusterHealth(opensearch_settings(targets.opensearch))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as client:
            monitor = Monitor(targets, client, opensearch)
            if args.once:
                await monitor.prime()
                await asyncio.sleep(args.sample)
                snapshot = await monitor.snapshot()
                _print(snapshot, args.format, clear=False)
                return snapshot.exit_code
            clear = args.format == "table" and sys.stdout.isatty()
            loop = asyncio.get_running_loop()
            main = asyncio.current_task()
            # SIGTERM ends it as Ctrl-C does (asyncio.run's cancel), from the first scrape
            # on: that one alone may take REQUEST_TIMEOUT_S with the services away.
            if main is not None:
                loop.add_signal_handler(signal.SIGTERM, main.cancel)
            try:
                await monitor.prime()
                while True:
                    await asyncio.sleep(args.interval)
                    _print(await monitor.snapshot(), args.format, clear=clear)
            except asyncio.CancelledError:  # Ctrl-C or SIGTERM: the way out of the live view
                return EXIT_OK
            finally:
                loop.remove_signal_handler(signal.SIGTERM)
    finally:
        await opensearch.close()


def register(sub: Subparsers, name: str) -> None:
    """Adds `status` (the people commands' registration)."""
    parser = add_command(
        sub,
        name,
        summary="live one-screen status: rates per stage, lag, DLQ size, OpenSearch health",
        description="Shows, per stage, events per second and in total, rejections and dead "
        "letters per second, consumer lag and work in flight (from each service's /metrics; "
        "the lag of a stage that does not answer from its consumer in NATS, marked *), "
        "the DLQ stream's size and OpenSearch's health. Refreshes until Ctrl-C or SIGTERM "
        "(exit 0); --once prints one snapshot and exits 0 when all is ready and flowing, 2 "
        "when OpenSearch refuses the credentials, 3 otherwise. OpenSearch's TLS and "
        "credentials are the indexer's settings: OPENSEARCH_CA_CERTS, "
        "OPENSEARCH_VERIFY_CERTS, OPENSEARCH_USERNAME, OPENSEARCH_PASSWORD.",
        examples=EXAMPLES,
        run=status,
    )
    when = parser.add_argument_group("refresh")
    when.add_argument("--once", action="store_true", help="print one snapshot and exit")
    when.add_argument(
        "--interval",
        type=positive_float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL_S:g})",
    )
    when.add_argument(
        "--sample",
        type=positive_float,
        default=DEFAULT_SAMPLE_S,
        help=f"--once: seconds between the two scrapes (default {DEFAULT_SAMPLE_S:g})",
    )
    add_format_option(
        parser, {"table": "one screen to read", "json": "each snapshot as one JSON object"}
    )
    where = parser.add_argument_group("where the pipeline is")
    for option, env, default, what in (
        ("--gateway", "TPIPE_GATEWAY_URL", DEFAULT_GATEWAY_URL, "gateway base URL"),
        ("--enricher", "TPIPE_ENRICHER_URL", DEFAULT_ENRICHER_URL, "enricher /metrics base URL"),
        ("--indexer", "TPIPE_INDEXER_URL", DEFAULT_INDEXER_URL, "indexer /metrics base URL"),
        ("--nats", "NATS_URL", DEFAULT_NATS_URL, "NATS URLs, comma-separated"),
        (
            "--opensearch",
            "OPENSEARCH_URL",
            DEFAULT_OPENSEARCH_URL,
            "OpenSearch URLs, comma-separated",
        ),
    ):
        where.add_argument(
            option,
            default=env_default(env, default),
            help=f"{what} (env {env}; default {default})",
        )


def add_parser(subparsers: Subparsers) -> None:
    """Adds the `status` subcommand to `subparsers`."""
    register(subparsers, "status")


def run(args: argparse.Namespace) -> int:
    """Runs `tpipe status` with parsed arguments; returns the exit code."""
    try:
        return asyncio.run(status(args))
    except KeyboardInterrupt:
        return EXIT_OK
