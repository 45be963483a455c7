"""The NATS adapter: a lost durable consumer is created again, readiness sees failing
fetches, and a dead letter carries its id and the sequence of its message, and is refused
for good only when NATS will refuse it again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import pytest
from indexer_fakes import FakeDeadLetters, quiet_writer
from nats.errors import ConnectionClosedError, MaxPayloadError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from indexer.consumer import EnrichedConsumer, NatsDeadLetters
from indexer.errors import DeadLetterRefusedError
from indexer.intake import Intake
from indexer.metrics import Metrics
from pipeline import subjects

NAME = "indexer"


class FakeJetStream:
    """The consumer's side of JetStream: a durable consumer that can be lost, and NATS away."""

    def __init__(self) -> None:
        self.configs: list[js_api.ConsumerConfig] = []
        self.exists = False
        self.nats_away = False
        self.fetches = 0
        self.deliver: list[FakeMsg] = []  # handed to the next fetch
        self.fetch_error: Exception | None = None  # what every fetch fails with, if set
        self.refusal: Exception | None = None  # what add_consumer fails with, if set
        self.unsubscribed = False
        self.unsubscribe_hangs = False  # NATS not reading what is written to it
        self.unsubscribe_error: Exception | None = None  # what unsubscribe fails with, if set

    async def add_consumer(self, stream: str, config: js_api.ConsumerConfig) -> None:
        assert stream == subjects.ENRICHED_STREAM
        if self.nats_away:
            raise ConnectionError("nats away")
        if self.refusal is not None:
            raise self.refusal
        self.configs.append(config)
        self.exists = True

    async def consumer_info(self, stream: str, name: str) -> object:
        if self.nats_away:
            raise ConnectionError("nats away")
        if not self.exists:
            raise NotFoundError(code=404, err_code=10014, description="consumer not found")
        return js_api.ConsumerInfo(name=name, stream_name=stream, num_pending=0)

    async def pull_subscribe_bind(self, *, durable: str, stream: str) -> FakeSubscription:
        return FakeSubscription(self)


class FakeMsg:
    """A fetched message as JetStreamDelivery reads it; remembers how it was settled."""

    def __init__(self) -> None:
        self.metadata = object()
        self.settled: list[str] = []

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")


class FakeSubscription:
    def __init__(self, js: FakeJetStream) -> None:
        self._js = js

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        self._js.fetches += 1
        await asyncio.sleep(0)
        if self._js.deliver:
            msgs, self._js.deliver = self._js.deliver, []
            return msgs
        if self._js.fetch_error is not None:
            raise self._js.fetch_error
        if self._js.nats_away or not self._js.exists:
            # What nats-py raises for a pull nobody answers (no responders).
            raise ServiceUnavailableError()
        raise TimeoutError  # answered: nothing to fetch

    async def consumer_info(self) -> js_api.ConsumerInfo:
        return await cast(Any, self._js.consumer_info(subjects.ENRICHED_STREAM, NAME))

    async def unsubscribe(self) -> None:
        if self._js.unsubscribe_hangs:
            await asyncio.Event().wait()
        if self._js.unsubscribe_error is not None:
            raise self._js.unsubscribe_error
        self._js.unsubscribed = True


def consumer(js: FakeJetStream) -> EnrichedConsumer:
    # Real intake and writer: no message ever arrives here, fetches are answered or fail.
    writer = quiet_writer()
    intake = Intake(writer, FakeDeadLetters(), index_prefix="t-", max_deliveries=5)
    return EnrichedConsumer(
        cast(JetStreamContext, js),
        intake,
        writer,
        name=NAME,
        fetch_batch=10,
        max_ack_pending=100,
        ack_wait_s=30.0,
        pending_refresh_s=60.0,
        metrics=Metrics(),
    )


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(0.001)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("indexer.consumer.NATS_RETRY_S", 0.001)


