"""The JetStream adapter: connects, ensures the streams, publishes raw batches and waits for acks.

The only gateway module that touches `nats`. Every broker failure becomes `Unavailable`: a
publish JetStream may have stored all the same (no ack in time) becomes `Unconfirmed`.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from gateway.errors import RETRY_TELLS, Unavailable, Unconfirmed
from pipeline import logs, natsconn, subjects, tracing
from pipeline.settings import NatsSettings
from pipeline.tasks import cancel_and_wait, until_done

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
STREAM_RETRY_S = 1.0
STREAMS_WAITING = "streams not ensured yet"  # readiness's reason, until they are
# Batches JetStream does not store while NATS is connected (its storage full), or does not
# confirm in time, are answered 503 one by one: the reason is logged at most this often, for
# each of the two kinds.
PUBLISH_FAILURE_LOG_INTERVAL_S = 30.0


# Where nats-py reads JetStream's answer to a publish (JetStreamContext.publish): json's
# loads of its bytes, then APIError.from_error for an error, else PubAck.from_response.
ANSWER_READERS = frozenset(
    {("json", "loads"), ("nats.js.errors", "from_error"), ("nats.js.api", "from_response")}
)


def may_be_stored(err: BaseException) -> bool:
    """Whether a publish that raised `err` may have been stored all the same.

    nats-py raises before it writes anything for a connection closed or draining, a message
    past max_payload, a bad subject or header, and a reconnect whose buffer is full or
    disabled (OutboundBufferLimitError); JetStream's answer refuses it (an APIError: storage
    full, wrong stream) or nobody answers for the subject (NoStreamResponseError, no
    responders): none of those is stored. Once written (or buffered while reconnecting, to be
    written on reconnect), the publish waits for JetStream's ack and raises TimeoutError when
    none comes in time: JetStream slow, paused, or its ack lost with the connection (nats-py
    fails no pending request when the connection drops; it times out). An OSError is the
    socket failing as the publish was written. Those two may be stored, as may a batch whose
    answer nats-py could not read as a PubAck (`garbled_answer`), which something answered
    after it was written. Any other ValueError or TypeError is a bug, not the broker's.
    """
    return isinstance(err, (TimeoutError, OSError)) or garbled_answer(err)


def garbled_answer(err: BaseException) -> bool:
    """Whether `err` (a ValueError or TypeError) was raised while nats-py read the answer to
    a publish: not JSON, JSON that is not an object, or an object without a stream and a
    sequence (or with an error it cannot read). Told by the functions its traceback went
    through (ANSWER_READERS), or by its being raised in JetStreamContext.publish itself once
    that held the decoded answer (`resp`); the same errors raised before anything was
    written (an argument of the wrong type, a header that cannot be encoded) are not."""
    if not isinstance(err, (ValueError, TypeError)):
        return False
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        where = (frame.f_globals.get("__name__"), frame.f_code.co_name)
        if where in ANSWER_READERS:
            return True
        if tb.tb_next is None and where == ("nats.js.client", "publish"):
            return "resp" in frame.f_locals
        tb = tb.tb_next
    return False


class JetStreamPublisher:
    """Publishes to TELEMETRY_RAW; `start()` returns at once and connects in the background."""

    def __init__(self, settings: NatsSettings, *, publish_timeout_s: float) -> None:
        self._settings = settings
        self._timeout = publish_timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams_ready = False
        self._streams_error = ""  # the last try's failure, for readiness, until they are ensured
        self._task: asyncio.Task[None] | None = None
        self._failure_log = logs.Throttle(PUBLISH_FAILURE_LOG_INTERVAL_S)
        self._unconfirmed_log = logs.Throttle(PUBLISH_FAILURE_LOG_INTERVAL_S)

    async def start(self) -> None:
        """Starts connecting (and creating the streams) in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        nc = await natsconn.connect(self._settings, name="gateway")
        self._nc, self._js = nc, nc.jetstream(timeout=self._timeout)
        await self._ensure_streams(self._js)

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        """Tried again until JetStream answers, as the enricher's and the indexer's first step:
        `streams not ensured yet: <error>` logged and in readiness (a bug, one that is no NATS
        error, logged with its stack and tried again less and less often)."""
        await until_done(
            lambda: natsconn.ensure_streams(js, self._settings),
            what=STREAMS_WAITING,
            logger=log,
            waiting=self._set_streams_error,
            retry_s=STREAM_RETRY_S,
            errors=natsconn.ERRORS,
            retry_unexpected=True,
        )
        self._streams_ready, self._streams_error = True, ""
        log.info("streams ensured")

    def _set_streams_error(self, failure: str) -> None:
        self._streams_error = failure

    async def stop(self, *, timeout_s: float) -> None:
        """Drains the connection (pending publishes are flushed) and closes it, within
        `timeout_s`: a connection not drained by then is closed without it."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        nc, self._nc, self._js = self._nc, None, None
        self._streams_ready, self._streams_error = False, ""
        if nc is not None:
            await natsconn.drain(nc, timeout_s=timeout_s)

    @property
    def max_payload(self) -> int:
        """The broker's max_payload (1 MiB until connected)."""
        nc = self._nc
        return (
            int(nc.max_payload) if nc is not None and nc.max_payload else DEFAULT_MAX_PAYLOAD_BYTES
        )

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        """Publishes a raw batch and waits for the PubAck; True when it was a duplicate.

        Raises Unconfirmed when the batch may be stored without an ack (see `may_be_stored`),
        Unavailable when it is not stored."""
        nc, js = self._nc, self._js
        if nc is None or js is None or not nc.is_connected or not self._streams_ready:
            raise Unavailable("the broker is not connected")
        headers = {subjects.MSG_ID_HEADER: msg_id, subjects.SCHEMA_HEADER: subjects.RAW_SCHEMA}
        tracing.inject(headers)  # the current publish span, when traces are recorded
        try:
            ack = await js.publish(
                subject, payload, timeout=self._timeout, stream=subjects.RAW_STREAM, headers=headers
            )
        except (nats.errors.Error, TimeoutError, OSError, ValueError, TypeError) as err:
            if isinstance(err, (ValueError, TypeError)) and not garbled_answer(err):
                raise  # a bug of ours, not the broker's answer: a 500 that shows it
            if may_be_stored(err):
                self._log_failure(
                    err,
                    self._unconfirmed_log,
                    "batch not confirmed, answered 503 (it may be stored)",
                )
                raise Unconfirmed(self._unconfirmed(err)) from err
            self._log_failure(err, self._failure_log, "batch not stored, answered 503")
            # The client is told the kind of failure only, not what NATS said of itself.
            raise Unavailable(f"the broker did not store the batch: {type(err).__name__}") from err
        return bool(ack.duplicate)

    def _unconfirmed(self, err: BaseException) -> str:
        """What the client is told of a publish that may be stored: what was not confirmed,
        and how a retry tells."""
        if isinstance(err, TimeoutError):
            return f"the broker did not confirm the batch within {self._timeout:g} s; {RETRY_TELLS}"
        if garbled_answer(err):
            return f"the broker's answer to the batch was not a confirmation; {RETRY_TELLS}"
        return f"the connection to the broker was lost before it confirmed the batch; {RETRY_TELLS}"

    @staticmethod
    def _log_failure(err: BaseException, throttle: logs.Throttle, what: str) -> None:
        """Says what NATS answered to a publish that failed (one line per interval of
        `throttle`, one per kind): the 503s that follow say nothing of it, and readiness stays
        ok while the stream exists."""
        held_back = throttle.admit()
        if held_back is not None:
            log.warning(
                "%s: %s%s",
                what,
                natsconn.describe(err),
                logs.since_last_line(held_back),
                extra={"held_back": held_back},
            )

    async def ready(self) -> tuple[bool, str]:
        """Ready when connected and the raw stream exists; while the streams are not ensured
        yet, the reason ends with the last try's error."""
        nc, js = self._nc, self._js
        if nc is None or js is None or not nc.is_connected:
            return False, "nats not connected"
        if not self._streams_ready:
            return False, self._streams_error or STREAMS_WAITING
        problem = await natsconn.stream_problem(js, (subjects.RAW_STREAM,))
        if problem is None:
            return True, "ok"
        if problem.missing and (self._task is None or self._task.done()):
            # The broker lost its store (or someone deleted the stream): create it again.
            self._streams_ready = False
            log.warning("%s; ensuring the streams again", problem.reason)
            self._task = asyncio.create_task(self._ensure_streams(js))
        return False, problem.reason
