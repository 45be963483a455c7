"""start()/stop() on real sockets with a fake broker: in-flight requests finish first."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import nats.errors
import nats.js.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import JetStreamContext
from nats.js import api as js_api

from gateway import Gateway
from gateway._publisher import JetStreamPublisher
from gateway.errors import RETRY_TELLS, Unavailable, Unconfirmed
from pipeline import subjects
from pipeline.errors import ListenError
from pipeline.settings import NatsSettings
from pipeline.tasks import cancel_and_wait
from tests.unit.gateway.conftest import (
    WRITE_KEY,
    FakeBroker,
    FakeQuery,
    asgi_client,
    unit_config,
)
from tests.unit.nats_fakes import FakeJetStream, FakeNats
from tests.unit.polling import until

ONE = (
    b'[{"event_id":"e-1","session_id":"s","user_id":"u","event_name":"n",'
    b'"client_timestamp":"2024-01-01T00:00:00Z"}]'
)


class GatedBroker(FakeBroker):
    """Holds every publish until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.stopped = False
        self.closed_under_publish: bool | None = None  # was the broker stopped when it ran?

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        self.entered.set()
        await self.gate.wait()
        self.closed_under_publish = self.stopped
        return await super().publish(subject, payload, msg_id=msg_id)

    async def stop(self, *, timeout_s: float) -> None:
        self.stopped = True


async def test_stop_lets_in_flight_publishes_finish_before_closing_the_broker() -> None:
    broker = GatedBroker()
    gateway = Gateway(
        unit_config(GATEWAY_HTTP_PORT="0", GATEWAY_GRPC_PORT="0"), broker=broker, query=FakeQuery()
    )
    await gateway.start()
    await gateway.start()  # idempotent
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        pending = asyncio.create_task(
            http.post("/v1/track", content=ONE, headers={"X-Api-Key": WRITE_KEY})
        )
        await broker.entered.wait()
        stopping = asyncio.create_task(gateway.stop())
        for _ in range(20):  # let stop() run as far as it can while the publish is held
            await asyncio.sleep(0.01)
        assert not broker.stopped
        assert gateway.core.in_flight == 1

        broker.gate.set()
        response = await pending
        await stopping

    assert response.status_code == 202
    assert len(broker.stored) == 1
    assert broker.closed_under_publish is False
    assert broker.stopped
    await gateway.stop()  # idempotent


