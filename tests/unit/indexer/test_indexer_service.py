"""The indexer as a service, on real sockets, with NATS and OpenSearch stood in for: what it
serves and what its readiness says while they are away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.msg import Msg
from telemetry.v1 import event_pb2
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import service as service_module
from indexer.config import Config
from indexer.errors import SearchUnavailableError
from indexer.service import Indexer
from pipeline.config import load
from pipeline.settings import NatsSettings
from pipeline.tasks import cancel_and_wait
from tests.unit.nats_fakes import FakeJetStream, FakeNats, FakeSubscription
from tests.unit.polling import until


class Nats:
    """natsconn.connect stood in for: waits until `up` is set, then hands over `client`."""

    def __init__(self) -> None:
        self.client = FakeNats()
        self.up = asyncio.Event()
        self.up.set()

    async def connect(self, settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        await self.up.wait()
        return self.client


@pytest.fixture
def nats(monkeypatch: pytest.MonkeyPatch) -> Nats:
    stand_in = Nats()
    monkeypatch.setattr("indexer.service.natsconn.connect", stand_in.connect)
    monkeypatch.setattr("indexer.service.STEP_RETRY_S", 0.01)
    monkeypatch.setattr("indexer.consumer.NATS_RETRY_S", 0.01)
    return stand_in


@pytest.fixture
async def indexer(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Indexer]:
    service = Indexer(
        load(
            Config,
            {
                "INDEXER_GRPC_PORT": "0",
                "INDEXER_HTTP_PORT": "0",
                "INDEXER_RETENTION_DAYS": "0",
                "INDEXER_GRACEFUL_STOP_S": "1",
            },
        )
    )

    async def answers() -> bool:
        return True

    # OpenSearch answers and takes the template.
    monkeypatch.setattr(service._store, "ping", answers)
    monkeypatch.setattr(service._store, "install_template", answers)
    yield service
    await service.stop()


async def readyz(indexer: Indexer) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{indexer.http_port}") as http:
        answer = await http.get("/readyz")
    return answer.status_code, answer.json()["reason"]


async def test_health_is_served_while_nats_is_away_and_readiness_says_so(
    nats: Nats, indexer: Indexer
) -> None:
    nats.up.clear()  # NATS down at start

    await asyncio.wait_for(indexer.start(), 5)  # returns without waiting for NATS

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{indexer.http_port}") as http:
        assert (await http.get("/healthz")).status_code == 200
    assert await readyz(indexer) == (503, "nats not connected")
    nats.up.set()

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready once NATS is there")


async def test_start_says_retention_is_off(
    indexer: Indexer, nats: Nats, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="indexer.retention"):
        await indexer.start()
    assert "retention off: daily indices are kept for ever" in caplog.messages


async def test_a_jetstream_that_does_not_answer_is_waited_for_not_a_failed_start(
    nats: Nats, indexer: Indexer
) -> None:
    nats.client.js.answering = False  # JetStream disabled, or no leader yet

    await asyncio.wait_for(indexer.start(), 5)

    async def waiting_for_streams() -> bool:
        status, reason = await readyz(indexer)
        return status == 503 and reason == "streams not ensured yet: nats: timeout"

    await until(waiting_for_streams, "readiness naming the streams")
    nats.client.js.answering = True

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready once JetStream answers")
    assert set(nats.client.js.streams) == {"TELEMETRY_RAW", "TELEMETRY_ENRICHED", "TELEMETRY_DLQ"}


async def health(indexer: Indexer) -> list[int]:
    """gRPC health, overall and QueryService's."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{indexer.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", "telemetry.v1.QueryService")
        ]


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_grpc_health_of_the_server_is_not_serving_until_ready_and_whenever_not_ready(
    nats: Nats, indexer: Indexer
) -> None:
    nats.up.clear()
    await indexer.start()
    assert await readyz(indexer) == (503, "nats not connected")
    assert (await health(indexer))[0] == NOT_SERVING

    nats.up.set()

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready")
    assert await health(indexer) == [SERVING, SERVING]

    nats.client.is_connected = False  # NATS away: /readyz and health say so at once
    assert await readyz(indexer) == (503, "nats not connected")
    assert (await health(indexer))[0] == NOT_SERVING
    nats.client.is_connected = True

    async def serving_again() -> bool:  # without a probe: the health poll sees it
        return (await health(indexer))[0] == SERVING

    await until(serving_again, "serving again")


