"""`tpipe loadgen`: simulated devices that batch like the Swift client, with rates as it runs.

Each device records events at a random (Poisson) pace into its own buffer and flushes it
like the Swift client: when it holds --batch-size events or --flush-interval seconds after
the last flush, gzip, with retries that honour Retry-After. It stops by itself after
--duration seconds or --events events (whichever first), flushing what is buffered; the
rate line goes on once a second until the summary, saying how many batches are left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tpipe._args import Subparsers, add_command, positive_float, positive_int
from tpipe._cmd_send import add_gateway_options, gateway_poster
from tpipe._track import TrackPoster, rfc3339_now
from tpipe._words import counted
from tpipe.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ClientError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

DEFAULT_DEVICES = 10
DEFAULT_RATE = 2.0  # events per second per device
DEFAULT_DURATION_S = 10.0
DEFAULT_BATCH_SIZE = 100  # the Swift client's flush size
DEFAULT_FLUSH_INTERVAL_S = 30.0  # the Swift client's flush interval
REPORT_EVERY_S = 1.0
EVENT_NAMES = ("app_open", "screen_view", "button_tap", "item_viewed", "item_purchased")
DEVICE_OS = ("iOS 17.2", "iOS 17.4", "iOS 18.0", "iPadOS 17.4")

EXAMPLES = """
  tpipe loadgen --key $TPIPE_WRITE_KEY
  tpipe loadgen --devices 200 --rate 5 --duration 60 --flush-interval 5
  tpipe loadgen --events 10000 --devices 50 --rate 20
"""


def register(sub: Subparsers, name: str) -> None:
    """Adds `loadgen`."""
    parser = add_command(
        sub,
        name,
        summary="simulated devices sending batches through the gateway",
        description="Simulates devices that batch like the Swift client (flush at --batch-size "
        "events or every --flush-interval s, gzip, retries honouring Retry-After), printing "
        "rates once a second on stderr and a summary on stdout. Stops after --duration "
        "seconds or --events events. Sends only to loopback unless --allow-remote.",
        examples=EXAMPLES,
        run=run,
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=DEFAULT_DEVICES,
        help=f"simulated devices (default {DEFAULT_DEVICES})",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=DEFAULT_RATE,
        help=f"events per second per device (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=DEFAULT_DURATION_S,
        help=f"seconds to run (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument("--events", type=positive_int, help="stop after this many events")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"a device flushes at this many events (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--flush-interval",
        type=positive_float,
        default=DEFAULT_FLUSH_INTERVAL_S,
        help=f"a device flushes this many seconds after its last flush "
        f"(default {DEFAULT_FLUSH_INTERVAL_S:g})",
    )
    add_gateway_options(parser)


@dataclass(slots=True)
class LoadStats:
    """What the devices did so far."""

    generated: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    failed: int = 0
    retries: int = 0
    batches: int = 0
    unavailable: int = 0


class _Budget:
    """The --events bound shared by all devices."""

    def __init__(self, limit: int | None) -> None:
        self._left = limit

    def take(self) -> bool:
        if self._left is None:
            return True
        if self._left <= 0:
            return False
        self._left -= 1
        return True


class _Fatal(Exception):
    """A failure no device can go on after (a bad key)."""

    def __init__(self, err: ClientError) -> None:
        super().__init__(str(err))
        self.err = err


class Device:
    """One simulated app install: a user, a session, a buffer, the Swift client's flush rule."""

    def __init__(
        self,
        index: int,
        *,
        run_id: str,
        poster: TrackPoster,
        stats: LoadStats,
        budget: _Budget,
        stop: asyncio.Event,
        rate: float,
        batch_size: int,
        flush_interval_s: float,
    ) -> None:
        self._poster = poster
        self._stats = stats
        self._budget = budget
        self._stop = stop
        self._rate = rate
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._rand = random.Random()
        self._base = {
            "session_id": f"{run_id}-s{index}-{uuid.uuid4().hex[:8]}",
            "user_id": f"{run_id}-u{index}",
            "app_version": "1.0.0",
            "device_os": self._rand.choice(DEVICE_OS),
        }
        self._metadata = {"loadgen_run": run_id, "device": str(index)}
        self._buffer: list[dict[str, Any]] = []
        self._posting = False

    @property
    def batches_left(self) -> int:
        """The batches this device still has to send once stopped: the one it is posting
        (retries included), and what it holds."""
        return int(self._posting) + int(bool(self._buffer))

    def _event(self) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            **self._base,
            "event_name": self._rand.choice(EVENT_NAMES),
            "client_timestamp": rfc3339_now(),
            "metadata": self._metadata,
        }

    async def _flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        stats = self._stats
        stats.batches += 1
        self._posting = True
        try:
            receipt = await self._poster.post(batch, sent_at=rfc3339_now)
        except (Unauthenticated, PermissionDenied) as err:
            stats.failed += len(batch)
            self._stop.set()  # every device would fail the same way
            raise _Fatal(err) from None
        except ClientError as err:
            stats.failed += len(batch)
            stats.unavailable += isinstance(err, Unavailable)
            return
        finally:
            self._posting = False
        stats.accepted += receipt.accepted
        stats.rejected += len(receipt.rejected)
        stats.duplicates += int(receipt.duplicate)

    async def run(self) -> None:
        """Records and flushes until stopped, then flushes what is left."""
        loop = asyncio.get_running_loop()
        next_event = loop.time() + self._rand.expovariate(self._rate)
        last_flush = loop.time()
        while not self._stop.is_set():
            now = loop.time()
            wait = min(next_event, last_flush + self._flush_interval_s) - now
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
                if self._stop.is_set():
                    break
            now = loop.time()
            if now >= next_event:
                if not self._budget.take():
                    self._stop.set()
                    break
                self._buffer.append(self._event())
                self._stats.generated += 1
                next_event += self._rand.expovariate(self._rate)
            due = now - last_flush >= self._flush_interval_s
            if len(self._buffer) >= self._batch_size or due:
                await self._flush()
                last_flush = loop.time()
        await self._flush()