@pytest.mark.parametrize("taken", ["GATEWAY_HTTP_PORT", "GATEWAY_GRPC_PORT"])
async def test_a_port_taken_is_an_error_naming_its_setting_and_leaves_nothing_running(
    taken: str, taken_port: int
) -> None:
    """NATS unreachable, whose connect takes a cancel for the end of a wait of its own:
    left running, it kept the process from ever exiting."""
    ports = {"GATEWAY_HTTP_PORT": "0", "GATEWAY_GRPC_PORT": "0", taken: str(taken_port)}
    gateway = Gateway(unit_config(NATS_URL="nats://127.0.0.1:1", **ports), query=FakeQuery())

    with pytest.raises(ListenError) as caught:
        await asyncio.wait_for(gateway.start(), 10)

    assert f"127.0.0.1:{taken_port}: address already in use" in str(caught.value)
    assert f"set {taken} to a free port" in str(caught.value)
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("taken", ["GATEWAY_HTTP_PORT", "GATEWAY_GRPC_PORT"])
async def test_only_a_gateway_that_started_says_it_drained(
    taken: str, taken_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed start is said by the service's one line; a drain claimed before it read as if
    the gateway had run and stopped cleanly."""
    ports = {"GATEWAY_HTTP_PORT": "0", "GATEWAY_GRPC_PORT": "0"}
    failed = Gateway(
        unit_config(**{**ports, taken: str(taken_port)}), broker=FakeBroker(), query=FakeQuery()
    )
    served = Gateway(unit_config(**ports), broker=FakeBroker(), query=FakeQuery())

    with caplog.at_level(logging.INFO, logger="gateway"):
        with pytest.raises(ListenError):
            await failed.start()
        await failed.stop()  # as the service's run stops it: already stopped, nothing said
        failed_said = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
        await served.start()
        await served.stop()

    assert failed_said == []
    assert "gateway drained and closed" in caplog.messages


class LateBroker(FakeBroker):
    """Not ready until `up` is set, like NATS still starting."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    async def ready(self) -> tuple[bool, str]:
        return (True, "ok") if self.up else (False, "nats not connected")


async def test_grpc_health_is_serving_as_soon_as_readyz_says_ready() -> None:
    broker = LateBroker()
    gateway = Gateway(
        unit_config(GATEWAY_HTTP_PORT="0", GATEWAY_GRPC_PORT="0"), broker=broker, query=FakeQuery()
    )
    await gateway.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
            assert (await http.get("/readyz")).status_code == 503
            for name in ("", "telemetry.v1.IngestService"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

            broker.up = True  # the health poll sleeps a second; /readyz must not run ahead
            assert (await http.get("/readyz")).status_code == 200
            for name in ("", "telemetry.v1.IngestService"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, name

            broker.up = False
            assert (await http.get("/readyz")).status_code == 503
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await channel.close()
        await gateway.stop()


async def test_a_warning_names_the_limits_when_events_may_not_fit_one_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ports = {"GATEWAY_HTTP_PORT": "0", "GATEWAY_GRPC_PORT": "0"}
    warnings = []
    for max_payload in (1024 * 1024, 64 * 1024):  # the default limits fit 1 MiB, not 64 KiB
        gateway = Gateway(
            unit_config(**ports), broker=FakeBroker(max_payload=max_payload), query=FakeQuery()
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gateway"):
            await gateway.start()
            try:
                assert (await gateway.ready())[0]
            finally:
                await gateway.stop()
        warnings.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])

    fits, too_small = warnings
    assert fits == []
    [message] = too_small
    assert "GATEWAY_MAX_METADATA_VALUE_CHARS" in message
    assert "max_payload" in message


class UnansweringJetStream(FakeJetStream):
    """Never acks a publish."""

    def __init__(self) -> None:
        super().__init__()
        self.publishing = asyncio.Event()

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> js_api.PubAck:
        self.publishing.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_stop_whose_every_step_hangs_ends_within_its_time_and_never_answers_202(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    step_min_s, close_s, stop_s = 0.2, 0.2, 1.0
    monkeypatch.setattr("gateway._service.STOP_STEP_MIN_S", step_min_s)
    monkeypatch.setattr("pipeline.natsconn.CLOSE_TIMEOUT_S", close_s)
    js = UnansweringJetStream()
    nc = FakeNats(js=js, drain_hangs=True)  # NATS not answering: the drain never ends

    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        return nc

    monkeypatch.setattr("gateway._publisher.natsconn.connect", connect)
    config = unit_config(
        GATEWAY_HTTP_PORT="0", GATEWAY_GRPC_PORT="0", GATEWAY_GRACEFUL_STOP_S=str(stop_s)
    )
    broker = JetStreamPublisher(config, publish_timeout_s=config.publish_timeout_s)
    gateway = Gateway(config, broker=broker, query=FakeQuery())
    await gateway.start()
    loop = asyncio.get_running_loop()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
            for _ in range(500):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            pending = asyncio.create_task(
                http.post("/v1/track", content=ONE, headers={"X-Api-Key": WRITE_KEY})
            )
            await asyncio.wait_for(js.publishing.wait(), 10)  # a request waiting for its PubAck
            started = loop.time()
            stopping = asyncio.create_task(gateway.stop())
            await asyncio.wait({stopping}, timeout=10)
            elapsed = loop.time() - started
            await cancel_and_wait(stopping)  # one that did not end is ended (a failed test)
            try:
                status: int | None = (await pending).status_code
            except httpx.HTTPError:
                status = None  # cut off
    finally:
        await gateway.stop()

    # The request gets what the stop is given, the drain its least; then scheduling.
    assert stop_s <= elapsed < stop_s + (step_min_s + close_s) + 3.0
    assert status != 202  # never stored
    assert nc.is_closed


class FailsFirst(FakeJetStream):
    """A JetStream whose first stream request raises `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error: Exception | None = error

    async def add_stream(self, config: js_api.StreamConfig) -> js_api.StreamInfo:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return await super().add_stream(config)


async def started_publisher(nc: FakeNats, monkeypatch: pytest.MonkeyPatch) -> JetStreamPublisher:
    """A JetStreamPublisher on `nc`, started (connecting and ensuring the streams)."""

    async def connect(settings: NatsSettings, *, name: str, **_: Any) -> FakeNats:
        return nc

    monkeypatch.setattr("gateway._publisher.natsconn.connect", connect)
    config = unit_config()
    broker = JetStreamPublisher(config, publish_timeout_s=config.publish_timeout_s)
    await broker.start()
    return broker


async def ready_publisher(nc: FakeNats, monkeypatch: pytest.MonkeyPatch) -> JetStreamPublisher:
    """A JetStreamPublisher on `nc`, started and ready (its streams ensured)."""
    broker = await started_publisher(nc, monkeypatch)
    for _ in range(500):
        if (await broker.ready())[0]:
            return broker
        await asyncio.sleep(0.01)
    reason = (await broker.ready())[1]
    await broker.stop(timeout_s=1.0)
    raise AssertionError(f"publisher never ready: {reason}")


async def test_streams_not_ensured_yet_are_logged_with_a_word_for_the_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("gateway._publisher.STREAM_RETRY_S", 0.001)
    timed_out = FailsFirst(TimeoutError())  # no text, as asyncio's timeout
    broker = await ready_publisher(FakeNats(js=timed_out), monkeypatch)
    await broker.stop(timeout_s=1.0)
    assert "streams not ensured yet: TimeoutError" in caplog.messages  # not an empty text


async def test_a_bug_ensuring_the_streams_is_logged_with_its_stack_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("gateway._publisher.STREAM_RETRY_S", 0.001)
    buggy = FailsFirst(TypeError("a bug in the stream config"))
    broker = await ready_publisher(FakeNats(js=buggy), monkeypatch)
    await broker.stop(timeout_s=1.0)
    (record,) = [r for r in caplog.records if "unexpected" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith(
        "streams not ensured yet: unexpected TypeError('a bug in the stream config')"
    )
    assert record.exc_info is not None


class HeldJetStream(FakeJetStream):
    """A JetStream whose stream requests wait while `held` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.released = asyncio.Event()

    async def add_stream(self, config: js_api.StreamConfig) -> js_api.StreamInfo:
        if self.held:
            await self.released.wait()
        return await super().add_stream(config)


async def test_readiness_names_the_last_error_of_ensuring_the_streams_until_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway._publisher.STREAM_RETRY_S", 0.001)
    js = HeldJetStream()
    js.answering = False  # JetStream not answering yet: each try times out
    broker = await started_publisher(FakeNats(js=js), monkeypatch)
    try:

        async def answers(expected: tuple[bool, str]) -> bool:
            return await broker.ready() == expected

        waiting = (False, "streams not ensured yet: nats: timeout")
        await until(lambda: answers(waiting), "naming the error")
        js.answering = True
        await until(lambda: answers((True, "ok")), "ready once the streams are ensured")

        # Lost and ensured again, the first try not answered yet: no error of the earlier tries.
        js.delete_stream(subjects.RAW_STREAM)
        js.held = True
        assert await broker.ready() == (False, f"stream {subjects.RAW_STREAM} missing")
        assert await broker.ready() == (False, "streams not ensured yet")
        js.released.set()
        await until(lambda: answers((True, "ok")), "ready once ensured again")
    finally:
        await broker.stop(timeout_s=1.0)


class FullStore(FakeJetStream):
    """A JetStream that refuses publishes as one whose storage is exhausted does."""

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> js_api.PubAck:
        raise nats.js.errors.ServiceUnavailableError(
            code=503, err_code=10023, description="insufficient resources"
        )


async def test_batches_jetstream_does_not_store_are_logged_with_its_answer_once_an_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # NATS connected and the stream there (ready), yet every batch refused: without a line
    # the operator sees 503s and nothing of why.
    broker = await ready_publisher(FakeNats(js=FullStore()), monkeypatch)
    try:
        for _ in range(3):
            with pytest.raises(
                Unavailable, match=r"did not store the batch: ServiceUnavailableError$"
            ):
                await broker.publish("telemetry.raw.v1.app", b"batch", msg_id="b")
    finally:
        await broker.stop(timeout_s=1.0)
    lines = [message for message in caplog.messages if message.startswith("batch not stored")]
    assert len(lines) == 1  # the other two held back
    assert "insufficient resources" in lines[0]
    assert "since the last line" not in lines[0]  # the first line: none held back to count


class LateAckJetStream(FakeJetStream):
    """Keeps message ids as JetStream's duplicate window does; while `late`, it stores each
    publish but its ack does not come within the timeout (NATS paused a few seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.late = True
        self.ids: set[str] = set()

    async def publish(
        self, subject: str, payload: bytes = b"", *, headers: dict[str, str], **_: Any
    ) -> js_api.PubAck:
        msg_id = headers[subjects.MSG_ID_HEADER]
        duplicate = msg_id in self.ids
        if not duplicate:
            self.ids.add(msg_id)
            self.published.append((subject, payload))
        if self.late:
            raise nats.errors.TimeoutError
        return js_api.PubAck(
            stream=subjects.RAW_STREAM, seq=len(self.published), duplicate=duplicate
        )


TWO = (
    b'[{"event_id":"e-1","session_id":"s","user_id":"u","event_name":"n",'
    b'"client_timestamp":"2024-01-01T00:00:00Z"},'
    b'{"event_id":"e-2","session_id":"s","user_id":"u","event_name":"n",'
    b'"client_timestamp":"2024-01-01T00:00:00Z"}]'
)


async def test_a_batch_whose_ack_came_late_is_answered_as_maybe_stored_and_counted_apart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # JetStream stores the batch, but its ack comes after GATEWAY_PUBLISH_TIMEOUT_S: the 503
    # must not say it is not stored, since the retry answers duplicate: true.
    js = LateAckJetStream()
    broker = await ready_publisher(FakeNats(js=js), monkeypatch)
    gateway = Gateway(unit_config(), broker=broker, query=FakeQuery())
    headers = {"X-Api-Key": WRITE_KEY, "Idempotency-Key": "k-1"}
    try:
        async with asgi_client(gateway) as http:
            first = await http.post("/v1/track", content=TWO, headers=headers)
            js.late = False
            again = await http.post("/v1/track", content=TWO, headers=headers)
    finally:
        await broker.stop(timeout_s=1.0)

    assert first.status_code == 503
    assert first.headers["retry-after"] == "1"
    assert first.json() == {
        "code": "unavailable",
        "message": "the broker did not confirm the batch within 5 s; it may be stored: retry it"
        " with the same Idempotency-Key (or the same events), and a stored batch answers"
        " duplicate: true",
    }
    assert again.status_code == 202
    assert (again.json()["accepted"], again.json()["duplicate"]) == (2, True)
    assert len(js.published) == 1
    # Its events are counted apart, once: the retry, a duplicate, counts nothing again.
    sample = gateway.metrics.registry.get_sample_value
    assert sample("gateway_events_total", {"outcome": "unconfirmed", "reason": ""}) == 2
    assert sample("gateway_events_total", {"outcome": "accepted", "reason": ""}) == 0
    assert sample("gateway_duplicate_batches_total") == 1
    assert "batch not confirmed, answered 503 (it may be stored): nats: timeout" in caplog.messages
    assert not [m for m in caplog.messages if m.startswith("batch not stored")]


NOT_STORED = "the broker did not store the batch: "


def _raised(call: Callable[[], object]) -> Exception:
    """What `call` raises, with its traceback (where it was raised tells what it means)."""
    try:
        call()
    except Exception as err:
        return err
    raise AssertionError("it raised nothing")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        # No ack in time, or the socket failing as the publish was written: it may be stored.
        (
            nats.errors.TimeoutError(),
            f"the broker did not confirm the batch within 5 s; {RETRY_TELLS}",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            f"the connection to the broker was lost before it confirmed the batch; {RETRY_TELLS}",
        ),
        # Written, then answered with something that is not a PubAck (not JSON; JSON without
        # a stream and a sequence).
        (
            _raised(lambda: json.loads(b"+OK")),
            f"the broker's answer to the batch was not a confirmation; {RETRY_TELLS}",
        ),
        (
            _raised(lambda: js_api.PubAck.from_response({})),
            f"the broker's answer to the batch was not a confirmation; {RETRY_TELLS}",
        ),
        # Refused by JetStream, nobody answering for the subject, or nothing written.
        (
            nats.js.errors.ServiceUnavailableError(code=503, err_code=10023, description="full"),
            NOT_STORED + "ServiceUnavailableError",
        ),
        (
            nats.js.errors.APIError(code=400, err_code=10060, description="stream"),
            NOT_STORED + "APIError",
        ),
        (nats.js.errors.NoStreamResponseError(), NOT_STORED + "NoStreamResponseError"),
        (nats.errors.OutboundBufferLimitError(), NOT_STORED + "OutboundBufferLimitError"),
        (nats.errors.ConnectionClosedError(), NOT_STORED + "ConnectionClosedError"),
        (nats.errors.ConnectionDrainingError(), NOT_STORED + "ConnectionDrainingError"),
        (nats.errors.MaxPayloadError(), NOT_STORED + "MaxPayloadError"),
    ],
    ids=lambda value: (
        type(value).__name__
        if isinstance(value, Exception)
        else ("unconfirmed" if value.endswith(RETRY_TELLS) else "not-stored")
    ),
)
async def test_a_publish_that_may_be_stored_is_unconfirmed_one_known_not_stored_says_so(
    error: Exception, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = FakeJetStream()
    js.publish_error = error
    broker = await ready_publisher(FakeNats(js=js), monkeypatch)
    try:
        with pytest.raises(Unavailable) as caught:
            await broker.publish("telemetry.raw.v1.app", b"batch", msg_id="b")
    finally:
        await broker.stop(timeout_s=1.0)
    assert str(caught.value) == message
    assert isinstance(caught.value, Unconfirmed) == message.endswith(RETRY_TELLS)


class Answered(FakeJetStream):
    """JetStream whose publish is nats-py's own, the broker answering it `reply`."""

    def __init__(self, reply: bytes) -> None:
        super().__init__()
        self.reply = reply

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> js_api.PubAck:
        async def request(*_: Any, **__: Any) -> SimpleNamespace:
            return SimpleNamespace(data=self.reply)

        connection: Any = SimpleNamespace(request=request)
        return await JetStreamContext(connection).publish(subject, payload, **kwargs)


@pytest.mark.parametrize(
    "reply",
    [b"+OK", b"\xff\xfe\xfd", b"5", b"{}", b'{"stream": "TELEMETRY_RAW"}', b'{"error": "full"}'],
)
async def test_an_answer_nats_py_cannot_read_as_a_puback_leaves_the_batch_unconfirmed(
    reply: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not JSON, not an object, no stream and sequence, an error that is no error object:
    something answered once the batch was written, so it may be stored."""
    broker = await ready_publisher(FakeNats(js=Answered(reply)), monkeypatch)
    try:
        with pytest.raises(Unconfirmed) as caught:
            await broker.publish("telemetry.raw.v1.app", b"batch", msg_id="b")
    finally:
        await broker.stop(timeout_s=1.0)
    assert str(caught.value).startswith("the broker's answer to the batch was not a confirmation")


@pytest.mark.parametrize(
    "error",
    [TypeError("publish() got an unexpected keyword argument"), ValueError("bad header")],
    ids=["TypeError", "ValueError"],
)
async def test_a_type_or_value_error_not_from_the_answer_is_raised_as_the_bug_it_is(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised before anything is written (a wrong argument, a header nats-py cannot
    encode): nothing may be stored, and a 503 saying it may be would hide the bug (500)."""
    js = FakeJetStream()
    js.publish_error = error
    broker = await ready_publisher(FakeNats(js=js), monkeypatch)
    try:
        with pytest.raises(type(error)) as caught:
            await broker.publish("telemetry.raw.v1.app", b"batch", msg_id="b")
    finally:
        await broker.stop(timeout_s=1.0)
    assert caught.value is error