def switchable_ping(
    indexer: Indexer, monkeypatch: pytest.MonkeyPatch, *, answers: bool
) -> dict[str, bool]:
    """The store's ping answers `["answers"]` of the dict returned, to switch in the test."""
    opensearch = {"answers": answers}

    async def ping() -> bool:
        return opensearch["answers"]

    monkeypatch.setattr(indexer._store, "ping", ping)
    return opensearch


async def test_query_service_health_follows_opensearch_not_nats(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queries need OpenSearch only: a balancer checking QueryService keeps an indexer that
    # answers them while NATS is away.
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.01)
    opensearch = switchable_ping(indexer, monkeypatch, answers=False)
    nats.up.clear()
    await indexer.start()

    await asyncio.sleep(0.05)  # polled a few times
    assert await health(indexer) == [NOT_SERVING, NOT_SERVING]

    opensearch["answers"] = True

    async def query_service_serving() -> bool:
        return await health(indexer) == [NOT_SERVING, SERVING]

    await until(query_service_serving, "QueryService serving while NATS is away")
    assert await readyz(indexer) == (503, "nats not connected")

    opensearch["answers"] = False

    async def query_service_not_serving() -> bool:
        return await health(indexer) == [NOT_SERVING, NOT_SERVING]

    await until(query_service_not_serving, "QueryService not serving, OpenSearch away")


async def test_query_service_health_changes_are_logged_once_each(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.01)
    opensearch = switchable_ping(indexer, monkeypatch, answers=True)
    nats.up.clear()
    with caplog.at_level(logging.INFO, logger="indexer.service"):
        await indexer.start()

        async def query_service_is(status: int) -> bool:
            return (await health(indexer))[1] == status

        await until(lambda: query_service_is(SERVING), "QueryService serving")
        opensearch["answers"] = False
        await until(lambda: query_service_is(NOT_SERVING), "QueryService not serving")
        await asyncio.sleep(0.05)  # polled a few times more

    lines = [
        (r.levelno, r.getMessage(), getattr(r, "reason", None))
        for r in caplog.records
        if r.getMessage().startswith("QueryService")
    ]
    assert lines == [
        (logging.INFO, "QueryService ready", None),
        (logging.WARNING, "QueryService not ready", "opensearch not answering"),
    ]


async def test_query_service_health_is_not_serving_for_good_once_stop_begins(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.01)
    switchable_ping(indexer, monkeypatch, answers=True)
    await indexer.start()

    async def ready() -> bool:
        return await health(indexer) == [SERVING, SERVING]

    await until(ready, "serving")
    assert indexer._consumer is not None
    stopping_fetch, release = asyncio.Event(), asyncio.Event()
    stop_fetching = indexer._consumer.stop_fetching

    async def held_stop_fetching(**kwargs: float) -> None:  # the stop's first wait, held
        stopping_fetch.set()
        await release.wait()
        await stop_fetching(**kwargs)

    monkeypatch.setattr(indexer._consumer, "stop_fetching", held_stop_fetching)
    stopping = asyncio.create_task(indexer.stop())
    try:
        await asyncio.wait_for(stopping_fetch.wait(), 5)
        # Queries are still answered, but a balancer is told to look elsewhere already.
        assert await health(indexer) == [NOT_SERVING, NOT_SERVING]
    finally:
        release.set()
        await asyncio.wait_for(stopping, 5)


async def test_readiness_and_query_service_health_share_one_ping_of_opensearch(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both health polls and a /readyz probe ask while OpenSearch is slow to answer: one ping.
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.01)
    answer = asyncio.Event()
    answer.set()
    pinging = 0
    most = 0

    async def ping() -> bool:
        nonlocal pinging, most
        pinging += 1
        most = max(most, pinging)
        try:
            await answer.wait()
        finally:
            pinging -= 1
        return True

    monkeypatch.setattr(indexer._store, "ping", ping)
    await indexer.start()

    async def serving() -> bool:
        return await health(indexer) == [SERVING, SERVING]

    await until(serving, "serving")
    answer.clear()  # OpenSearch slow: the pings in flight pile up
    # No answer is young enough to be given again: every check asks for a ping.
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.0)
    probe = asyncio.create_task(readyz(indexer))
    await asyncio.sleep(0.2)  # every poll and the probe have asked
    assert (pinging, most) == (1, 1)
    assert not probe.done()  # waiting for the one ping, not given an older answer
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.01)
    answer.set()
    assert await asyncio.wait_for(probe, 5) == (200, "ok")


