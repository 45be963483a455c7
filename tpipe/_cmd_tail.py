"""`tpipe tail`: enriched events live from JetStream, filtered on the client side.

It reads TELEMETRY_ENRICHED through an ephemeral ordered consumer that starts after the
stream's last message when tail starts: nothing durable is created on the server, and the
pipeline's own consumers are not disturbed. Once connected it waits out a NATS outage of
any length, saying so on stderr. It stops on Ctrl-C, SIGTERM, or after --count events.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from telemetry.v1 import event_pb2

from pipeline import subjects
from tpipe import _render
from tpipe._args import (
    Subparsers,
    add_command,
    add_format_option,
    env_default,
    positive_int,
    url_list,
)
from tpipe._timeparse import rfc3339
from tpipe.errors import EXIT_OK, Unavailable, UsageError, describe

NATS_URL_ENV = "NATS_URL"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
CONNECT_TIMEOUT_S = 2.0
# Tries of the first connect, POLL_S apart: reports an unreachable broker within a few
# seconds. Once connected, tail reconnects for as long as it runs (nats-py's -1: no limit).
CONNECT_ATTEMPTS = 10
RECONNECT_FOREVER = -1
POLL_S = 0.5

EXAMPLES = """
  tpipe tail
  tpipe tail --user user-123 --event item_purchased
  tpipe tail --app ios-shop --format jsonl | jq .event.event_name
  tpipe tail --count 10 --nats nats://10.0.0.5:4222
"""


def register(sub: Subparsers, name: str) -> None:
    """Adds `tail`."""
    parser = add_command(
        sub,
        name,
        summary="follow enriched events live from NATS",
        description="Prints enriched events as the enricher publishes them (new ones only), "
        "filtered on user, event name and app. Stops on Ctrl-C, SIGTERM or after --count.",
        examples=EXAMPLES,
        run=run,
    )
    group = parser.add_argument_group("filter (an option given twice matches either value)")
    group.add_argument("--user", action="append", default=[], help="match user_id")
    group.add_argument("--event", action="append", default=[], help="match event_name")
    group.add_argument("--app", action="append", default=[], help="match app id")
    out = parser.add_argument_group("output")
    add_format_option(
        out, {"table": "columns to read", "jsonl": "one EnrichedEvent a line, as JSON"}
    )
    out.add_argument("--count", type=positive_int, help="stop after this many events")
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--nats",
        default=env_default(NATS_URL_ENV, DEFAULT_NATS_URL),
        help=f"NATS URL, or several comma-separated (env {NATS_URL_ENV}; default"
        f" {DEFAULT_NATS_URL})",
    )


class EventMatch:
    """The client-side filter: every non-empty set must contain the event's value."""

    def __init__(
        self, *, users: Sequence[str] = (), events: Sequence[str] = (), apps: Sequence[str] = ()
    ) -> None:
        self._users = frozenset(users)
        self._events = frozenset(events)
        self._apps = frozenset(apps)

    def __call__(self, item: event_pb2.EnrichedEvent) -> bool:
        return (
            (not self._users or item.event.user_id in self._users)
            and (not self._events or item.event.event_name in self._events)
            and (not self._apps or item.app_id in self._apps)
        )


def line(item: event_pb2.EnrichedEvent) -> str:
    """One event on one line with fixed-width columns: time, app, event, user, event id."""
    stamp = rfc3339(item.corrected_timestamp) if item.HasField("corrected_timestamp") else "-"
    base = item.event
    return (
        f"{stamp:<24}  {item.app_id[:16]:<16}  {base.event_name[:24]:<24}  "
        f"{base.user_id[:24]:<24}  {base.event_id}"
    )


def _say(text: str) -> None:
    print(f"tpipe tail: {text}", file=sys.stderr, flush=True)


