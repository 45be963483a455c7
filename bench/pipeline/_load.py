"""The HTTP side of the pipeline bench: batches shaped like the Swift client's, sent to
`POST /v1/track` either as fast as the gateway answers or at a fixed rate.

Every event id is unique to the run (`<tag>-<round>-<n>`), so OpenSearch can be asked
whether each accepted event is there; one id per batch (the first) is its marker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import orjson

EVENT_NAMES = ("item_purchased", "screen_view", "tap", "add_to_cart", "search")
DEVICES = ("iOS 17.2", "iOS 17.1.2", "iPadOS 17.0.1", "iOS 16.7", "watchOS 10")
# Addresses the gateway takes from X-Forwarded-For (the bench trusts loopback), so the
# enricher's offline GeoIP gives the documents a few countries to filter on.
CLIENT_IPS = ("81.2.69.142", "8.8.8.8", "2a00:1450:4009:81f::200e", "194.0.0.1", "203.0.113.9")
WORDS = ("red", "blue", "green", "shoes", "hat", "coat", "sale", "cart", "promo", "search")


@dataclass(frozen=True, slots=True)
class Batch:
    """One request body and what identifies it."""

    body: bytes
    marker: str  # the first event's id
    size: int
    key: str  # Idempotency-Key
    client_ip: str


def _rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def make_batches(
    tag: str, label: str, events: int, batch: int, *, days_ago: int = 0
) -> list[Batch]:
    """`events` events in batches of `batch`, client time now minus `days_ago` days (so
    the daily index of that day)."""
    now = time.time() - days_ago * 86400
    stamp = _rfc3339(now)
    out: list[Batch] = []
    for start in range(0, events, batch):
        rows = []
        for n in range(start, min(events, start + batch)):
            rows.append(
                {
                    "event_id": f"{tag}-{label}-{n:08d}",
                    "session_id": f"sess-{label}-{n // 20}",
                    "user_id": f"user-{n % 1000}",
                    "event_name": EVENT_NAMES[n % len(EVENT_NAMES)],
                    "client_timestamp": stamp,
                    "app_version": f"2.{n % 4}.1",
                    "device_os": DEVICES[n % len(DEVICES)],
                    "metadata": {
                        "item_id": f"sku-{n % 5000}",
                        "price": "19.99",
                        "colour": WORDS[n % 3],
                        "item": WORDS[3 + n % 7],
                    },
                }
            )
        number = start // batch
        out.append(
            Batch(
                body=orjson.dumps(rows),
                marker=str(rows[0]["event_id"]),
                size=len(rows),
                key=f"{tag}-{label}-b{number}",
                client_ip=CLIENT_IPS[number % len(CLIENT_IPS)],
            )
        )
    return out


@dataclass
class LoadResult:
    """What the gateway answered: per-request latency, statuses, accepted events."""

    started: float = 0.0  # perf_counter of the first send
    finished: float = 0.0  # perf_counter of the last answer
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    # (perf_counter of the answer, events accepted) per 202, to cut off a warm-up
    answers: list[tuple[float, int]] = field(default_factory=list)

    def rate_after(self, warmup_s: float) -> float:
        """Accepted events/s over the answers later than `warmup_s` after the start."""
        cut = self.started + warmup_s
        if self.finished - cut <= 0:
            cut = self.started
        events = sum(n for at, n in self.answers if at >= cut)
        return events / (self.finished - cut) if self.finished > cut else 0.0


AcceptedHook = Callable[[Batch, float], None]


class Sender:
    """Posts batches to one gateway with a keep-alive connection pool."""

    def __init__(self, session: aiohttp.ClientSession, url: str, write_key: str) -> None:
        self._session = session
        self._url = f"{url}/v1/track"
        self._key = write_key

    async def post(self, batch: Batch, result: LoadResult, hook: AcceptedHook | None) -> None:
        """One request; records its latency and status, calls `hook` on a 202."""
        headers = {
            "Content-Type": "application/json",
            "X-Api-Key": self._key,
            "Idempotency-Key": batch.key,
            "X-Forwarded-For": batch.client_ip,
        }
        sent = time.perf_counter()
        try:
            async with self._session.post(self._url, data=batch.body, headers=headers) as resp:
                answer = await resp.read()
                status = resp.status
        except aiohttp.ClientError:
            status, answer = 0, b""
        done = time.perf_counter()
        result.finished = max(result.finished, done)
        result.latencies.append(done - sent)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 202:
            accepted = int(orjson.loads(answer)["accepted"])
            result.accepted += accepted
            result.answers.append((done, accepted))
            if hook is not None:
                hook(batch, done)

    async def flood(
        self, batches: list[Batch], connections: int, hook: AcceptedHook | None = None
    ) -> LoadResult:
        """Every batch, as fast as the gateway answers, `connections` requests in flight."""
        result = LoadResult(started=time.perf_counter())
        pending = iter(batches)

        async def worker() -> None:
            for batch in pending:
                await self.post(batch, result, hook)

        await asyncio.gather(*(worker() for _ in range(connections)))
        return result

    async def paced(
        self, batches: list[Batch], per_second: float, hook: AcceptedHook | None = None
    ) -> LoadResult:
        """One batch every 1/`per_second` s on a fixed schedule, however long answers take."""
        result = LoadResult(started=time.perf_counter())
        tasks: list[asyncio.Task[None]] = []
        for number, batch in enumerate(batches):
            due = result.started + number / per_second
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.post(batch, result, hook)))
        await asyncio.gather(*tasks)
        return result
