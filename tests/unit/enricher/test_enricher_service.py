"""The enricher as a service, on real sockets, with its NATS side stood in for: readiness,
gRPC health, and what becomes of its consuming."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import nats.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import BadRequestError
from telemetry.v1 import event_pb2

from enricher._handler import Handler
from enricher._service import Enricher
from enricher.config import Config
from pipeline.config import load
from pipeline.service import HttpServer
from pipeline.settings import NatsSettings
from pipeline.tasks import cancel_and_wait
from tests.unit.nats_fakes import FakeJetStream, FakeNats, FakeSubscription
from tests.unit.polling import until


class Loop:
    """A fetch loop that fetches nothing until it is stopped, or ends on `error`."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self._failed = asyncio.Event()
        self.error: Exception | None = None

    def fail(self, error: Exception) -> None:
        self.error = error
        self._failed.set()

    async def run(self) -> None:
        stopped = asyncio.create_task(self._stopped.wait())
        failed = asyncio.create_task(self._failed.wait())
        try:
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        if self.error is not None and not self._stopped.is_set():
            raise self.error

    def stop(self) -> None:
        self._stopped.set()

    async def pulls_done(self) -> None:
        await self._stopped.wait()


class Delivery:
    """A raw message whose acks, naks and terms go to `log`."""

    subject = "telemetry.raw.v1.shop"
    stream_seq = 7
    deliveries = 1
    stored_ns = 1_700_000_000_000_000_000

    def __init__(self, log: list[str]) -> None:
        self.data = raw_batch()
        self.headers: dict[str, str] = {}
        self._log = log

    async def ack(self) -> None:
        self._log.append("ack")

    async def nak(self, delay_s: float) -> None:
        self._log.append(f"nak {delay_s}")

    async def term(self) -> None:
        self._log.append("term")

    async def in_progress(self) -> None:
        return None


class HandingLoop(Loop):
    """A fetch loop that hands `deliveries` to the handler first, then fetches nothing."""

    def __init__(self, handler: Handler, deliveries: list[Delivery]) -> None:
        super().__init__()
        self._handler = handler
        self._deliveries = deliveries

    async def run(self) -> None:
        await self._handler.handle(self._deliveries)
        await super().run()


class HangingSink:
    """NATS taking no publish: each waits for its PubAck for ever."""

    def __init__(self) -> None:
        self.publishing = asyncio.Event()

    async def publish(self, subject: str, data: bytes, *, headers: Any) -> bool:
        self.publishing.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def dead_letter(self, delivery: Any, *, reason: str, detail: str) -> bool:
        raise AssertionError("nothing is dead-lettered")


class Broker:
    """The enricher's side of NATS: connected once `up` is set; ready while `answers`. Its
    first fetch loop hands `deliveries` to the handler; publishes never end."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.connected = True
        self.answers = True
        self.opened = 0
        self.closed = 0
        self.loops: list[Loop] = []
        self.deliveries: list[Delivery] = []
        self.sink_ = HangingSink()
        self.log: list[str] = []  # closes, beside the deliveries' acks and naks
        self.failing_closes = 0  # how many closes to come raise a bug

    async def connect(self, *_: Any, **__: Any) -> Broker:
        await self.up.wait()
        self.opened += 1
        return self

    async def ensure_streams(self) -> None:
        return None

    async def bind(self, *_: Any, **__: Any) -> None:
        return None

    max_payload = 1024 * 1024

    def sink(self, *, timeout_s: float) -> HangingSink:
        return self.sink_

    def fetch_loops(self, handler: Handler, settings: object) -> list[Loop]:
        deliveries, self.deliveries = self.deliveries, []
        self.loops = [HandingLoop(handler, deliveries) if deliveries else Loop(), Loop()]
        return self.loops

    async def ready(self) -> tuple[bool, str]:
        return (True, "ok") if self.answers else (False, "stream TELEMETRY_RAW missing")

    async def pending(self) -> int:
        return 0

    async def close(self, **_: Any) -> None:
        self.closed += 1
        self.log.append("close")
        if self.failing_closes:
            self.failing_closes -= 1
            raise RuntimeError("close bug")


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    stand_in = Broker()
    monkeypatch.setattr("enricher._service._nats.Broker.connect", stand_in.connect)
    monkeypatch.setattr("enricher._service.CONSUME_RESTART_S", 0.01)
    return stand_in


@pytest.fixture
async def enricher() -> AsyncIterator[Enricher]:
    service = Enricher(
        load(
            Config,
            {"ENRICHER_GRPC_PORT": "0", "ENRICHER_HTTP_PORT": "0", "ENRICHER_STOP_TIMEOUT_S": "1"},
        )
    )
    yield service
    await service.stop()


async def readyz(enricher: Enricher) -> int:
    return (await readyz_answer(enricher))[0]


async def readyz_answer(enricher: Enricher) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{enricher.http_port}") as http:
        answer = await http.get("/readyz")
    return answer.status_code, answer.json()["reason"]


async def until_ready(enricher: Enricher, what: str = "ready") -> None:
    """Waits until /readyz answers 200."""

    async def ready() -> bool:
        return await readyz(enricher) == 200

    await until(ready, what)


async def health(enricher: Enricher) -> list[int]:
    """gRPC health, overall and EnrichService's."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{enricher.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", "telemetry.v1.EnrichService")
        ]


