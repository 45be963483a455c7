"""NATS connection and the pipeline's JetStream streams.

Only adapter modules use `nats`; this one connects, creates the streams and
publishes to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import ParseResult, SplitResult, urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from pipeline import logs, subjects
from pipeline.settings import NatsSettings
from pipeline.tasks import cancel_and_wait

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 1.0
CONNECT_RETRY_MAX_S = 5.0
# nats-py reports every failed try of a reconnect (about one a second per connection) as
# an error: while NATS is away, one line this often, with how many were left out.
OUTAGE_ERROR_LOG_INTERVAL_S = 30.0
# Ensuring the streams again (a stream found missing): a try at most this often.
STREAM_RETRY_S = 1.0
# A connection not drained in time is closed without it, within this (closing waits for a
# reconnect in progress to end, and writes what is buffered).
CLOSE_TIMEOUT_S = 1.0
# What nats-py raises when NATS is away, slow, or refuses a request (JetStream's errors are
# nats.errors.Error too): worth trying again, unlike any other error, which is a bug.
ERRORS = (nats.errors.Error, OSError, TimeoutError)


def describe(err: BaseException) -> str:
    """What a NATS error says, for logs and readiness: its text, which for nats-py's errors is
    what NATS answered (`nats: NotFoundError: code=404 err_code=10014 description='consumer
    not found'`, where their repr is their class name alone), else its class name (asyncio's
    timeout has no text)."""
    return str(err) or type(err).__name__


def address(url: str | SplitResult | ParseResult | None) -> str:
    """`host:port` of a NATS URL for logs: never the user, password or token it may carry."""
    if url is None:
        return ""
    if isinstance(url, str):  # as nats-py reads it: without a scheme, nats://
        url = urlsplit(url if "://" in url else f"nats://{url}")
    try:
        port = url.port
    except ValueError:
        port = None
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


async def connect(
    settings: NatsSettings, *, name: str, outage_log: logs.Throttle | None = None
) -> Client:
    """Connects to NATS, trying again until it answers; reconnects forever afterwards.

    A broker that is down at start is waited for (and logged), not a crash:
    readiness stays false meanwhile. The errors of the tries made while it is away (a
    connect or reconnect that fails) are logged as `outage_log` paces them (default: one
    line per OUTAGE_ERROR_LOG_INTERVAL_S); other errors, each.
    """

    context = {"connection": name}
    connected: list[Client] = []  # the client, once connected
    outage_log = outage_log or logs.Throttle(OUTAGE_ERROR_LOG_INTERVAL_S)

    async def on_disconnect() -> None:
        if connected and (connected[0].is_draining or connected[0].is_closed):
            log.info("nats connection closed", extra=context)  # our own stop, not an outage
            return
        log.warning("nats disconnected", extra=context)

    async def on_reconnect() -> None:
        server = connected[0].connected_url if connected else None
        log.info("nats reconnected", extra={**context, "server": address(server)})

    async def on_error(err: Exception) -> None:
        if connected and not connected[0].is_reconnecting:
            log.warning("nats error: %s", describe(err), extra=context)
            return
        # A try that failed while NATS is away: disconnected/reconnected tell the outage.
        held_back = outage_log.admit()
        if held_back is not None:
            log.warning(
                "nats error while connecting: %s%s",
                describe(err),
                logs.since_last_line(held_back),
                extra={**context, "held_back": held_back},
            )

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
        except ERRORS as err:
            where = ",".join(address(url) for url in settings.nats_url)
            log.warning("nats not reachable at %s: %s; retrying", where, describe(err))
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_RETRY_MAX_S)
            continue
        connected.append(nc)
        log.info(
            "nats connected",
            extra={**context, "server": address(nc.connected_url)},
        )
        return nc


async def drain(nc: Client, *, timeout_s: float) -> None:
    """Drains `nc` (its subscriptions, then what it has still to send: acks, publishes) and
    closes it, within `timeout_s`. A drain that does not finish (NATS away, or not answering)
    is given up, logged, and the connection closed without it in at most CLOSE_TIMEOUT_S
    more: what was not sent is lost, and JetStream delivers again the messages whose acks
    those were. Whether it finished is not returned (a stop goes on either way); a connection
    closed already is left as it is.

    nats-py bounds its own drain by its drain timeout and then a flush (40 s by default), and
    takes a first cancel only as the end of the first: the stop of a service would not fit.
    """
    if nc.is_closed:
        return
    waited_s = max(timeout_s, 0.0)

    def given_up() -> None:
        log.warning("nats drain not finished within %.1f s; closing without it", waited_s)

    draining = asyncio.create_task(nc.drain(), name="nats-drain")
    ended = await _ended_within(draining, waited_s, given_up=given_up)
    if ended and (error := draining.exception()) is not None:  # reconnecting, say
        log.warning("nats drain failed: %s; closing without it", describe(error))
    if not nc.is_closed:  # also a drain that returned at once, one being under way already
        await close(nc)


async def close(nc: Client) -> None:
    """Closes `nc` without draining it, in at most CLOSE_TIMEOUT_S: closing waits for a
    reconnect in progress to end, and writes what is buffered, which NATS not reading never
    takes. A close not done by then, or failing, is given up and logged (`nats connection not
    closed: <error>`); the caller goes on either way. One given up part-way may leave the
    socket open: nats-py marks the client closed first, so it does not reconnect.

    nats-py takes a cancel that comes while it waits for the reconnect for the end of that wait,
    and goes on closing: it is cancelled again until it ends.
    """
    closing = asyncio.create_task(nc.close(), name="nats-close")
    if not await _ended_within(closing, CLOSE_TIMEOUT_S):
        error: BaseException | None = TimeoutError()
    else:
        error = None if closing.cancelled() else closing.exception()
    if error is not None:
        log.warning("nats connection not closed: %s", describe(error))


async def _ended_within(
    task: asyncio.Task[None], timeout_s: float, *, given_up: Callable[[], None] = lambda: None
) -> bool:
    """Waits at most `timeout_s` for `task`; whether it ended by then. One that did not is
    given up: `given_up()` is called, then the task is cancelled again until it ends (nats-py
    takes a first cancel for the end of a wait of its own, and goes on). Cancelled itself
    meanwhile, it ends the task the same way, then raises CancelledError."""
    try:
        await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        await cancel_and_wait(task)
        raise
    if task.done():
        return True
    given_up()
    await cancel_and_wait(task)
    return False


def stream_configs(settings: NatsSettings) -> list[js_api.StreamConfig]:
    """The pipeline's three streams: raw, enriched and dead letters, all on disk.

    Raw and enriched messages are kept STREAM_MAX_AGE_S, dead letters STREAM_DLQ_MAX_AGE_S
    (0: no age limit, kept until replayed or deleted).
    """

    def one(name: str, subject: str, description: str, max_age_s: float) -> js_api.StreamConfig:
        return js_api.StreamConfig(
            name=name,
            description=description,
            subjects=[subject],
            storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS,
            num_replicas=settings.stream_replicas,
            max_age=max_age_s,
            duplicate_window=settings.duplicate_window_s,
            discard=js_api.DiscardPolicy.OLD,
        )

    age = settings.stream_max_age_s
    return [
        one(
            subjects.RAW_STREAM,
            subjects.RAW_SUBJECTS,
            "accepted batches with ingest context",
            age,
        ),
        one(subjects.ENRICHED_STREAM, subjects.ENRICHED_SUBJECTS, "enriched batches", age),
        one(
            subjects.DLQ_STREAM,
            subjects.DLQ_SUBJECTS,
            "messages a stage gave up on",
            settings.dlq_max_age_s,
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    """Creates the streams, or updates them to the configuration (idempotent): a changed
    setting (a max age, say) is applied to the existing stream at the next start."""
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
            return StreamProblem(f"stream {name} not answering ({describe(err)})", missing=False)
    return None


class StreamRepair:
    """Ensures the streams again, in the background, when a readiness check finds one missing
    (deleted by hand, or lost with the server's store), so a service does not stay not ready
    until it is restarted. One run at a time, started at most once per STREAM_RETRY_S; a run
    tries again every STREAM_RETRY_S until JetStream takes the streams. The durable consumers
    of a deleted stream went with it: their fetch loops create them again once it is back.
    """

    def __init__(
        self,
        js: JetStreamContext,
        settings: NatsSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._js = js
        self._settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._started_at = float("-inf")
        self._closed = False

    def check(self, problem: StreamProblem) -> None:
        """Starts a run when `problem` says a stream is missing and none is running (never
        once closed: a readiness probe during a stop starts nothing)."""
        if not problem.missing or self._closed:
            return
        if self._task is not None and not self._task.done():
            return
        now = self._clock()
        if now - self._started_at < STREAM_RETRY_S:
            return
        self._started_at = now
        log.warning("%s; ensuring the streams again", problem.reason)
        self._task = asyncio.create_task(self._ensure(), name="ensure-streams")

    async def _ensure(self) -> None:
        # A try every STREAM_RETRY_S while JetStream is away: a line per outage interval.
        failures = logs.Throttle(OUTAGE_ERROR_LOG_INTERVAL_S, clock=self._clock)
        while True:
            try:
                await ensure_streams(self._js, self._settings)
            except Exception as err:  # whatever it is: log, retry, stay not ready
                held_back = failures.admit()
                if held_back is not None:
                    log.warning(
                        "cannot ensure streams yet: %s%s",
                        describe(err),
                        logs.since_last_line(held_back),
                        extra={"held_back": held_back},
                    )
                await asyncio.sleep(STREAM_RETRY_S)
                continue
            log.info("streams ensured")
            return

    async def close(self) -> None:
        """Stops a run in progress, and starts none any more (idempotent)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)