def rate_line(stats: LoadStats, *, elapsed_s: float, since: LoadStats, window_s: float) -> str:
    """One report line: totals and the rates over the last window."""
    window = max(window_s, 1e-9)
    gen_rate = (stats.generated - since.generated) / window
    acc_rate = (stats.accepted - since.accepted) / window
    return (
        f"loadgen {elapsed_s:5.1f}s: generated {stats.generated} ({gen_rate:.0f}/s), "
        f"accepted {stats.accepted} ({acc_rate:.0f}/s), rejected {stats.rejected}, "
        f"failed {stats.failed}, retries {stats.retries}"
    )


def summary_line(stats: LoadStats, *, devices: int, elapsed_s: float) -> str:
    """The final line on stdout."""
    rate = stats.accepted / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"loadgen: {counted(devices, 'device')}, {elapsed_s:.1f} s: generated {stats.generated}, "
        f"accepted {stats.accepted} ({rate:.1f} events/s), rejected {stats.rejected}, "
        f"duplicate batches {stats.duplicates}, failed {stats.failed}, retries {stats.retries}, "
        f"batches {stats.batches}"
    )


def batches_left(devices: Sequence[Device]) -> int:
    """The batches the devices still have to send."""
    return sum(device.batches_left for device in devices)


async def _report(
    stats: LoadStats,
    started: float,
    stop: asyncio.Event,
    done: asyncio.Event,
    left: Callable[[], int],
) -> None:
    """A rate line on stderr once a second and when the devices stop, then once a second
    while they flush (retries may take a while with the gateway down), until `done`."""
    last = LoadStats(**{name: getattr(stats, name) for name in LoadStats.__slots__})
    last_at = started
    while not done.is_set():
        flushing = stop.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((done if flushing else stop).wait(), timeout=REPORT_EVERY_S)
        if done.is_set():
            return
        now = time.monotonic()
        line = rate_line(stats, elapsed_s=now - started, since=last, window_s=now - last_at)
        if flushing:
            line += f", flushing: {counted(left(), 'batch', 'batches')} left"
        print(line, file=sys.stderr, flush=True)
        last = LoadStats(**{name: getattr(stats, name) for name in LoadStats.__slots__})
        last_at = now


async def run(args: argparse.Namespace) -> int:
    """Runs the devices until the bound, then prints the summary."""
    stats = LoadStats()

    def count_retry() -> None:
        stats.retries += 1

    run_id = f"lg{uuid.uuid4().hex[:10]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupted = asyncio.Event()

    def interrupt() -> None:
        # The first Ctrl-C stops the devices, which give up waiting to retry and flush what
        # they hold once, without retries; the second gives up on those flushes at once.
        if interrupted.is_set() and main is not None:
            main.cancel()
        interrupted.set()
        stop.set()

    async def pause(delay_s: float) -> None:  # a wait before a retry, cut short by Ctrl-C
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupted.wait(), timeout=delay_s)

    poster = gateway_poster(  # a bad URL or no key: said before anything starts
        args,
        sleep=pause,
        on_retry=count_retry,
        may_retry=lambda: not interrupted.is_set(),
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    deadline = loop.call_later(args.duration, stop.set)
    budget = _Budget(args.events)
    fleet = counted(args.devices, "device")
    print(f"loadgen: run id {run_id}, {fleet} -> {poster.url}", file=sys.stderr)
    started = time.monotonic()
    fatal: _Fatal | None = None
    reporter: asyncio.Task[None] | None = None
    try:
        async with poster:
            devices = [
                Device(
                    i,
                    run_id=run_id,
                    poster=poster,
                    stats=stats,
                    budget=budget,
                    stop=stop,
                    rate=args.rate,
                    batch_size=args.batch_size,
                    flush_interval_s=args.flush_interval,
                )
                for i in range(args.devices)
            ]
            done = asyncio.Event()
            reporter = asyncio.create_task(
                _report(stats, started, stop, done, lambda: batches_left(devices))
            )
            results = await asyncio.gather(*(d.run() for d in devices), return_exceptions=True)
            stop.set()
            done.set()
            await reporter
    except asyncio.CancelledError:  # the second Ctrl-C: what got through so far
        elapsed = time.monotonic() - started
        print(summary_line(stats, devices=args.devices, elapsed_s=elapsed))
        raise
    finally:
        if reporter is not None:
            reporter.cancel()
        deadline.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    for result in results:
        if isinstance(result, _Fatal):
            fatal = result
        elif isinstance(result, BaseException):
            raise result
    elapsed = time.monotonic() - started
    print(summary_line(stats, devices=args.devices, elapsed_s=elapsed))
    if fatal is not None:
        raise fatal.err
    if stats.accepted == 0 and stats.unavailable:
        raise Unavailable(f"{poster.url}: no batch got through (gateway unavailable)")
    return EXIT_FAILURE if stats.rejected or stats.failed else EXIT_OK