async def test_a_lost_consumer_is_created_again_with_its_configuration() -> None:
    js = FakeJetStream()
    fetcher = consumer(js)
    await fetcher.start()
    await until(lambda: js.fetches >= 2, "fetched")
    assert fetcher.problem is None
    js.exists = False  # deleted by hand, or lost with the stream's state
    await until(lambda: len(js.configs) == 2, "created again")
    assert js.configs[1] == js.configs[0]
    assert js.configs[1].durable_name == NAME
    assert js.configs[1].ack_policy is js_api.AckPolicy.EXPLICIT
    assert js.configs[1].max_ack_pending == 100
    fetched = js.fetches
    await until(lambda: js.fetches > fetched and fetcher.problem is None, "fetching again")
    await fetcher.close()


async def test_problem_names_fetches_that_keep_failing_until_they_are_answered() -> None:
    js = FakeJetStream()
    fetcher = consumer(js)
    await fetcher.start()
    await until(lambda: js.fetches >= 1, "fetched")
    js.nats_away = True  # nobody answers: the consumer cannot be checked nor created
    await until(lambda: fetcher.problem is not None, "a problem")
    assert "fetch failing" in str(fetcher.problem)
    assert "ServiceUnavailableError" in str(fetcher.problem)
    assert len(js.configs) == 1  # not created again while NATS cannot say it is missing
    js.nats_away = False
    await until(lambda: fetcher.problem is None, "answered again")
    assert len(js.configs) == 1  # it was there all along
    await fetcher.close()


async def test_fetches_failing_are_named_with_what_jetstream_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    js = FakeJetStream()
    fetcher = consumer(js)
    await fetcher.start()
    await until(lambda: js.fetches >= 1, "fetched")
    js.fetch_error = ServiceUnavailableError(code=503, description="JetStream not ready")
    js.exists = False  # and the consumer is gone, but JetStream does not take it again
    js.refusal = BadRequestError(code=400, err_code=10148, description="consumer already exists")
    answered = (
        "nats: ServiceUnavailableError: code=503 err_code=None description='JetStream not ready'"
    )
    await until(lambda: fetcher.problem == f"fetch failing: {answered}", "the problem named")
    await until(lambda: len(caplog.messages) >= 2, "logged")
    assert caplog.messages[:2] == [  # not `ServiceUnavailableError()`, `BadRequestError()`
        f"fetch failing: {answered}; retrying",
        "consumer indexer is missing and could not be created again: nats: BadRequestError:"
        " code=400 err_code=10148 description='consumer already exists'",
    ]
    await fetcher.close()


async def test_fetching_that_ends_on_an_error_is_named_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    js = FakeJetStream()
    fetcher = consumer(js)
    intake: Intake = fetcher._intake
    handled = intake.handle

    async def broken(delivery: Any) -> None:  # a bug in handing a message over
        raise RuntimeError("handle bug")

    intake.handle = broken  # type: ignore[method-assign]
    fetched = [FakeMsg() for _ in range(3)]
    js.deliver = fetched
    await fetcher.start()

    await until(lambda: fetcher.problem is not None, "a problem")
    assert fetcher.problem == "fetching stopped on an error: RuntimeError('handle bug')"
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith("fetching stopped on an error: RuntimeError('handle bug')")
    assert line.exc_info is not None  # with its stack
    # Fetched and never handed over: given back, not held (touched) for ever.
    await until(lambda: all(msg.settled == ["nak"] for msg in fetched), "given back")
    assert intake.in_progress == 0

    intake.handle = handled  # type: ignore[method-assign]
    fetched_before = js.fetches
    await until(lambda: js.fetches > fetched_before and fetcher.problem is None, "fetching again")
    await fetcher.close()


async def test_close_gives_up_an_unsubscribe_nats_does_not_take_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    js = FakeJetStream()
    fetcher = consumer(js)
    await fetcher.start()
    js.unsubscribe_hangs = True  # nats-py's buffer to NATS full: the write waits for ever

    await asyncio.wait_for(fetcher.close(timeout_s=0.1), 5)

    assert caplog.messages == [
        "consumer indexer: unsubscribe not done within 0.1 s; going on without it"
    ]
    assert caplog.records[0].levelno == logging.WARNING
    assert not js.unsubscribed


