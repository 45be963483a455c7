"""NATS connection and the pipeline's JetStream streams.

Only adapter modules use `nats`; this one connects, creates the streams and
publishes to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from pipeline import subjects
from pipeline.settings import NatsSettings

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 1.0
CONNECT_RETRY_MAX_S = 5.0


async def connect(settings: NatsSettings, *, name: str) -> Client:
    """Connects to NATS, trying again until it answers; reconnects forever afterwards.

    A broker that is down at start is waited for (and logged), not a crash:
    readiness stays false meanwhile.
    """

    context = {"connection": name}
    connected: list[Client] = []  # the client, once connected

    async def on_disconnect() -> None:
        if connected and (connected[0].is_draining or connected[0].is_closed):
            log.info("nats connection closed", extra=context)  # our own stop, not an outage
            return
        log.warning("nats disconnected", extra=context)

    async def on_reconnect() -> None:
        server = connected[0].connected_url if connected else None
        log.info("nats reconnected", extra={**context, "server": server.netloc if server else ""})

    async def on_error(err: Exception) -> None:
        log.warning("nats error: %s", err, extra=context)

    delay = RECONNECT_WAIT_S
    while True:
        try:
            nc = await nats.connect(
                servers=list(settings.nats_url),
                name=name,
                connect_timeout=settings.nats_connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
        except (OSError, TimeoutError, nats.errors.Error) as err:
            log.warning("nats not reachable at %s: %s; retrying", ",".join(settings.nats_url), err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_S)
            continue
        connected.append(nc)
        log.info(
            "nats connected",
            extra={**context, "server": nc.connected_url.netloc if nc.connected_url else ""},
        )
        return nc


def stream_configs(settings: NatsSettings) -> list[js_api.StreamConfig]:
    """The pipeline's three streams: raw, enriched and dead letters, all on disk."""

    def one(name: str, subject: str, description: str) -> js_api.StreamConfig:
        return js_api.StreamConfig(
            name=name,
            description=description,
            subjects=[subject],
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            num_replicas=settings.stream_replicas,
            max_age=settings.stream_max_age_s,
            duplicate_window=settings.duplicate_window_s,
            discard=js_api.DiscardPolicy.OLD,
        )

    return [
        one(subjects.RAW_STREAM, subjects.RAW_SUBJECTS, "accepted batches with ingest context"),
        one(subjects.ENRICHED_STREAM, subjects.ENRICHED_SUBJECTS, "enriched batches"),
        one(subjects.DLQ_STREAM, subjects.DLQ_SUBJECTS, "messages a stage gave up on"),
    ]


async def ensure_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    """Creates the streams, or updates them to the configuration (idempotent)."""
    for config in stream_configs(settings):
        try:
            await js.add_stream(config)
        except BadRequestError as err:
            # 10058: a stream with this name exists with another configuration.
            if err.err_code != 10058:
                raise
            await js.update_stream(config)


@dataclass(frozen=True)
class StreamProblem:
    """Why the pipeline's streams are not usable: `missing` only when JetStream said so."""

    reason: str
    missing: bool


async def stream_problem(js: JetStreamContext, names: tuple[str, ...]) -> StreamProblem | None:
    """None when every named stream answers (a readiness check), else what is wrong.

    A slow or failed answer (a timeout, a reconnect in progress) is not "missing", so
    callers do not go re-creating streams that exist.
    """
    for name in names:
        try:
            await js.stream_info(name)
        except NotFoundError:
            return StreamProblem(f"stream {name} missing", missing=True)
        except Exception as err:
            return StreamProblem(
                f"stream {name} not answering ({type(err).__name__})", missing=False
            )
    return None


async def publish_dlq(
    js: JetStreamContext,
    *,
    stage: str,
    reason: str,
    data: bytes,
    source_subject: str,
    headers: Mapping[str, str] | None = None,
    deliveries: int = 0,
    msg_id: str = "",
    timeout_s: float = 5.0,
) -> bool:
    """Publishes the original bytes of a message a stage gives up on to the DLQ stream;
    True when the stream already had it (the same `msg_id`: a redelivery dead-lettered again)."""
    out = dict(headers or {})
    out.pop(subjects.MSG_ID_HEADER, None)
    out[subjects.DLQ_STAGE_HEADER] = stage
    # Header values must be one line.
    out[subjects.DLQ_REASON_HEADER] = " ".join(reason.split())[:1000]
    out[subjects.DLQ_SUBJECT_HEADER] = source_subject
    out[subjects.DLQ_DELIVERIES_HEADER] = str(deliveries)
    if msg_id:
        out[subjects.MSG_ID_HEADER] = f"dlq:{stage}:{msg_id}"
    ack = await js.publish(
        subjects.dlq_subject(stage),
        data,
        timeout=timeout_s,
        stream=subjects.DLQ_STREAM,
        headers=out,
    )
    return bool(ack.duplicate)


_NANOS_PER_S = 1_000_000_000


class JetStreamDelivery:
    """A JetStream message as the consumers' domain code sees it (their `Delivery` ports)."""

    __slots__ = ("_meta", "_msg")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self._meta = msg.metadata  # parsed from the reply subject once

    @property
    def data(self) -> bytes:
        """The payload."""
        return self._msg.data

    @property
    def subject(self) -> str:
        """The subject it was published on."""
        return self._msg.subject

    @property
    def headers(self) -> Mapping[str, str]:
        """Its headers (empty when it has none)."""
        return self._msg.headers or {}

    @property
    def stream_seq(self) -> int:
        """Its sequence in the stream: the same on every redelivery."""
        return int(self._meta.sequence.stream)

    @property
    def msg_id(self) -> str:
        """`<stream>:<sequence>`, a stable id of this stream message."""
        return f"{self._meta.stream}:{self._meta.sequence.stream}"

    @property
    def deliveries(self) -> int:
        """How often it has been delivered, this time included."""
        return int(self._meta.num_delivered or 1)

    @property
    def stored_ns(self) -> int:
        """When the stream stored it, in ns since the epoch."""
        return int(self._meta.timestamp.timestamp() * _NANOS_PER_S)

    async def ack(self) -> None:
        """Done: never deliver it again."""
        await self._msg.ack()

    async def nak(self, delay_s: float) -> None:
        """Failed for now: deliver it again after `delay_s`."""
        await self._msg.nak(delay=delay_s)

    async def term(self) -> None:
        """Given up on (after it went to the DLQ): never deliver it again."""
        await self._msg.term()

    async def in_progress(self) -> None:
        """Still working on it: restart its ack-wait timer."""
        await self._msg.in_progress()
