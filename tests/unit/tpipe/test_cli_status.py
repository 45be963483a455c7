"""`tpipe status`: a stage's state from its readiness and its /metrics, and from NATS the
lag of a stage that does not answer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nats.js import api as js_api

from enricher import config as enricher_config
from indexer import config as indexer_config
from tests.servers import free_port
from tests.unit.nats_fakes import FakeJetStream, FakeNats
from tpipe import _cmd_status, _commands
from tpipe._cmd_status import Scrape, Snapshot, StageRow, Targets, render, scrape, stage_row

_HEALTH = {"status": "green", "number_of_nodes": 1, "active_shards": 1, "unassigned_shards": 0}
_DLQ = {"stream": "TELEMETRY_DLQ", "messages": 0, "bytes": 0}


def _indexer(at: float, *, held: float, created: float) -> Scrape:
    return Scrape(
        at,
        ready=True,
        samples=[
            ("indexer_intake_held", {}, held),
            ("indexer_documents_total", {"outcome": "created"}, created),
            ("indexer_consumer_pending", {}, 40.0),
        ],
    )


def _healthy(row: StageRow) -> bool:
    return Snapshot(at="", window_s=2.0, stages=[row], dlq=_DLQ, opensearch=_HEALTH).healthy


def test_a_held_intake_shows_on_a_ready_indexer_and_fails_once() -> None:
    row = stage_row("indexer", _indexer(0.0, held=1, created=10), _indexer(2.0, held=1, created=10))
    assert row.state == "ready, intake held: OpenSearch refuses writes"
    assert row.events_per_s == 0.0
    assert row.lag == 40.0
    assert _healthy(row) is False


def test_an_indexer_taking_events_in_is_ready() -> None:
    row = stage_row("indexer", _indexer(0.0, held=1, created=10), _indexer(2.0, held=0, created=30))
    assert row.state == "ready"
    assert row.events_per_s == 10.0
    assert _healthy(row) is True


def test_the_first_scrape_alone_already_shows_the_held_intake() -> None:
    only = _indexer(1.0, held=1, created=0)
    assert stage_row("indexer", only, only).state.startswith("ready, intake held")


def test_not_ready_wins_over_held() -> None:
    scrape = Scrape(1.0, ready=False, reason="not ready: opensearch not answering")
    scrape.samples = [("indexer_intake_held", {}, 1.0)]
    assert stage_row("indexer", scrape, scrape).state == "not ready: opensearch not answering"


async def test_metrics_that_are_not_prometheus_text_make_the_stage_unreachable() -> None:
    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def welcome_page(_: web.Request) -> web.Response:
        return web.Response(text="<html>Welcome</html>")

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", welcome_page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as client:
            found = await scrape(client, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()

    assert found.reason == "unreachable (not Prometheus metrics)"
    row = stage_row("gateway", found, found)
    assert row.state == "unreachable (not Prometheus metrics)"
    assert _healthy(row) is False  # --once exits 3


def _signalled(
    proc: subprocess.Popen[str], sig: signal.Signals, *, after_s: float = 0.0
) -> tuple[str, str]:
    """The first line `proc` writes on stdout, and its stderr once `sig`, sent `after_s`
    after that line, has ended it; a failed test leaves no live view running."""
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        time.sleep(after_s)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return first, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_the_live_view_with_success(sig: signal.Signals) -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing answers
    command = [sys.executable, "-m", "tpipe", "status", "--interval", "0.2"]
    for flag in ("--gateway", "--enricher", "--indexer", "--opensearch"):
        command += [flag, closed]
    proc = subprocess.Popen(
        [*command, "--nats", "nats://127.0.0.1:9"],
        cwd=Path(__file__).resolve().parents[3],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Its first view printed: past its imports, its SIGINT handling in place; then
    # refreshing, or waiting to.
    first, err = _signalled(proc, sig, after_s=1.0)
    assert "telemetry pipeline status" in first, (first, err)
    assert proc.returncode == 0, err
    assert "interrupted" not in err, err
    assert "Traceback" not in err, err


# `tpipe status` whose first scrape never ends (as one to services that are away takes
# REQUEST_TIMEOUT_S), after saying on stdout that it began.
_PRIME_HANGS = """
import asyncio, sys
from tpipe import _cmd_status, _commands