class Outage:
    """nats-py's disconnect and reconnect callbacks: tail says once when it loses NATS and
    once when NATS is back, rather than going quiet (or quitting) while it waits."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.lost = False
        self.closing = False  # tail's own close calls the disconnect callback too

    async def disconnected(self) -> None:
        if self.closing or self.lost:
            return
        self.lost = True
        _say(f"lost NATS: waiting for NATS at {self._url} (Ctrl-C to stop)")

    async def reconnected(self) -> None:
        if not self.lost:
            return
        self.lost = False
        _say(f"NATS is back at {self._url}: following again")


async def _connect(url: str, outage: Outage) -> Client:
    """A connection whose first connect gives up after CONNECT_ATTEMPTS tries (an outage
    to report at once), and which then reconnects without limit: a follower outlives a
    broker restart of any length."""

    async def quiet(_: Exception) -> None:
        return None

    servers = url_list(url)
    try:
        nc = await nats.connect(
            servers=servers,
            name="tpipe-tail",
            connect_timeout=CONNECT_TIMEOUT_S,
            max_reconnect_attempts=CONNECT_ATTEMPTS,
            reconnect_time_wait=POLL_S,
            error_cb=quiet,
            disconnected_cb=outage.disconnected,
            reconnected_cb=outage.reconnected,
        )
    except (OSError, nats.errors.Error) as err:
        raise Unavailable(f"NATS is not reachable at {url}: {describe(err)}") from None
    # nats-py reads the limit at each reconnect attempt; the first connect's is spent.
    nc.options["max_reconnect_attempts"] = RECONNECT_FOREVER
    return nc


async def stream_end(js: JetStreamContext, url: str) -> int:
    """The last sequence of TELEMETRY_ENRICHED now: tail shows the messages after it."""
    try:
        info = await js.stream_info(subjects.ENRICHED_STREAM)
    except nats.js.errors.NotFoundError:
        raise _no_stream(url) from None
    except (TimeoutError, nats.errors.Error) as err:
        raise Unavailable(f"reading {subjects.ENRICHED_STREAM} at {url}: {describe(err)}") from None
    return int(info.state.last_seq)


def _no_stream(url: str) -> Unavailable:
    return Unavailable(f"stream {subjects.ENRICHED_STREAM} not found at {url}: is the pipeline up?")


def start_config(after_seq: int) -> js_api.ConsumerConfig:
    """The ordered consumer's start: the message after `after_seq`, not NEW, which the
    server would resolve again, later, for a consumer created anew."""
    return js_api.ConsumerConfig(
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1
    )


def resume_after(sub: JetStreamContext.PushSubscription, after_seq: int) -> None:
    """Makes nats-py re-create the ordered consumer (after a reconnect, a gap, missed
    heartbeats) after `after_seq` even before anything was delivered: it resumes after the
    last stream sequence delivered, which is 0 until one is, and so would start over from
    the stream's first message. `shown_after` still drops any such message should this
    private state change in a later nats-py."""
    jsi = getattr(sub._sub, "_jsi", None)
    seen = getattr(jsi, "_sseq", None)
    if isinstance(seen, int) and seen < after_seq:
        jsi._sseq = after_seq  # type: ignore[union-attr]


def shown_after(msg: Msg, after_seq: int) -> bool:
    """False for a message stored before tail started (stream sequence <= `after_seq`)."""
    try:
        return msg.metadata.sequence.stream > after_seq
    except nats.errors.NotJSMessageError:
        return True


async def run(args: argparse.Namespace) -> int:
    """Subscribes, prints matching events until stopped; 0 on a clean stop."""
    for option, values in (("--user", args.user), ("--event", args.event), ("--app", args.app)):
        if not all(values):  # as query's: an unset variable names no value
            raise UsageError(f"{option} is empty: leave it out to match any value")
    match = EventMatch(users=args.user, events=args.event, apps=args.app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    following = False

    def on_signal() -> None:
        stop.set()
        if not following and main is not None:  # connecting may hang: give it up at once
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    outage = Outage(args.nats)
    nc: Client | None = None
    try:
        nc = await _connect(args.nats, outage)
        js = nc.jetstream()
        after_seq = await stream_end(js, args.nats)
        try:
            sub = await js.subscribe(
                subjects.ENRICHED_SUBJECTS,
                stream=subjects.ENRICHED_STREAM,
                ordered_consumer=True,
                config=start_config(after_seq),
            )
        except nats.js.errors.NotFoundError:  # deleted since
            raise _no_stream(args.nats) from None
        resume_after(sub, after_seq)
        _say(f"following {subjects.ENRICHED_SUBJECTS} on {args.nats} (Ctrl-C to stop)")
        following = True
        shown = 0
        while not stop.is_set() and (args.count is None or shown < args.count):
            try:
                msg = await sub.next_msg(timeout=POLL_S)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as err:
                raise Unavailable(f"lost NATS at {args.nats}: {describe(err)}") from None
            if not shown_after(msg, after_seq):
                continue
            try:
                batch = event_pb2.EnrichedBatch.FromString(msg.data)
            except DecodeError:
                continue
            for item in batch.events:
                if not match(item):
                    continue
                text = _render.event_json(item).decode() if args.format == "jsonl" else line(item)
                sys.stdout.write(text + "\n")
                shown += 1
                if args.count is not None and shown >= args.count:
                    break
            sys.stdout.flush()
        await sub.unsubscribe()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if nc is not None:
            outage.closing = True
            await nc.close()
    return EXIT_OK
