"""The enricher's Broker with NATS stood in for: a stream deleted under it is created again,
and its durable consumer with it, without a restart."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, ServiceUnavailableError

from enricher._handler import Handler
from enricher._nats import Broker, ConsumerSettings, JsSink, restore_consumer
from enricher.errors import BrokerError, PublishRefusedError
from pipeline import natsconn
from pipeline.config import load
from pipeline.settings import NatsSettings
from tests.unit.nats_fakes import FakeJetStream, FakeNats
from tests.unit.polling import until

SETTINGS = ConsumerSettings(
    name="enricher", ack_wait_s=30.0, max_ack_pending=16, fetch_batch=4, fetch_timeout_s=0.01
)


class NoMessages:
    async def handle(self, deliveries: list[Any]) -> None:
        raise AssertionError("nothing is delivered")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enricher._nats._RETRY_FETCH_AFTER_ERROR_S", 0.005)
    monkeypatch.setattr(natsconn, "STREAM_RETRY_S", 0.01)


async def open_broker(nc: FakeNats, monkeypatch: pytest.MonkeyPatch) -> Broker:
    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        return nc

    monkeypatch.setattr("enricher._nats.natsconn.connect", connect)
    broker = await Broker.connect(load(NatsSettings, {}), timeout_s=1.0)
    await broker.ensure_streams()
    await broker.bind(SETTINGS, subscriptions=1)
    return broker


@pytest.mark.parametrize("stream", ["TELEMETRY_RAW", "TELEMETRY_ENRICHED", "TELEMETRY_DLQ"])
async def test_a_deleted_stream_is_created_again_and_its_consumer_too(
    stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = FakeNats()
    js: FakeJetStream = nc.js
    broker = await open_broker(nc, monkeypatch)
    [loop] = broker.fetch_loops(cast(Handler, NoMessages()), SETTINGS)
    running = asyncio.create_task(loop.run())
    try:
        assert await broker.ready() == (True, "ok")
        js.delete_stream(stream)  # by hand; the raw stream's consumer goes with it
        assert await broker.ready() == (False, f"stream {stream} missing")

        async def ready() -> bool:
            return await broker.ready() == (True, "ok")

        await until(ready, "ready again")
        assert stream in js.streams
        assert ("TELEMETRY_RAW", "enricher") in js.consumers
    finally:
        loop.stop()
        await asyncio.wait_for(running, 5)
        await broker.close(timeout_s=1.0)


class Refusing(FakeJetStream):
    """A JetStream whose publishes fail with `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> js_api.PubAck:
        raise self.error


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (
            BadRequestError(code=400, err_code=10054, description="maximum message size exceeded"),
            PublishRefusedError,
            "publish to telemetry.enriched.v1.shop refused: nats: BadRequestError: code=400"
            " err_code=10054 description='maximum message size exceeded'",
        ),
        (
            ServiceUnavailableError(code=503, description="no leader"),
            BrokerError,
            "publish to telemetry.enriched.v1.shop: nats: ServiceUnavailableError: code=503"
            " err_code=None description='no leader'",
        ),
    ],
)
async def test_a_publish_nats_fails_says_what_nats_answered(
    error: Exception, kind: type[Exception], text: str
) -> None:
    sink = JsSink(cast(JetStreamContext, Refusing(error)), timeout_s=1.0, max_payload=lambda: 1024)
    with pytest.raises(kind) as raised:
        await sink.publish("telemetry.enriched.v1.shop", b"x", headers={})
    assert str(raised.value) == text  # not `BadRequestError()`


async def test_consumer_errors_say_what_jetstream_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    nc = FakeNats()
    js: FakeJetStream = nc.js
    broker = await open_broker(nc, monkeypatch)
    try:
        js.delete_stream("TELEMETRY_RAW")  # its consumer goes with it
        answered = "nats: NotFoundError: code=404 err_code=10059 description='stream not found'"
        with pytest.raises(BrokerError) as restoring:
            await restore_consumer(cast(JetStreamContext, js), SETTINGS)
        assert str(restoring.value) == f"consumer enricher: {answered}"
        with pytest.raises(BrokerError) as asking:
            await broker.pending()
        assert str(asking.value) == f"consumer info: {answered}"
    finally:
        await broker.close(timeout_s=1.0)


async def test_readiness_tells_a_consumer_gone_from_one_not_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nc = FakeNats()
    js: FakeJetStream = nc.js
    broker = await open_broker(nc, monkeypatch)
    try:
        assert await broker.ready() == (True, "ok")

        async def times_out(stream: str, name: str, **_: Any) -> js_api.ConsumerInfo:
            raise nats.errors.TimeoutError

        with monkeypatch.context() as patched:
            patched.setattr(js, "consumer_info", times_out)
            assert await broker.ready() == (
                False,
                "consumer not answering: consumer info: nats: timeout",
            )

        del js.consumers[("TELEMETRY_RAW", "enricher")]
        assert await broker.ready() == (False, "consumer missing")
    finally:
        await broker.close(timeout_s=1.0)


@pytest.mark.parametrize("failing", ["repair", "release"])
async def test_a_close_whose_first_steps_fail_still_drains_the_connection(
    failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left open, the connection would go on reconnecting while consuming starts on a new one.
    nc = FakeNats()
    broker = await open_broker(nc, monkeypatch)

    async def fails(*_: Any) -> None:
        raise RuntimeError("broken")

    if failing == "repair":
        monkeypatch.setattr(broker._repair, "close", fails)
    else:
        monkeypatch.setattr(broker.subscriptions[0], "unsubscribe", fails)

    with pytest.raises(RuntimeError, match="broken"):  # still raised, for the caller to log
        await broker.close(timeout_s=1.0)
    assert nc.drained
    assert nc.is_closed
