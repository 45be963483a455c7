"""`tpipe tail` over a stand-in NATS: where it starts in the stream, and how it rides out
NATS going away and coming back."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api
from telemetry.v1 import event_pb2

from pipeline import subjects
from tests.unit.nats_fakes import FakeJetStream, FakeNats
from tpipe import _cmd_tail, errors

# What the subscription hands over next: a message, or something that happens meanwhile.
Step = Msg | Callable[[], Awaitable[None]]


def message(stream_seq: int, consumer_seq: int) -> Msg:
    """An enriched batch of one event whose id names its stream sequence, as delivered by
    an ordered consumer (the reply subject carries the sequences)."""
    batch = event_pb2.EnrichedBatch(
        events=[
            event_pb2.EnrichedEvent(app_id="shop", event=event_pb2.Event(event_id=f"e{stream_seq}"))
        ]
    )
    reply = f"$JS.ACK.{subjects.ENRICHED_STREAM}.c.1.{stream_seq}.{consumer_seq}.0.0"
    return Msg(
        _client=None,
        subject="telemetry.enriched.v1.shop",
        reply=reply,
        data=batch.SerializeToString(),
    )  # type: ignore[arg-type]


class Ordered:
    """nats-py's ordered consumer state that tail may set: the last stream sequence seen."""

    def __init__(self) -> None:
        self._sseq = 0


class Subscription:
    """A push subscription that hands over `steps` in turn, then nothing."""

    def __init__(self, steps: list[Step]) -> None:
        self._steps = steps
        self._sub = type("Sub", (), {"_jsi": Ordered()})()

    async def next_msg(self, timeout: float = 1.0) -> Msg:  # noqa: ASYNC109 - nats-py's signature
        while self._steps:
            step = self._steps.pop(0)
            if isinstance(step, Msg):
                return step
            await step()
        raise nats.errors.TimeoutError

    async def unsubscribe(self) -> None:
        return None


class Enriched(FakeJetStream):
    """TELEMETRY_ENRICHED with messages up to `last_seq`; subscribing records the call."""

    def __init__(self, last_seq: int, steps: list[Step]) -> None:
        super().__init__()
        self.last_seq = last_seq
        self.subscription = Subscription(steps)
        self.subscribed: dict[str, Any] = {}

    async def stream_info(self, name: str) -> js_api.StreamInfo:
        state = js_api.StreamState(self.last_seq, 0, 1, self.last_seq, 0)
        return js_api.StreamInfo(config=js_api.StreamConfig(name=name), state=state)

    async def subscribe(self, subject: str, **options: Any) -> Subscription:
        self.subscribed = {"subject": subject, **options}
        return self.subscription


class Connection(FakeNats):
    """A connection that calls nats-py's disconnect callback on close, as nats-py does."""

    async def close(self) -> None:
        await super().close()
        if "disconnected_cb" in self.options:
            await self.options["disconnected_cb"]()


def connected(monkeypatch: pytest.MonkeyPatch, js: Enriched) -> Connection:
    nc = Connection(js=js)

    async def connect(**options: Any) -> Connection:
        nc.options = dict(options)
        return nc

    monkeypatch.setattr(_cmd_tail.nats, "connect", connect)
    return nc


def tail_args(count: int) -> argparse.Namespace:
    return argparse.Namespace(
        user=[], event=[], app=[], format="table", count=count, nats="nats://nats:4222"
    )


def shown_ids(out: str) -> list[str]:
    return [row.split()[-1] for row in out.splitlines()]


async def test_tail_never_shows_events_stored_before_it_started(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Re-created before it delivered anything (NATS restarted), nats-py's ordered consumer
    # starts over from the stream's first message.
    js = Enriched(last_seq=100, steps=[message(1, 1), message(2, 2), message(101, 3)])
    connected(monkeypatch, js)

    assert await _cmd_tail.run(tail_args(count=1)) == 0

    assert shown_ids(capsys.readouterr().out) == ["e101"]
    config = js.subscribed["config"]
    assert config.deliver_policy == js_api.DeliverPolicy.BY_START_SEQUENCE
    assert config.opt_start_seq == 101
    # nats-py re-creates the consumer after the last sequence it saw: the stream's end then.
    assert js.subscription._sub._jsi._sseq == 100


async def test_tail_waits_for_nats_as_long_as_it_takes_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def outage() -> None:
        for _ in range(3):  # a callback per failed reconnect would say it once still
            await nc.options["disconnected_cb"]()
        await nc.options["reconnected_cb"]()

    js = Enriched(last_seq=0, steps=[message(1, 1), outage, message(2, 2)])
    nc = connected(monkeypatch, js)

    assert await _cmd_tail.run(tail_args(count=2)) == 0

    out, err = capsys.readouterr()
    assert shown_ids(out) == ["e1", "e2"]
    # The first connect gives up as before; after it, nats-py reconnects without limit.
    assert nc.options["max_reconnect_attempts"] == -1
    # Said once each, and not again when tail closes its connection.
    assert err.count("waiting for NATS at nats://nats:4222") == 1, err
    assert err.count("NATS is back at nats://nats:4222") == 1, err


async def test_the_first_connect_still_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict[str, Any] = {}

    async def refused(**options: Any) -> None:
        given.update(options)
        raise nats.errors.NoServersError

    monkeypatch.setattr(_cmd_tail.nats, "connect", refused)

    with pytest.raises(errors.Unavailable, match="NATS is not reachable at nats://nats:4222"):
        await _cmd_tail.run(tail_args(count=1))
    assert given["max_reconnect_attempts"] == _cmd_tail.CONNECT_ATTEMPTS
