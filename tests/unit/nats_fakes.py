"""A stand-in NATS connection and JetStream for the services' start, readiness and recovery:
streams and durable consumers that can be deleted, and a JetStream that can stop answering.

Nothing is ever delivered: every fetch is answered empty (or fails, as nats-py's does when
nobody answers it: the stream or the consumer gone, JetStream away).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js import api as js_api
from nats.js.errors import NotFoundError, ServiceUnavailableError

STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
FETCH_WAIT_S = 0.005  # an empty fetch's wait, so a fetch loop does not spin
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeJetStream:
    """Streams by name, durable consumers by (stream, name); `answering` False: JetStream
    does not answer (disabled, no leader), each request failing as nats-py's times out;
    `publish_error`: what every publish raises."""

    def __init__(self) -> None:
        self.streams: dict[str, js_api.StreamConfig] = {}
        self.consumers: dict[tuple[str, str], js_api.ConsumerConfig] = {}
        self.answering = True
        self.streams_added = 0  # add_stream calls answered
        self.published: list[tuple[str, bytes]] = []
        self.publish_error: Exception | None = None

    def _answer(self) -> None:
        if not self.answering:
            raise TimeoutError("nats: timeout")

    def _stream(self, name: str) -> js_api.StreamConfig:
        self._answer()
        if name not in self.streams:
            raise NotFoundError(code=404, err_code=STREAM_NOT_FOUND, description="stream not found")
        return self.streams[name]

    def delete_stream(self, name: str) -> None:
        """Deleted by hand: its consumers go with it."""
        del self.streams[name]
        for key in [key for key in self.consumers if key[0] == name]:
            del self.consumers[key]

    async def add_stream(self, config: js_api.StreamConfig) -> js_api.StreamInfo:
        self._answer()
        assert config.name is not None
        self.streams[config.name] = config
        self.streams_added += 1
        return js_api.StreamInfo(config=config, state=js_api.StreamState(0, 0, 0, 0, 0))

    async def update_stream(self, config: js_api.StreamConfig) -> js_api.StreamInfo:
        return await self.add_stream(config)

    async def stream_info(self, name: str) -> js_api.StreamInfo:
        config = self._stream(name)
        return js_api.StreamInfo(config=config, state=js_api.StreamState(0, 0, 0, 0, 0))

    async def add_consumer(
        self, stream: str, config: js_api.ConsumerConfig | None = None, **_: Any
    ) -> js_api.ConsumerInfo:
        self._stream(stream)
        assert config is not None
        assert config.durable_name is not None
        self.consumers[(stream, config.durable_name)] = config
        return await self.consumer_info(stream, config.durable_name)

    async def consumer_info(self, stream: str, name: str, **_: Any) -> js_api.ConsumerInfo:
        self._stream(stream)
        if (stream, name) not in self.consumers:
            raise NotFoundError(
                code=404, err_code=CONSUMER_NOT_FOUND, description="consumer not found"
            )
        config = self.consumers[(stream, name)]
        return js_api.ConsumerInfo(
            name=name, stream_name=stream, config=config, created=NOW, num_pending=0
        )

    async def pull_subscribe_bind(self, *, durable: str, stream: str, **_: Any) -> FakeSubscription:
        return FakeSubscription(self, stream, durable)

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> js_api.PubAck:
        if self.publish_error is not None:
            raise self.publish_error
        self._answer()
        self.published.append((subject, payload))
        return js_api.PubAck(stream="", seq=len(self.published))


class FakeSubscription:
    """A pull subscription bound to a durable consumer: fetches name the consumer, so one
    created again answers them."""

    def __init__(self, js: FakeJetStream, stream: str, durable: str) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self.fetches = 0

    async def fetch(self, batch: int = 1, timeout: float | None = 5, **_: Any) -> list[Any]:  # noqa: ASYNC109 - nats-py's signature
        self.fetches += 1
        await asyncio.sleep(FETCH_WAIT_S)
        if not self._js.answering or (self._stream, self._durable) not in self._js.consumers:
            raise ServiceUnavailableError()  # nobody answers the pull
        raise TimeoutError  # answered: nothing to fetch

    async def consumer_info(self) -> js_api.ConsumerInfo:
        return await self._js.consumer_info(self._stream, self._durable)

    async def unsubscribe(self) -> None:
        return None


@dataclass
class FakeNats:
    """A connected client: its JetStream, `is_connected` to set, core publishes (acks and naks
    among them) in `sent`, drain and close. With `drain_hangs` its drain never ends, as nats-py's
    does not with a server that does not answer: a first cancel only moves it on to a flush
    that hangs too. With `close_hangs` its close never ends either, as nats-py's does not while
    NATS does not read what it writes: a first cancel only ends its wait for a reconnect in
    progress."""

    js: FakeJetStream = field(default_factory=FakeJetStream)
    is_connected: bool = True
    is_closed: bool = False
    max_payload: int = 1024 * 1024
    connected_url: Any = None
    drain_hangs: bool = False
    close_hangs: bool = False
    drained: bool = False
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # nats-py's, as connect set them

    def jetstream(self, **_: Any) -> FakeJetStream:
        return self.js

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.sent.append((subject, payload))

    async def drain(self) -> None:
        if self.drain_hangs:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # the subscriptions never drained
            await asyncio.Event().wait()  # the flush never answered
        self.is_connected, self.is_closed = False, True
        self.drained = True

    async def close(self) -> None:
        if self.close_hangs:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # the reconnect in progress never ended
            await asyncio.Event().wait()  # what was buffered never written
        self.is_connected, self.is_closed = False, True