async def test_an_answer_of_opensearch_serves_every_check_until_it_is_a_poll_interval_old(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.05)
    opensearch = {"answers": True}
    pings = 0

    async def ping() -> bool:
        nonlocal pings
        pings += 1
        return opensearch["answers"]

    monkeypatch.setattr(indexer._store, "ping", ping)
    await indexer.start()

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready")
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 3600.0)  # every answer is young
    pinged = pings
    for _ in range(3):
        assert await readyz(indexer) == (200, "ok")
    await asyncio.sleep(0.1)  # both polls have asked too
    assert pings == pinged

    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.05)
    opensearch["answers"] = False
    await asyncio.sleep(0.06)  # every answer before it is older than a poll interval

    assert await readyz(indexer) == (503, "opensearch not answering")


@pytest.mark.parametrize("stream", ["TELEMETRY_ENRICHED", "TELEMETRY_DLQ"])
async def test_a_deleted_stream_is_created_again_and_the_consumer_too(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    monkeypatch.setattr("pipeline.natsconn.STREAM_RETRY_S", 0.01)
    await indexer.start()

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready")
    js = nats.client.js
    js.delete_stream(stream)  # by hand; the enriched stream's consumer goes with it
    assert await readyz(indexer) == (503, f"stream {stream} missing")

    await until(ready, "ready again, without a restart")
    assert stream in js.streams
    assert ("TELEMETRY_ENRICHED", "indexer") in js.consumers


async def test_a_start_up_ending_on_an_error_is_named_by_readiness_and_started_again(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What NATS's connect raises besides an outage (a bug, a setting it rejects late): once.
    monkeypatch.setattr("pipeline.tasks.RESTART_S", 0.01)
    calls = 0

    async def connect(settings: NatsSettings, *, name: str, **options: Any) -> FakeNats:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("broken")
        return await nats.connect(settings, name=name, **options)

    monkeypatch.setattr("indexer.service.natsconn.connect", connect)
    nats.up.clear()  # the second try waits for NATS: the failure is still what readiness says

    await indexer.start()

    async def failure_named() -> bool:
        failure = "start-up stopped on an error: RuntimeError('broken')"
        return await readyz(indexer) == (503, failure)

    await until(failure_named, "readiness naming the error")
    assert "start-up stopped on an error: RuntimeError('broken'); starting it again" in caplog.text
    assert any(record.exc_info for record in caplog.records if "start-up" in record.message)
    nats.up.set()

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready once started again")
    assert calls == 2


class Template:
    """The store's install_template stood in for: raises `error` while it is set."""

    def __init__(self, error: Exception) -> None:
        self.error: Exception | None = error
        self.tries = 0

    async def install(self) -> bool:
        self.tries += 1
        if self.error is not None:
            raise self.error
        return True


async def test_a_set_up_step_failing_on_a_bug_is_named_logged_with_its_stack_and_tried_again(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Not an outage: seen (readiness, one stack), and tried again less and less often in place.
    monkeypatch.setattr("pipeline.tasks.RESTART_MAX_S", 0.05)
    template = Template(TypeError("bug"))
    monkeypatch.setattr(indexer._store, "install_template", template.install)
    await indexer.start()

    failure = "index template not installed yet: unexpected TypeError('bug')"

    async def failure_named() -> bool:
        return await readyz(indexer) == (503, failure) and template.tries >= 3

    await until(failure_named, "readiness naming the error, tried again")
    stacks = [r for r in caplog.records if r.getMessage().startswith(failure) and r.exc_info]
    assert len(stacks) == 1  # the same error again is one line
    assert stacks[0].levelno == logging.ERROR
    template.error = None

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready once the step goes through")
    assert "start-up stopped" not in caplog.text  # tried again in place, not started over


async def test_opensearch_away_at_start_is_logged_once_then_paced_and_its_end_too(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The template is tried again every STEP_RETRY_S; its failures are not a line each.
    template = Template(SearchUnavailableError("opensearch not reachable: ConnectionError"))
    monkeypatch.setattr(indexer._store, "install_template", template.install)
    with caplog.at_level(logging.INFO, logger="indexer.service"):
        await indexer.start()
        failure = "index template not installed yet: opensearch not reachable: ConnectionError"

        async def waited() -> bool:
            return await readyz(indexer) == (503, failure) and template.tries >= 10

        await until(waited, "the template tried again and again")
        template.error = None

        async def ready() -> bool:
            return await readyz(indexer) == (200, "ok")

        await until(ready, "ready once OpenSearch answers")

    lines = [r for r in caplog.records if r.getMessage().startswith(failure)]
    assert [(r.levelno, r.getMessage()) for r in lines] == [(logging.WARNING, failure)]
    (recovered,) = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert recovered.getMessage() == (
        f"index template not installed yet: recovered after {template.tries - 1} failed tries"
    )


async def first_start_up_fails(
    indexer: Indexer, nats: Nats, monkeypatch: pytest.MonkeyPatch, *, first: FakeNats
) -> list[FakeNats]:
    """Starts `indexer`, whose first start-up connects `first`, ensures the streams, then fails
    on a step in between; the next ones connect a new client each, and go through. Returns the
    clients, in the order they were connected."""
    monkeypatch.setattr("pipeline.tasks.RESTART_S", 0.01)
    clients: list[FakeNats] = []
    real_intake = service_module.Intake

    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        client = FakeNats(js=nats.client.js) if clients else first
        clients.append(client)
        return client

    def intake(*args: Any, **kwargs: Any) -> Any:
        if len(clients) == 1:
            raise ValueError("broken")
        return real_intake(*args, **kwargs)

    monkeypatch.setattr("indexer.service.natsconn.connect", connect)
    monkeypatch.setattr("indexer.service.Intake", intake)
    await indexer.start()
    return clients


async def test_what_a_failed_start_up_set_up_is_closed_and_set_up_again(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next run starts over on a new connection, the first one closed.
    clients = await first_start_up_fails(
        indexer, nats, monkeypatch, first=FakeNats(js=nats.client.js)
    )

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready once started again")
    assert len(clients) == 2
    assert clients[0].is_closed
    assert not clients[1].is_closed


async def test_a_failed_start_up_whose_connection_does_not_close_is_started_again(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # NATS not reading, a reconnect in progress: the first connection's close never ends.
    monkeypatch.setattr("pipeline.natsconn.CLOSE_TIMEOUT_S", 0.05)
    clients = await first_start_up_fails(
        indexer, nats, monkeypatch, first=FakeNats(js=nats.client.js, close_hangs=True)
    )

    async def ready() -> bool:
        return await readyz(indexer) == (200, "ok")

    await until(ready, "ready once started again, the close given up")
    assert len(clients) == 2
    assert "nats connection not closed: TimeoutError" in caplog.messages


async def test_stop_ends_a_start_up_pausing_after_an_error(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.tasks.RESTART_S", 60.0)
    failed = asyncio.Event()

    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        failed.set()
        raise RuntimeError("broken")

    monkeypatch.setattr("indexer.service.natsconn.connect", connect)
    await indexer.start()
    await asyncio.wait_for(failed.wait(), 5)

    await asyncio.wait_for(indexer.stop(), 5)


REPLY = "$JS.ACK.TELEMETRY_ENRICHED.indexer.1.7.1.1700000000000000000.0"  # how JetStream acks


def enriched_batch() -> bytes:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(2026, 5, 1, 12, tzinfo=UTC))
    event = event_pb2.EnrichedEvent(
        event=event_pb2.Event(event_id="e1", client_timestamp=stamp), corrected_timestamp=stamp
    )
    return event_pb2.EnrichedBatch(events=[event]).SerializeToString()


class OneMessage(FakeSubscription):
    """Delivers `msg` at its first fetch, then nothing; its unsubscribe never ends, as
    nats-py's does not while NATS does not read what it writes."""

    def __init__(self, js: FakeJetStream, stream: str, durable: str, msg: Msg) -> None:
        super().__init__(js, stream, durable)
        self._msg: Msg | None = msg

    async def fetch(self, batch: int = 1, timeout: float | None = 5, **kwargs: Any) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        if self._msg is not None:
            msg, self._msg = self._msg, None
            return [msg]
        return await super().fetch(batch, timeout, **kwargs)

    async def unsubscribe(self) -> None:
        await asyncio.Event().wait()


class OneMessageJetStream(FakeJetStream):
    """Its consumer delivers one enriched message, whose acks go through `client`."""

    def __init__(self) -> None:
        super().__init__()
        self.client: FakeNats | None = None

    async def pull_subscribe_bind(self, *, durable: str, stream: str, **_: Any) -> OneMessage:
        msg = Msg(_client=self.client, subject="telemetry.enriched.v1.shop", reply=REPLY)
        msg.data = enriched_batch()
        return OneMessage(self, stream, durable, msg)


async def test_a_stop_whose_every_step_hangs_ends_within_its_time_and_acks_nothing_unindexed(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step_min_s, close_s, stop_s = 0.2, 0.2, 1.0  # INDEXER_GRACEFUL_STOP_S is 1 s here
    monkeypatch.setattr("indexer.service.STOP_STEP_MIN_S", step_min_s)
    monkeypatch.setattr("pipeline.natsconn.CLOSE_TIMEOUT_S", close_s)
    # The health polls ask once, at the start, then sleep through the test: the probe's
    # ping below is the only one that hangs.
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 3600.0)
    js = OneMessageJetStream()
    nats.client = FakeNats(js=js, drain_hangs=True)  # NATS not answering: the drain never ends
    js.client = nats.client
    writing, probed = asyncio.Event(), asyncio.Event()
    opensearch_hangs = False

    async def bulk(body: bytes) -> Any:  # OpenSearch never answers the _bulk
        writing.set()
        await asyncio.Event().wait()

    async def ping() -> bool:  # nor, later, a /readyz probe's ping
        if opensearch_hangs:
            probed.set()
            await asyncio.Event().wait()
        return True

    monkeypatch.setattr(indexer._store, "bulk", bulk)
    monkeypatch.setattr(indexer._store, "ping", ping)
    await indexer.start()
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(writing.wait(), 10)  # the message's event being written
    opensearch_hangs = True
    # No answer of OpenSearch is young enough to be given again: the probe pings.
    monkeypatch.setattr("pipeline.grpcserver.HEALTH_POLL_S", 0.0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{indexer.http_port}") as http:
        probe = asyncio.create_task(http.get("/readyz"))  # an ops call that never ends
        await asyncio.wait_for(probed.wait(), 10)
        assert not probe.done()  # still running when the stop begins
        started = loop.time()
        stopping = asyncio.create_task(indexer.stop())
        await asyncio.wait({stopping}, timeout=10)
        elapsed = loop.time() - started
        await cancel_and_wait(stopping)  # one that did not end is ended (a failed test)
        with contextlib.suppress(httpx.HTTPError):
            await probe

    # The writing gets what the stop is given; the servers and the drain their least (uvicorn
    # rounds its grace up to a whole second); then scheduling.
    assert stop_s <= elapsed < stop_s + 1.0 + (step_min_s + close_s) + 3.0
    settled = [payload for subject, payload in nats.client.sent if subject == REPLY]
    assert settled == [b"-NAK"]  # given back for redelivery at once, never acked
    assert nats.client.is_closed


async def test_queries_waiting_on_opensearch_never_hold_up_a_bulk_request() -> None:
    # OpenSearch stood in for on a real socket: every search hangs until released, and a
    # bulk request is answered at once. 16 queries in flight (more than a client's default
    # 10 connections) must leave the bulk writer a connection of its own.
    from aiohttp import web

    released = asyncio.Event()
    searches = 0

    async def search(request: web.Request) -> web.Response:
        nonlocal searches
        searches += 1
        await released.wait()
        return web.json_response({"hits": {"total": {"value": 0}, "hits": []}})

    async def bulk(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"errors": False, "items": [{"create": {"status": 201}}]})

    app = web.Application()
    app.router.add_post("/{indices}/_search", search)
    app.router.add_post("/_bulk", bulk)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    service = Indexer(
        load(
            Config,
            {
                "OPENSEARCH_URL": f"http://127.0.0.1:{port}",
                "INDEXER_GRPC_PORT": "0",
                "INDEXER_HTTP_PORT": "0",
                "INDEXER_QUERY_MAX_IN_FLIGHT": "16",
            },
        )
    )
    await service._query.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}")
    stub = qs_grpc.QueryServiceStub(channel)
    calls = [asyncio.ensure_future(stub.QueryEvents(qs.QueryEventsRequest())) for _ in range(16)]
    try:

        async def all_searching() -> bool:
            return searches == 16

        await until(all_searching, "were all 16 queries searching")
        answered = await asyncio.wait_for(service._store.bulk(b'{"create":{}}\n{}\n'), 2.0)
        assert [result.status for result in answered] == [201]
    finally:
        released.set()
        await asyncio.gather(*calls, return_exceptions=True)
        await channel.close()
        await service._query.stop(grace_s=1)
        await asyncio.gather(service._store.close(), service._reads.close())
        await runner.cleanup()
    assert all(call.result().total_size == 0 for call in calls)


async def test_both_opensearch_clients_are_closed_even_when_a_stop_step_fails(
    nats: Nats, indexer: Indexer, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    for name, store in (("writes", indexer._store), ("queries", indexer._reads)):

        async def close(name: str = name) -> None:
            closed.append(name)

        monkeypatch.setattr(store, "close", close)

    async def broken(*, grace_s: float) -> None:
        raise RuntimeError("the HTTP server did not stop")

    await indexer.start()
    monkeypatch.setattr(indexer._http, "stop", broken)
    with pytest.raises(RuntimeError):
        await indexer.stop()
    assert sorted(closed) == ["queries", "writes"]