SERVING = [health_pb2.HealthCheckResponse.SERVING] * 2
NOT_SERVING = [health_pb2.HealthCheckResponse.NOT_SERVING] * 2


async def test_grpc_health_is_not_serving_until_ready_and_whenever_not_ready(
    broker: Broker, enricher: Enricher
) -> None:
    await enricher.start()
    assert await readyz(enricher) == 503  # NATS not connected yet
    assert await health(enricher) == NOT_SERVING

    broker.up.set()

    await until_ready(enricher)
    assert await health(enricher) == SERVING

    broker.answers = False  # a stream lost, say
    assert await readyz(enricher) == 503
    assert await health(enricher) == NOT_SERVING


async def test_consuming_that_ends_on_an_error_is_named_logged_and_started_again(
    broker: Broker, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    broker.up.set()
    await enricher.start()

    await until_ready(enricher)
    broker.up.clear()  # NATS away when it starts again: the error stays named meanwhile
    first, second = broker.loops
    first.fail(RuntimeError("fetch loop bug"))

    async def named() -> bool:
        return await readyz_answer(enricher) == (
            503,
            "consuming stopped on an error: RuntimeError('fetch loop bug')",
        )

    await until(named, "readiness naming the error")
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith(
        "consuming stopped on an error: RuntimeError('fetch loop bug'); starting it again in"
    )
    assert line.exc_info is not None  # with its stack
    assert broker.closed == 1  # the other loop ended too, and the connection was closed

    broker.up.set()
    await until_ready(enricher, "ready again, without a restart of the process")
    assert broker.opened == 2
    assert broker.loops != [first, second]


async def test_consuming_that_a_stop_ends_is_not_started_again(
    broker: Broker, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    broker.up.set()
    await enricher.start()
    await until_ready(enricher)

    await enricher.stop()

    assert broker.opened == 1  # not connected again while the stop waits for the loops
    assert broker.closed == 1  # by the stop alone
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_consuming_whose_connection_fails_to_close_is_logged_and_started_again(
    broker: Broker, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    broker.failing_closes = 1
    broker.up.set()
    await enricher.start()
    await until_ready(enricher)
    first = broker.loops[0]
    first.fail(RuntimeError("fetch loop bug"))

    async def close_tried() -> bool:
        return broker.closed == 1

    await until(close_tried, "the connection's close tried")
    await until_ready(enricher, "ready again, the failed close gone past")
    assert broker.opened == 2
    assert broker.loops[0] is not first
    [line] = [r for r in caplog.records if "closing its connection" in r.getMessage()]
    assert line.getMessage() == (
        "consuming: closing its connection failed: RuntimeError('close bug')"
    )
    assert line.levelno == logging.ERROR
    assert line.exc_info is not None  # with its stack


async def refuses(port: int) -> bool:
    """Whether nothing listens on `port` any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_a_stop_whose_connection_fails_to_close_still_closes_its_servers(
    broker: Broker, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    broker.failing_closes = 1
    broker.up.set()
    await enricher.start()
    await until_ready(enricher)
    http_port, grpc_port = enricher.http_port, enricher.grpc_port

    await enricher.stop()

    assert broker.closed == 1
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == (
        "stop: closing the NATS connection failed: RuntimeError('close bug')"
    )
    assert line.exc_info is not None
    assert await refuses(http_port)  # both servers closed
    assert await refuses(grpc_port)


async def test_a_start_cancelled_again_and_again_still_closes_what_it_opened(
    broker: Broker, enricher: Enricher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop signal during the start: serve_until_signal cancels it every 50 ms until it ends.
    http_start = HttpServer.start
    http_starting = asyncio.Event()

    async def slow_start(self: HttpServer) -> None:
        http_starting.set()
        await asyncio.sleep(0.3)
        await http_start(self)

    monkeypatch.setattr(HttpServer, "start", slow_start)
    starting = asyncio.create_task(enricher.start())
    await asyncio.wait_for(http_starting.wait(), 10)
    assert enricher._grpc is not None
    grpc_port = enricher.grpc_port

    await cancel_and_wait(starting)

    assert starting.cancelled()
    assert await refuses(grpc_port)  # its stop ran whole, the gRPC server's too


class FailingAtStop(Loop):
    """A fetch loop that ends on an error once it is stopped (handing over its last batch, say)."""

    async def run(self) -> None:
        await super().run()
        raise RuntimeError("fetch loop bug at stop")


async def test_consuming_that_ends_on_an_error_while_stopping_is_logged_not_started_again(
    broker: Broker,
    enricher: Enricher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fetch_loops(handler: Handler, settings: object) -> list[Loop]:
        broker.loops = [FailingAtStop(), Loop()]
        return broker.loops

    monkeypatch.setattr(broker, "fetch_loops", fetch_loops)
    broker.up.set()
    await enricher.start()
    await until_ready(enricher)

    await asyncio.wait_for(enricher.stop(), 5)

    [line] = [r for r in caplog.records if "while stopping" in r.getMessage()]
    assert line.getMessage() == (
        "consuming ended on an error while stopping: RuntimeError('fetch loop bug at stop')"
    )
    assert line.levelno == logging.WARNING
    assert line.exc_info is not None  # with its stack
    assert broker.opened == 1  # not started again
    assert broker.closed == 1  # by the stop alone


async def test_consuming_that_ends_on_an_error_naks_what_it_held_before_closing_nats(
    broker: Broker, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    held = Delivery(broker.log)
    broker.deliveries = [held]
    broker.up.set()
    await enricher.start()
    await asyncio.wait_for(broker.sink_.publishing.wait(), 10)  # its publish never ends
    broker.loops[1].fail(RuntimeError("fetch loop bug"))  # the other loop: both end

    async def closed() -> bool:
        return broker.closed == 1

    await until(closed, "the connection closed")
    assert broker.log == ["nak 0.0", "close"]  # given back at once, before the drain
    [line] = [r for r in caplog.records if "unsettled" in r.getMessage()]
    assert line.getMessage() == "consuming ended with messages unsettled; nak'd for redelivery"
    assert line.messages == 1


async def test_a_stop_whose_naks_fail_still_closes_nats_and_its_servers(
    broker: Broker,
    enricher: Enricher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def release_unsettled(self: Handler) -> int:
        raise RuntimeError("release bug")

    monkeypatch.setattr(Handler, "release_unsettled", release_unsettled)
    broker.deliveries = [Delivery(broker.log)]
    broker.up.set()
    await enricher.start()
    await asyncio.wait_for(broker.sink_.publishing.wait(), 10)  # its publish never ends
    http_port = enricher.http_port

    await enricher.stop()

    assert broker.log == ["close"]  # no nak sent, the connection closed all the same
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.getMessage() == (
        "stop: closing the NATS connection failed: RuntimeError('release bug')"
    )
    assert await refuses(http_port)


class RefusingJetStream(FakeJetStream):
    """A JetStream that refuses the durable consumer with `refusal` while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.refusal: Exception | None = None

    async def add_consumer(
        self, stream: str, config: js_api.ConsumerConfig | None = None, **kwargs: Any
    ) -> js_api.ConsumerInfo:
        if self.refusal is not None:
            raise self.refusal
        return await super().add_consumer(stream, config, **kwargs)


class Nats:
    """natsconn.connect stood in for: waits until `up` is set, then hands over `client`."""

    def __init__(self) -> None:
        self.client = FakeNats(js=RefusingJetStream())
        self.js: RefusingJetStream = self.client.js
        self.up = asyncio.Event()
        self.connects = 0

    async def connect(self, settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        await self.up.wait()
        self.connects += 1
        return self.client


@pytest.fixture
def nats(monkeypatch: pytest.MonkeyPatch) -> Nats:
    stand_in = Nats()
    monkeypatch.setattr("enricher._nats.natsconn.connect", stand_in.connect)
    monkeypatch.setattr("enricher._service.BROKER_RETRY_S", 0.01)
    monkeypatch.setattr("enricher._service.BROKER_RETRY_MAX_S", 0.01)
    return stand_in


CONSUMER_REFUSED = BadRequestError(code=400, err_code=10148, description="consumer already exists")


async def test_readiness_names_the_set_up_step_it_waits_for_and_its_last_error(
    nats: Nats, enricher: Enricher
) -> None:
    await enricher.start()
    assert await readyz_answer(enricher) == (503, "nats not connected")

    nats.js.answering = False  # NATS there, JetStream not answering (disabled, no leader)
    nats.up.set()

    def answers(expected: tuple[int, str]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await readyz_answer(enricher) == expected

        return check

    await until(answers((503, "streams not ensured yet: nats: timeout")), "naming the streams")
    nats.client.is_connected = False  # the connection lost while it waits: that is the news
    assert await readyz_answer(enricher) == (503, "nats not connected")
    nats.client.is_connected = True

    nats.js.refusal = CONSUMER_REFUSED  # e.g. a durable of that name set up otherwise
    nats.js.answering = True
    await until(
        answers(
            (
                503,
                "consumer not created yet: nats: BadRequestError: code=400 err_code=10148 "
                "description='consumer already exists'",
            )
        ),
        "naming the consumer and what JetStream answered",
    )
    assert set(nats.js.streams) == {"TELEMETRY_RAW", "TELEMETRY_ENRICHED", "TELEMETRY_DLQ"}

    nats.js.refusal = None
    await until(answers((200, "ok")), "ready once JetStream takes the consumer")
    assert nats.connects == 1  # each step tried again on the one connection


async def test_the_not_ready_log_line_and_the_retries_name_the_step(
    nats: Nats, enricher: Enricher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enricher._service")
    nats.js.refusal = CONSUMER_REFUSED
    nats.up.set()  # connected at once: the first answer is about the consumer
    await enricher.start()

    async def named() -> bool:
        return (await readyz_answer(enricher))[1].startswith("consumer not created yet: ")

    await until(named, "readiness naming the consumer")
    [not_ready] = [r for r in caplog.records if r.getMessage() == "enricher not ready"]
    assert not_ready.reason.startswith("consumer not created yet: nats: BadRequestError")
    assert await health(enricher) == NOT_SERVING
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert retries[0] == (
        "consumer not created yet: nats: BadRequestError: code=400 err_code=10148 "
        "description='consumer already exists'"
    )


REPLY = "$JS.ACK.TELEMETRY_RAW.enricher.1.7.1.1700000000000000000.0"  # how JetStream acks


def raw_batch() -> bytes:
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    raw.events.add(event_id="e1", event_name="open")
    return raw.SerializeToString()


class OneMessage(FakeSubscription):
    """Delivers `msg` at its first fetch, then nothing."""

    def __init__(self, js: FakeJetStream, stream: str, durable: str, msg: Msg | None) -> None:
        super().__init__(js, stream, durable)
        self._msg = msg

    async def fetch(self, batch: int = 1, timeout: float | None = 5, **kwargs: Any) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        if self._msg is not None:
            msg, self._msg = self._msg, None
            return [msg]
        return await super().fetch(batch, timeout, **kwargs)


class StuckJetStream(FakeJetStream):
    """A JetStream that delivers one raw message and never acks a publish; with
    `info_hangs`, never answers a stream info either (a /readyz probe then hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.client: FakeNats | None = None
        self.delivered = False
        self.publishing = asyncio.Event()
        self.info_hangs = False
        self.info_asked = asyncio.Event()

    async def pull_subscribe_bind(self, *, durable: str, stream: str, **_: Any) -> OneMessage:
        msg = None
        if not self.delivered:
            self.delivered = True
            msg = Msg(_client=self.client, subject="telemetry.raw.v1.shop", reply=REPLY)
            msg.data = raw_batch()
        return OneMessage(self, stream, durable, msg)

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> js_api.PubAck:
        self.publishing.set()
        await asyncio.Event().wait()  # no PubAck, ever
        raise AssertionError("unreachable")

    async def stream_info(self, name: str) -> js_api.StreamInfo:
        if self.info_hangs:
            self.info_asked.set()
            await asyncio.Event().wait()
        return await super().stream_info(name)


def enricher_on(nc: FakeNats, monkeypatch: pytest.MonkeyPatch, *, stop_s: float) -> Enricher:
    """An enricher (not started) whose NATS connection is `nc`, on free ports."""

    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        return nc

    monkeypatch.setattr("enricher._nats.natsconn.connect", connect)
    settings = {"ENRICHER_GRPC_PORT": "0", "ENRICHER_HTTP_PORT": "0"}
    return Enricher(load(Config, {**settings, "ENRICHER_STOP_TIMEOUT_S": str(stop_s)}))


async def test_a_stop_whose_every_step_hangs_ends_within_its_time_and_acks_nothing_unpublished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step_min_s, close_s, stop_s = 0.2, 0.2, 1.0
    monkeypatch.setattr("enricher._service.STOP_STEP_MIN_S", step_min_s)
    monkeypatch.setattr("pipeline.natsconn.CLOSE_TIMEOUT_S", close_s)
    js = StuckJetStream()
    nc = FakeNats(js=js, drain_hangs=True)  # NATS not answering: the drain never ends
    js.client = nc
    service = enricher_on(nc, monkeypatch, stop_s=stop_s)
    await service.start()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(js.publishing.wait(), 10)  # a batch in hand, its publish hanging
        js.info_hangs = True
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            probe = asyncio.create_task(http.get("/readyz"))  # an ops call that never ends
            await asyncio.wait_for(js.info_asked.wait(), 10)
            started = loop.time()
            stopping = asyncio.create_task(service.stop())
            await asyncio.wait({stopping}, timeout=10)
            elapsed = loop.time() - started
            await cancel_and_wait(stopping)  # one that did not end is ended (a failed test)
            with contextlib.suppress(httpx.HTTPError):
                await probe
    finally:
        await service.stop()

    # The batch gets what the stop is given; the drain and the servers their least (uvicorn
    # rounds its grace up to a whole second); then scheduling.
    assert stop_s <= elapsed < stop_s + (step_min_s + close_s) + 1.0 + 3.0
    settled = [payload for subject, payload in nc.sent if subject == REPLY]
    assert b"" not in settled  # never acked: it was not published
    assert b"+TERM" not in settled
    assert nc.is_closed


def raw_message(client: FakeNats, *, app_id: str, seq: int) -> Msg:
    """A raw batch of one event from `app_id`, as JetStream delivers it at stream sequence
    `seq` (its acks go to `client`)."""
    raw = event_pb2.RawBatch()
    raw.context.app_id = app_id
    raw.events.add(event_id=f"e{seq}", event_name="open")
    reply = f"$JS.ACK.TELEMETRY_RAW.enricher.1.{seq}.{seq}.1700000000000000000.0"
    msg = Msg(_client=client, subject=f"telemetry.raw.v1.{app_id}", reply=reply)
    msg.data = raw.SerializeToString()
    return msg


class Delivering(FakeSubscription):
    """Delivers `msgs` at its first fetch, then nothing."""

    def __init__(self, js: FakeJetStream, stream: str, durable: str, msgs: list[Msg]) -> None:
        super().__init__(js, stream, durable)
        self._msgs = msgs

    async def fetch(self, batch: int = 1, timeout: float | None = 5, **kwargs: Any) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        if self._msgs:
            msgs, self._msgs = self._msgs, []
            return msgs
        return await super().fetch(batch, timeout, **kwargs)


class OneAppStuck(FakeJetStream):
    """A JetStream whose first subscription delivers `msgs` in one fetch, and that never acks
    a publish to app `stuck`'s enriched subject (the others are acked at once)."""

    def __init__(self, msgs: list[Msg], *, stuck: str) -> None:
        super().__init__()
        self._msgs = msgs
        self._stuck = f"telemetry.enriched.v1.{stuck}"
        self.publishing = asyncio.Event()

    async def pull_subscribe_bind(self, *, durable: str, stream: str, **_: Any) -> Delivering:
        msgs, self._msgs = self._msgs, []
        return Delivering(self, stream, durable, msgs)

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> js_api.PubAck:
        if subject == self._stuck:
            self.publishing.set()
            await asyncio.Event().wait()  # no PubAck, ever
        return await super().publish(subject, payload, **kwargs)


class ClosingNats(FakeNats):
    """A client that refuses to send once closed, as nats-py's does."""

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        await super().publish(subject, payload, **kwargs)


async def test_a_stop_naks_at_once_what_it_did_not_finish_and_acks_what_it_published(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nc = ClosingNats()
    published = raw_message(nc, app_id="shop", seq=7)
    stuck = raw_message(nc, app_id="slow", seq=8)
    js = OneAppStuck([published, stuck], stuck="slow")
    nc.js = js
    service = enricher_on(nc, monkeypatch, stop_s=1.0)
    await service.start()
    try:
        await asyncio.wait_for(js.publishing.wait(), 10)  # one publish taken, one hanging
    finally:
        await service.stop()

    # Before the drain (the client sends nothing after it): the one published acked, the
    # other nak'd without a delay, for redelivery at once rather than after the ack wait.
    assert [payload for subject, payload in nc.sent if subject == published.reply] == [b""]
    assert [payload for subject, payload in nc.sent if subject == stuck.reply] == [b"-NAK"]
    assert nc.drained
    [line] = [r for r in caplog.records if "unsettled" in r.getMessage()]
    assert line.getMessage() == "stopped with messages unsettled; nak'd for redelivery"
    assert line.messages == 1


class RoundTripNats(ClosingNats):
    """A client whose drain takes a round trip to NATS (its flush's PING and PONG)."""

    async def drain(self) -> None:
        await asyncio.sleep(0.05)
        await super().drain()


async def test_a_stop_whose_time_is_used_up_still_drains_its_least_after_releasing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def release(subscription: Any) -> None:
        await asyncio.Event().wait()  # the unsubscribes never written

    monkeypatch.setattr("enricher._nats.release", release)
    js = StuckJetStream()
    nc = RoundTripNats(js=js)
    js.client = nc
    service = enricher_on(nc, monkeypatch, stop_s=0.2)
    await service.start()
    try:
        await asyncio.wait_for(js.publishing.wait(), 10)  # the batch in hand takes the stop's time
    finally:
        await service.stop()

    # The release is not waited for past the stop's time; the drain still gets
    # STOP_STEP_MIN_S, and the nak sent before it reaches NATS.
    assert [payload for subject, payload in nc.sent if subject == REPLY] == [b"-NAK"]
    assert nc.drained