# JetStream's own headers (Nats-Msg-Id, Nats-Expected-*, Nats-Rollup, Nats-TTL, ...) are
# instructions for the publish that carried them: copied onto a dead letter, the DLQ stream
# would apply them to it, and refuse it for good (a wrong expected sequence, a rollup it
# does not allow).
NATS_HEADER_PREFIX = "nats-"
# A dead letter's reason is cut to this many characters, or to fewer, down to
# DLQ_REASON_MIN_CHARS, when the message would not fit in the server's max_payload.
DLQ_REASON_MAX_CHARS = 1000
DLQ_REASON_MIN_CHARS = 100
# What a header block takes besides its lines: "NATS/1.0\r\n" before, "\r\n" after.
_HEADER_FRAMING_BYTES = len(b"NATS/1.0\r\n\r\n")


def _header_bytes(headers: Mapping[str, str]) -> int:
    """The bytes of a header block as nats-py sends it ("key: value\r\n" each)."""
    lines = sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return _HEADER_FRAMING_BYTES + lines


def dead_letter_message(
    *,
    stage: str,
    reason: str,
    data: bytes,
    source_subject: str,
    headers: Mapping[str, str] | None = None,
    deliveries: int = 0,
    msg_id: str = "",
    source_seq: int = 0,
    max_payload: int = 0,
) -> tuple[bytes, dict[str, str]]:
    """The payload and headers of the dead letter of a message a stage gives up on.

    The original headers are kept except JetStream's own (`Nats-*`). With `max_payload`
    (0: no limit) the whole message, headers included as the server counts it, is made to
    fit: the reason is cut first; a payload that still does not fit is left out, with
    Telemetry-Dlq-Omitted-Bytes saying how large it was (the original stays in its source
    stream at `source_seq`), and last the original headers too.
    """
    kept = {
        k: v for k, v in (headers or {}).items() if not k.lower().startswith(NATS_HEADER_PREFIX)
    }
    ours = {
        subjects.DLQ_STAGE_HEADER: stage,
        subjects.DLQ_SUBJECT_HEADER: source_subject,
        subjects.DLQ_DELIVERIES_HEADER: str(deliveries),
    }
    if source_seq:
        ours[subjects.DLQ_SOURCE_SEQ_HEADER] = str(source_seq)
    if msg_id:
        ours[subjects.MSG_ID_HEADER] = f"dlq:{stage}:{msg_id}"
    reason = " ".join(reason.split())  # header values must be one line
    out: dict[str, str] = {}
    for payload, original, reason_chars in (
        (data, kept, DLQ_REASON_MAX_CHARS),
        (data, kept, DLQ_REASON_MIN_CHARS),
        (b"", kept, DLQ_REASON_MAX_CHARS),
        (b"", kept, DLQ_REASON_MIN_CHARS),
        (b"", {}, DLQ_REASON_MIN_CHARS),
    ):
        out = {**original, **ours, subjects.DLQ_REASON_HEADER: reason[:reason_chars]}
        if len(payload) < len(data):
            out[subjects.DLQ_OMITTED_BYTES_HEADER] = str(len(data))
        # js.publish adds Nats-Expected-Stream: it counts towards max_payload as well.
        sent = {**out, js_api.Header.EXPECTED_STREAM: subjects.DLQ_STREAM}
        if not max_payload or len(payload) + _header_bytes(sent) <= max_payload:
            return payload, out
    return b"", out  # the DLQ's own headers only: a max_payload below any sensible one


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
    source_seq: int = 0,
    max_payload: int = 0,
    timeout_s: float = 5.0,
) -> bool:
    """Publishes the original bytes of a message a stage gives up on to the DLQ stream,
    shaped by `dead_letter_message`; True when the stream already had it (the same
    `msg_id`: a redelivery dead-lettered again)."""
    payload, out = dead_letter_message(
        stage=stage,
        reason=reason,
        data=data,
        source_subject=source_subject,
        headers=headers,
        deliveries=deliveries,
        msg_id=msg_id,
        source_seq=source_seq,
        max_payload=max_payload,
    )
    ack = await js.publish(
        subjects.dlq_subject(stage),
        payload,
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