async def test_close_logs_an_unsubscribe_nats_refuses_with_what_it_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    js = FakeJetStream()
    fetcher = consumer(js)
    await fetcher.start()
    js.unsubscribe_error = ConnectionClosedError()

    await fetcher.close()

    assert caplog.messages == [
        "consumer indexer: unsubscribe failed: nats: connection closed; going on without it"
    ]


async def test_close_with_no_time_left_still_unsubscribes_when_that_needs_no_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A stop past its deadline gives it 0 s: an unsubscribe NATS takes at once is still sent.
    js = FakeJetStream()
    fetcher = consumer(js)
    await fetcher.start()

    await fetcher.close(timeout_s=0.0)

    assert js.unsubscribed
    assert caplog.messages == []


class RecordingJetStream:
    """js.publish as the DLQ publisher calls it: what was published, and a PubAck."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 - nats-py's signature
        stream: str,
        headers: dict[str, str],
    ) -> js_api.PubAck:
        assert stream == subjects.DLQ_STREAM
        self.published.append((subject, payload, headers))
        return js_api.PubAck(stream=stream, seq=len(self.published), duplicate=False)


async def test_a_dead_letter_carries_its_id_and_the_sequence_of_its_message() -> None:
    js = RecordingJetStream()
    dead_letters = NatsDeadLetters(cast(JetStreamContext, js))

    again = await dead_letters.publish(
        reason="undecodable: not an EnrichedBatch",
        data=b"\xff garbage",
        subject="telemetry.enriched.v1.shop",
        headers={subjects.MSG_ID_HEADER: "enr:7:a"},
        deliveries=2,
        msg_id="41:enr:7:a",
        source_seq=41,
    )

    assert again is False
    [(subject, payload, headers)] = js.published
    assert (subject, payload) == ("telemetry.dlq.v1.indexer", b"\xff garbage")
    assert headers[subjects.MSG_ID_HEADER] == "dlq:indexer:41:enr:7:a"
    assert headers[subjects.DLQ_SOURCE_SEQ_HEADER] == "41"
    assert headers[subjects.DLQ_DELIVERIES_HEADER] == "2"


class FailingJetStream:
    """js.publish failing with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def publish(self, subject: str, payload: bytes, **_: Any) -> js_api.PubAck:
        raise self.error


async def _dead_letter_failing_with(error: Exception) -> None:
    dead_letters = NatsDeadLetters(cast(JetStreamContext, FailingJetStream(error)))
    await dead_letters.publish(
        reason="undecodable: not an EnrichedBatch",
        data=b"\xff garbage",
        subject="telemetry.enriched.v1.shop",
        headers={},
        deliveries=1,
        msg_id="41:enr:7:a",
        source_seq=41,
    )


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (MaxPayloadError(), "the DLQ refused it: nats: maximum payload exceeded"),
        (
            BadRequestError(code=400, err_code=10054, description="maximum message size exceeded"),
            "the DLQ refused it: nats: BadRequestError: code=400 err_code=10054"
            " description='maximum message size exceeded'",
        ),
    ],
    ids=["max_payload", "bad_request"],
)
async def test_a_dead_letter_nats_refuses_for_good_raises_dead_letter_refused(
    error: Exception, text: str
) -> None:
    with pytest.raises(DeadLetterRefusedError) as raised:
        await _dead_letter_failing_with(error)
    assert str(raised.value) == text
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        ServiceUnavailableError(code=503, description="no leader"),
        ConnectionClosedError(),
        TimeoutError(),
    ],
    ids=["unavailable", "closed", "timeout"],
)
async def test_a_dead_letter_nats_may_take_later_raises_its_error_as_it_is(
    error: Exception,
) -> None:
    # Intake naks its message: the redelivery tries it again.
    with pytest.raises(type(error)) as raised:
        await _dead_letter_failing_with(error)
    assert raised.value is error