async def prime(self):
    print("priming", flush=True)
    await asyncio.Event().wait()

_cmd_status.Monitor.prime = prime
sys.exit(_commands.run(sys.argv[1:]))
"""


def test_sigterm_during_the_first_scrape_ends_the_live_view_with_success() -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing answers
    command = [sys.executable, "-c", _PRIME_HANGS, "status", "--nats", "nats://127.0.0.1:9"]
    for flag in ("--gateway", "--enricher", "--indexer", "--opensearch"):
        command += [flag, closed]
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        command,
        cwd=root,
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'gen'}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    began, err = _signalled(proc, signal.SIGTERM)
    assert began == "priming\n", err
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize(
    ("option", "env", "value"),
    [
        ("--gateway", "TPIPE_GATEWAY_URL", "127.0.0.1:3000"),
        ("--enricher", "TPIPE_ENRICHER_URL", "localhost:8081"),
        ("--indexer", "TPIPE_INDEXER_URL", "ftp://127.0.0.1:8082"),
        ("--opensearch", "OPENSEARCH_URL", "http://127.0.0.1:9200,127.0.0.1:9201"),
    ],
)
def test_a_url_without_http_scheme_is_a_usage_error(
    option: str,
    env: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Given as an option or by its environment variable: said before anything is asked."""
    closed = "http://127.0.0.1:9"  # discard port: nothing answers
    others = [
        arg
        for flag in ("--gateway", "--enricher", "--indexer", "--opensearch")
        if flag != option
        for arg in (flag, closed)
    ]
    base = ["status", "--once", "--sample", "0.05", "--nats", "nats://127.0.0.1:9", *others]
    bad = value.split(",")[-1]
    said = f"tpipe status: {option} (or {env}): {bad!r} is not an http(s) URL with a host\n"

    assert _commands.run([*base, option, value]) == 2
    assert capsys.readouterr().err == said

    monkeypatch.setenv(env, value)
    assert _commands.run(base) == 2
    assert capsys.readouterr().err == said


