"""`tpipe send`: post events from a file through the gateway and sum up the receipts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tpipe._args import (
    Subparsers,
    add_command,
    env_default,
    non_negative_int,
    positive_float,
    positive_int,
)
from tpipe._events_file import read_events
from tpipe._progress import Progress
from tpipe._track import (
    DEFAULT_GATEWAY_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Tally,
    TrackPoster,
    check_gateway_url,
)
from tpipe._words import counted
from tpipe.errors import EXIT_FAILURE, EXIT_OK, ClientError, InvalidArgument, UsageError

GATEWAY_URL_ENV = "TPIPE_GATEWAY_URL"
WRITE_KEY_ENV = "TPIPE_WRITE_KEY"
DEFAULT_BATCH_SIZE = 100
MAX_LISTED_REJECTIONS = 10

EXAMPLES = """
  tpipe send events.json --key $TPIPE_WRITE_KEY
  tpipe send events.ndjson --batch-size 500 --gateway http://127.0.0.1:3000
  tpipe query --user user-123 --all --format jsonl | jq -c .event | tpipe send -
"""


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
    """--gateway, --key, --allow-remote, --retries: where and as whom to post."""
    group = parser.add_argument_group("gateway")
    group.add_argument(
        "--gateway",
        "--target-url",
        dest="gateway",
        default=env_default(GATEWAY_URL_ENV, DEFAULT_GATEWAY_URL),
        help=f"gateway base URL (env {GATEWAY_URL_ENV}; default {DEFAULT_GATEWAY_URL})",
    )
    group.add_argument(
        "--key",
        default=env_default(WRITE_KEY_ENV, ""),
        help=f"write key (env {WRITE_KEY_ENV})",
    )
    group.add_argument(
        "--retries",
        type=non_negative_int,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries per batch on 429/503/connection errors (default {DEFAULT_MAX_RETRIES})",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds one request may take, answer included (default {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--allow-remote", action="store_true", help="allow a gateway that is not on loopback"
    )


def gateway_poster(args: argparse.Namespace, **hooks: Any) -> TrackPoster:
    """The poster the options of `add_gateway_options` ask for (`hooks`: TrackPoster's
    sleep, on_retry, may_retry, on_long_wait)."""
    base = check_gateway_url(args.gateway, allow_remote=args.allow_remote)
    return TrackPoster(
        base,
        write_key=args.key,
        max_retries=args.retries,
        timeout_s=args.timeout,
        **hooks,
    )


def register(sub: Subparsers, name: str) -> None:
    """Adds `send`."""
    parser = add_command(
        sub,
        name,
        summary="post events from a JSON or NDJSON file through the gateway",
        description="Posts events (a JSON array, one JSON event per line, one event object "
        'or an object {"sent_at": ..., "events": [...]}) to POST /v1/track '
        "in gzip batches, retrying 429/503 after Retry-After, and sums up the receipts. "
        "NDJSON is read a line at a time (a pipe's batches go as its lines come). "
        "Exit code 1 when any event was rejected or any batch failed.",
        examples=EXAMPLES,
        run=run,
    )
    parser.add_argument("file", help="the events file, or - for standard input")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"events per request (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--progress", action="store_true", help="show the progress line even when not a terminal"
    )
    add_gateway_options(parser)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[tuple[IO[bytes], str]]:
    """The input as a binary stream, and its name for messages."""
    if path == "-":
        yield sys.stdin.buffer, "stdin"
        return
    try:
        stream = Path(path).open("rb")  # noqa: SIM115 (closed below, after the whole send)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    with stream:
        yield stream, path


def summary(tally: Tally, *, url: str) -> list[str]:
    """The receipts summed up, for people (stdout)."""
    lines = [
        f"sent {counted(tally.events, 'event')} in {counted(tally.batches, 'batch', 'batches')} "
        f"to {url}",
        f"accepted: {tally.accepted}",
        f"rejected: {len(tally.rejections)}",
    ]
    lines += [f"  {reason}: {count}" for reason, count in tally.by_reason().items()]
    for index, rejection in tally.rejections[:MAX_LISTED_REJECTIONS]:
        ident = f" ({rejection.event_id})" if rejection.event_id else ""
        lines.append(f"  event #{index}{ident}: {rejection.detail or rejection.reason}")
    if len(tally.rejections) > MAX_LISTED_REJECTIONS:
        lines.append(f"  ... and {len(tally.rejections) - MAX_LISTED_REJECTIONS} more")
    lines.append(f"duplicate batches: {tally.duplicates}")
    lines.append(f"retries: {tally.retries}")
    lines.append(
        f"failed batches: {tally.failed_batches} ({counted(tally.failed_events, 'event')})"
    )
    return lines


def _so_far(sent: int, total: int | None) -> str:
    """The events sent, of how many when that is known: "3 events", "3/10 events"."""
    return f"{sent}/{counted(total, 'event')}" if total is not None else counted(sent, "event")


def not_sent(count: int | None, *, first: int) -> str:
    """What a send stopped by an error left out (`count` None: a pipe not read to its end),
    and how to finish it."""
    what = counted(count, "event") if count is not None else "the rest of the input"
    return (
        f"tpipe send: not sent: {what}, from event #{first} on; sending the same input "
        "again with the same --batch-size finishes it (what the gateway has is stored once)"
    )


async def run(args: argparse.Namespace) -> int:
    """Sends the file batch by batch; prints the summary; 1 when anything was not accepted."""
    progress = Progress(enabled=True if args.progress else None)

    def say_wait(text: str) -> None:
        progress.done()
        print(f"tpipe send: {text}", file=sys.stderr, flush=True)

    # Made before the file is read: a missing key is said at once, not after a long read.
    poster = gateway_poster(args, on_long_wait=say_wait)
    with _opened(args.file) as (stream, source):
        events = read_events(stream, source=source)
        tally = Tally()
        failures: list[str] = []
        try:
            async with poster:
                for batch in events.batches(args.batch_size):
                    try:
                        receipt = await poster.post(batch)
                    except InvalidArgument as err:
                        # This batch was refused as a whole (too large, ...); the others may pass.
                        tally.fail(size=len(batch))
                        failures.append(str(err))
                    else:
                        tally.add(receipt, size=len(batch), offset=tally.events)
                    progress.update(
                        f"sending: {_so_far(tally.events, events.total)}, "
                        f"accepted {tally.accepted}, rejected {len(tally.rejections)}"
                    )
        except (ClientError, UsageError, asyncio.CancelledError, KeyboardInterrupt):
            # Stopped by an error, a broken line further down a pipe, or Ctrl-C (asyncio.run
            # cancels this task on SIGINT).
            progress.done()
            if tally.batches:  # part of the input went: say what, and what did not
                print("\n".join(summary(tally, url=poster.url)))
                left = events.total - tally.events if events.total is not None else None
                print(not_sent(left, first=tally.events), file=sys.stderr)
            raise
    progress.done()
    print("\n".join(summary(tally, url=poster.url)))
    for failure in failures[:MAX_LISTED_REJECTIONS]:
        print(f"tpipe send: batch failed: {failure}", file=sys.stderr)
    return EXIT_FAILURE if tally.failed_batches or tally.rejections else EXIT_OK
