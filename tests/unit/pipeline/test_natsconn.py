"""pipeline.natsconn: what the connection logs never show."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import nats.errors
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from pipeline import natsconn
from pipeline.config import load
from pipeline.logs import Throttle
from pipeline.settings import NatsSettings
from tests.unit.nats_fakes import FakeJetStream, FakeNats
from tests.unit.polling import until


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@10.0.0.5:4222", "10.0.0.5:4222"),
        ("tls://tok3n@nats.example:4443", "nats.example:4443"),
        ("alice:s3cret@127.0.0.1:4222", "127.0.0.1:4222"),
        ("nats://[::1]:4222", "[::1]:4222"),
        ("nats://host.example", "host.example"),
        (urlparse("nats://alice:s3cret@10.0.0.5:4222"), "10.0.0.5:4222"),
        (None, ""),
    ],
)
def test_an_address_is_host_and_port_only(url: str | None, shown: str) -> None:
    assert natsconn.address(url) == shown


async def test_connect_retries_log_no_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load(
        NatsSettings,
        {"NATS_URL": "nats://alice:s3cret@127.0.0.1:1", "NATS_CONNECT_TIMEOUT_S": "0.2"},
    )
    with caplog.at_level(logging.WARNING, logger=natsconn.log.name), pytest.raises(TimeoutError):
        await asyncio.wait_for(natsconn.connect(settings, name="test"), timeout=1.0)
    assert caplog.records  # each failed try is logged
    assert "s3cret" not in caplog.text
    assert "alice" not in caplog.text


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (
            BadRequestError(code=400, err_code=10148, description="consumer already exists"),
            "nats: BadRequestError: code=400 err_code=10148 description='consumer already exists'",
        ),
        (
            NotFoundError(code=404, err_code=10059, description="stream not found"),
            "nats: NotFoundError: code=404 err_code=10059 description='stream not found'",
        ),
        (nats.errors.TimeoutError(), "nats: timeout"),
        (TimeoutError(), "TimeoutError"),  # asyncio's timeout: no text of its own
    ],
)
def test_a_nats_error_is_described_by_what_nats_answered(err: Exception, text: str) -> None:
    assert natsconn.describe(err) == text  # where repr() says `BadRequestError()`


async def test_connect_retries_name_an_error_without_text_by_its_class(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tries = [TimeoutError()]  # the first try times out, the second connects

    async def fake_connect(**_: Any) -> _Client:
        if tries:
            raise tries.pop()
        return _Client()

    monkeypatch.setattr(natsconn.nats, "connect", fake_connect)
    monkeypatch.setattr(natsconn, "RECONNECT_WAIT_S", 0.001)
    with caplog.at_level(logging.WARNING, logger=natsconn.log.name):
        await natsconn.connect(load(NatsSettings, {}), name="test")
    assert caplog.messages == ["nats not reachable at 127.0.0.1:4222: TimeoutError; retrying"]


async def test_a_stream_not_answering_is_named_with_what_jetstream_answered() -> None:
    class Unavailable(FakeJetStream):
        async def stream_info(self, name: str) -> Any:
            raise ServiceUnavailableError(
                code=503, description="JetStream system temporarily unavailable"
            )

    problem = await natsconn.stream_problem(Unavailable(), ("TELEMETRY_RAW",))  # type: ignore[arg-type]

    assert problem == natsconn.StreamProblem(
        "stream TELEMETRY_RAW not answering (nats: ServiceUnavailableError: code=503"
        " err_code=None description='JetStream system temporarily unavailable')",
        missing=False,
    )


def test_dead_letters_are_kept_longer_than_the_events_streams() -> None:
    ages = {
        config.name: config.max_age for config in natsconn.stream_configs(load(NatsSettings, {}))
    }

    assert ages == {
        "TELEMETRY_RAW": 7 * 24 * 3600.0,
        "TELEMETRY_ENRICHED": 7 * 24 * 3600.0,
        "TELEMETRY_DLQ": 30 * 24 * 3600.0,
    }


class _ExistingStreams:
    """JetStream where every stream exists with another configuration (error 10058)."""

    def __init__(self) -> None:
        self.updated: list[StreamConfig] = []

    async def add_stream(self, config: StreamConfig) -> None:
        raise BadRequestError(code=400, err_code=10058, description="stream name already in use")

    async def update_stream(self, config: StreamConfig) -> None:
        self.updated.append(config)


async def test_an_existing_dlq_stream_gets_the_dead_letters_age() -> None:
    js = _ExistingStreams()
    settings = load(NatsSettings, {"STREAM_DLQ_MAX_AGE_S": "0", "STREAM_MAX_AGE_S": "3600"})

    await natsconn.ensure_streams(js, settings)

    assert {config.name: config.max_age for config in js.updated} == {
        "TELEMETRY_RAW": 3600.0,
        "TELEMETRY_ENRICHED": 3600.0,
        "TELEMETRY_DLQ": 0.0,  # no age limit: kept until replayed or deleted
    }


class _Client:
    """What connect() reads of a connected client."""

    def __init__(self) -> None:
        self.is_reconnecting = False
        self.is_draining = False
        self.is_closed = False
        self.connected_url = urlparse("nats://127.0.0.1:4222")


async def _connected(
    monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[_Client, Callable[[Exception], Awaitable[None]]]:
    """A connection made through a stand-in nats.connect, and the error callback it got."""
    client = _Client()
    callbacks: dict[str, Any] = {}

    async def fake_connect(**given: Any) -> _Client:
        callbacks.update(given)
        return client

    monkeypatch.setattr(natsconn.nats, "connect", fake_connect)
    await natsconn.connect(load(NatsSettings, {}), name="test", **options)
    return client, callbacks["error_cb"]


REFUSED = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4222)")


async def test_the_failed_tries_of_a_reconnect_are_one_line_other_errors_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, on_error = await _connected(monkeypatch)

    with caplog.at_level(logging.WARNING, logger=natsconn.log.name):
        client.is_reconnecting = True  # nats-py reports each failed try, about once a second
        for _ in range(60):
            await on_error(REFUSED)
        client.is_reconnecting = False
        await on_error(nats.errors.SlowConsumerError(subject="s", reply="", sid=1, sub=None))
        await on_error(nats.errors.Error("nats: permissions violation"))

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 3, lines
    # The first line held none back: no "(0 more since the last line)".
    assert lines[0] == (
        "nats error while connecting: [Errno 111] Connect call failed ('127.0.0.1', 4222)"
    )
    assert "slow consumer" in lines[1]
    assert "permissions violation" in lines[2]


async def test_the_next_line_of_an_outage_says_how_many_were_left_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    client, on_error = await _connected(
        monkeypatch, outage_log=Throttle(30.0, clock=lambda: now[0])
    )
    client.is_reconnecting = True
    with caplog.at_level(logging.WARNING, logger=natsconn.log.name):
        for _ in range(61):
            await on_error(REFUSED)
            now[0] += 1.0

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.held_back for r in warnings] == [0, 29, 29]
    assert warnings[0].getMessage().endswith("4222)")
    assert warnings[1].getMessage().endswith("4222) (29 more since the last line)")


async def test_a_missing_stream_is_ensured_again_once_at_a_time_and_paced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(natsconn, "STREAM_RETRY_S", 0.01)
    js = FakeJetStream()
    js.answering = False  # JetStream does not take them at first
    now = [0.0]
    repair = natsconn.StreamRepair(
        js,
        load(NatsSettings, {}),
        clock=lambda: now[0],
    )
    missing = natsconn.StreamProblem("stream TELEMETRY_DLQ missing", missing=True)
    slow = natsconn.StreamProblem("stream TELEMETRY_DLQ not answering (TimeoutError)", False)

    repair.check(slow)  # may well exist: nothing is made
    await asyncio.sleep(0.03)
    assert js.streams_added == 0
    repair.check(missing)
    repair.check(missing)  # one run at a time
    await asyncio.sleep(0.03)  # it tries again while JetStream does not answer
    js.answering = True
    for _ in range(100):
        if js.streams_added:
            break
        await asyncio.sleep(0.01)
    assert js.streams_added == 3  # one run: the three streams once
    repair.check(missing)  # done, but a run started less than STREAM_RETRY_S ago
    await asyncio.sleep(0.03)
    assert js.streams_added == 3
    now[0] += 1.0
    repair.check(missing)
    await asyncio.sleep(0.03)
    assert js.streams_added == 6
    await repair.close()
    now[0] += 1.0
    repair.check(missing)  # a readiness probe during a stop
    await asyncio.sleep(0.03)
    assert js.streams_added == 6


async def test_a_repair_that_keeps_failing_writes_a_line_per_outage_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(natsconn, "STREAM_RETRY_S", 0.001)
    tries = [0]

    async def not_answering(*_: object) -> None:
        tries[0] += 1
        raise TimeoutError("nats: timeout")

    monkeypatch.setattr(natsconn, "ensure_streams", not_answering)
    now = [0.0]
    repair = natsconn.StreamRepair(FakeJetStream(), load(NatsSettings, {}), clock=lambda: now[0])

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("cannot ensure streams")]

    async def tried(count: int) -> bool:
        return tries[0] >= count

    async def logged(count: int) -> bool:
        return len(lines()) >= count

    with caplog.at_level(logging.WARNING, logger=natsconn.log.name):
        repair.check(natsconn.StreamProblem("stream TELEMETRY_DLQ missing", missing=True))
        await until(lambda: tried(20), "tried 20 times")
        assert len(lines()) == 1
        assert "more since the last line" not in lines()[0].getMessage()
        now[0] += natsconn.OUTAGE_ERROR_LOG_INTERVAL_S
        await until(lambda: logged(2), "logged again")
        await repair.close()

    assert lines()[1].held_back >= 19
    assert lines()[1].getMessage().endswith(f"({lines()[1].held_back} more since the last line)")


async def test_a_drain_that_finishes_in_time_closes_the_connection_itself() -> None:
    nc = FakeNats()

    await natsconn.drain(nc, timeout_s=1.0)

    assert nc.drained
    assert nc.is_closed


async def test_a_drain_that_hangs_is_given_up_within_its_time_and_the_connection_closed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(natsconn, "CLOSE_TIMEOUT_S", 0.1)
    nc = FakeNats(drain_hangs=True)  # and it takes a first cancel for the end of its drain
    loop = asyncio.get_running_loop()
    started = loop.time()

    await asyncio.wait_for(natsconn.drain(nc, timeout_s=0.2), 5)

    assert loop.time() - started < 0.2 + 0.1 + 1.5  # its time, closing, a loaded machine
    assert nc.is_closed
    assert not nc.drained
    assert "nats drain not finished within 0.2 s; closing without it" in caplog.messages


async def test_a_drain_that_fails_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    class Reconnecting(FakeNats):
        async def drain(self) -> None:
            raise nats.errors.ConnectionReconnectingError

    nc = Reconnecting()

    await natsconn.drain(nc, timeout_s=1.0)

    assert nc.is_closed
    assert any(m.startswith("nats drain failed: ") for m in caplog.messages)


async def test_a_close_that_hangs_too_is_left_after_its_time_though_it_takes_a_first_cancel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(natsconn, "CLOSE_TIMEOUT_S", 0.1)
    nc = FakeNats(drain_hangs=True, close_hangs=True)  # a reconnect in progress, NATS not reading

    await asyncio.wait_for(natsconn.drain(nc, timeout_s=0.1), 2)

    assert "nats connection not closed: TimeoutError" in caplog.messages


async def test_a_close_that_fails_is_logged_and_gone_past(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(FakeNats):
        async def close(self) -> None:
            raise nats.errors.ConnectionReconnectingError

    await natsconn.close(Failing())

    assert caplog.messages == ["nats connection not closed: nats: connection reconnecting"]


async def test_a_connection_closed_already_is_left_as_it_is() -> None:
    nc = FakeNats(is_connected=False, is_closed=True)

    await natsconn.drain(nc, timeout_s=1.0)

    assert not nc.drained