@pytest.mark.parametrize(
    ("option", "env"),
    [
        ("--gateway", "TPIPE_GATEWAY_URL"),
        ("--enricher", "TPIPE_ENRICHER_URL"),
        ("--indexer", "TPIPE_INDEXER_URL"),
    ],
)
def test_a_service_url_with_a_path_is_a_usage_error(
    option: str, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """status adds /readyz and /metrics to them, as send adds /v1/track to the gateway's."""
    closed = "http://127.0.0.1:9"  # discard port: nothing answers
    base = ["status", "--once", "--sample", "0.05", "--nats", "nats://127.0.0.1:9"]
    others = [arg for flag in ("--gateway", "--enricher", "--indexer") for arg in (flag, closed)]
    url = f"{closed}/metrics"
    said = (
        f"tpipe status: {option} (or {env}): {url!r} ends with /metrics, which the command"
        f" adds: give the base URL alone, {closed}\n"
    )

    assert _commands.run([*base, "--opensearch", closed, *others, option, url]) == 2
    assert capsys.readouterr().err == said


def test_an_opensearch_url_may_have_a_path() -> None:
    """OpenSearch may be served under a path, behind a proxy: its URL is taken whole."""
    args = _commands._parse(
        ["status", "--opensearch", "http://127.0.0.1:9/search/,http://127.0.0.1:9/other"]
    )

    targets = Targets.from_args(args)

    assert targets.opensearch == ("http://127.0.0.1:9/search", "http://127.0.0.1:9/other")


class Consumers(FakeJetStream):
    """JetStream with the pipeline's durable consumers: (undelivered, unacked) of each."""

    def __init__(self, pending: dict[tuple[str, str], tuple[int, int]]) -> None:
        super().__init__()
        self.streams = {name: js_api.StreamConfig(name=name) for name, _ in pending}
        self.streams["TELEMETRY_DLQ"] = js_api.StreamConfig(name="TELEMETRY_DLQ")
        self.pending = pending
        for stream, name in pending:
            self.consumers[(stream, name)] = js_api.ConsumerConfig(durable_name=name)

    async def consumer_info(self, stream: str, name: str, **_: Any) -> js_api.ConsumerInfo:
        info = await super().consumer_info(stream, name)
        info.num_pending, info.num_ack_pending = self.pending[(stream, name)]
        return info


def _connect_to(js: FakeJetStream, monkeypatch: pytest.MonkeyPatch) -> None:
    """status's NATS connection is to `js`."""

    async def connect(**_: Any) -> FakeNats:
        return FakeNats(js=js)

    monkeypatch.setattr(_cmd_status.nats, "connect", connect)


class NoOpenSearch:
    async def get(self) -> dict[str, object]:
        return {"error": "opensearch unreachable (ClientConnectorError)"}


async def test_the_lag_of_a_stage_that_does_not_answer_is_read_from_nats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = Consumers(
        {("TELEMETRY_RAW", "enricher"): (7, 3), ("TELEMETRY_ENRICHED", "indexer"): (40, 2)}
    )
    _connect_to(js, monkeypatch)
    closed = "http://127.0.0.1:9"  # discard port: nothing answers
    services = {"gateway": closed, "enricher": closed, "indexer": closed}
    targets = Targets(services=services, nats=("nats://nats:4222",), opensearch=(closed,))

    async with aiohttp.ClientSession() as client:
        monitor = _cmd_status.Monitor(targets, client, NoOpenSearch())  # type: ignore[arg-type]
        snapshot = await monitor.snapshot()

    lags = {row.stage: (row.lag, row.lag_from_nats) for row in snapshot.stages}
    # All that waits for the stage: not yet delivered, and delivered but not acked.
    assert lags == {"gateway": (None, False), "enricher": (10.0, True), "indexer": (42.0, True)}
    lines = render(snapshot)
    assert [line.split()[-2] for line in lines[4:6]] == ["10*", "42*"]
    assert any(line.startswith("* LAG read from NATS") for line in lines)


class AllAtOnce(Consumers):
    """Answers no request until all three of a snapshot (two consumers, the DLQ stream)
    have been asked: read one after another, the first would never be answered."""

    def __init__(self, pending: dict[tuple[str, str], tuple[int, int]]) -> None:
        super().__init__(pending)
        self.asked = 0
        self.all_asked = asyncio.Event()

    async def _wait_for_all(self) -> None:
        self.asked += 1
        if self.asked == 3:
            self.all_asked.set()
        await asyncio.wait_for(self.all_asked.wait(), timeout=5)

    async def consumer_info(self, stream: str, name: str, **_: Any) -> js_api.ConsumerInfo:
        await self._wait_for_all()
        return await super().consumer_info(stream, name)

    async def stream_info(self, name: str) -> js_api.StreamInfo:
        await self._wait_for_all()
        return await super().stream_info(name)


async def test_the_consumers_and_the_dlq_are_read_from_nats_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a slow JetStream each request may take its whole timeout: a snapshot waits for
    one such wait, not three in a row."""
    js = AllAtOnce(
        {("TELEMETRY_RAW", "enricher"): (1, 0), ("TELEMETRY_ENRICHED", "indexer"): (2, 0)}
    )
    _connect_to(js, monkeypatch)

    view = await _cmd_status.nats_view(["nats://nats:4222"], _cmd_status.CONSUMERS)

    assert view.pending == {"enricher": 1, "indexer": 2}
    assert view.dlq == _DLQ


def test_a_lag_the_stage_reports_is_not_replaced() -> None:
    row = StageRow("indexer", "ready", lag=4.0)
    assert _cmd_status.with_nats_lag(row, {"indexer": 100}) == row
    assert "* LAG read from NATS" not in "\n".join(
        render(Snapshot(at="", window_s=2.0, stages=[row], dlq=_DLQ, opensearch=_HEALTH))
    )


def test_the_consumers_are_the_ones_the_stages_read_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENRICHER_CONSUMER_NAME", raising=False)
    monkeypatch.delenv("INDEXER_CONSUMER_NAME", raising=False)
    assert _cmd_status.CONSUMERS["enricher"].name == enricher_config.DEFAULT_CONSUMER_NAME
    assert _cmd_status.CONSUMERS["indexer"].name == indexer_config.DEFAULT_CONSUMER_NAME

    monkeypatch.setenv("INDEXER_CONSUMER_NAME", "indexer-blue")
    assert _cmd_status.CONSUMERS["indexer"].name == "indexer-blue"
