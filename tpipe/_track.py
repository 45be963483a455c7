"""POST /v1/track as the Swift client does it: gzip, write key, retries honouring Retry-After.

`TrackPoster.post` sends one batch and returns its receipt; it retries 429/503, connection
failures and unclean replies with capped exponential backoff (never sooner than Retry-After)
and raises `tpipe.errors` types for what retrying cannot fix.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from tpipe._args import base_url
from tpipe._backoff import Backoff, parse_retry_after
from tpipe.errors import (
    ClientError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
    UsageError,
    describe,
)

TRACK_PATH = "/v1/track"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:3000"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 5
USER_AGENT = "tpipe"
LONG_WAIT_S = 5.0  # a wait for Retry-After this long is said, so that it is not taken for a hang
_RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event of a batch the gateway did not accept."""

    index: int
    event_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """The gateway's 202 answer for one batch, plus how many retries it took."""

    accepted: int
    rejected: tuple[Rejection, ...]
    duplicate: bool
    batch_id: str
    retries: int = 0


@dataclass(slots=True)
class Tally:
    """Receipts summed over many batches."""

    events: int = 0
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    retries: int = 0
    failed_batches: int = 0
    failed_events: int = 0
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)

    def add(self, receipt: Receipt, *, size: int, offset: int = 0) -> None:
        """Counts one batch of `size` events that started at `offset` of the input."""
        self.events += size
        self.batches += 1
        self.accepted += receipt.accepted
        self.duplicates += int(receipt.duplicate)
        self.retries += receipt.retries
        self.rejections.extend((offset + r.index, r) for r in receipt.rejected)

    def fail(self, *, size: int) -> None:
        """Counts one batch that could not be delivered."""
        self.events += size
        self.batches += 1
        self.failed_batches += 1
        self.failed_events += size

    def by_reason(self) -> dict[str, int]:
        """Rejected events per reason, most frequent first."""
        counts: dict[str, int] = {}
        for _, rejection in self.rejections:
            counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def check_gateway_url(url: str, *, allow_remote: bool) -> str:
    """The base URL without a trailing slash; refuses one ending with /v1/track (see
    `base_url`), and non-loopback hosts unless allowed."""
    base = base_url(url)
    host = urlsplit(base).hostname or ""
    if not allow_remote and not _loopback(host):
        raise UsageError(f"{host!r} is not a loopback host; pass --allow-remote to send there")
    return base


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds, at most MAX_RETRY_AFTER_S); None when
    absent or not a finite number."""
    return parse_retry_after(value) if value else None


def _receipt(data: Any, retries: int) -> Receipt:
    if not isinstance(data, dict) or not isinstance(data.get("accepted"), int):
        raise ServerError("the gateway answered 202 without a receipt")
    rejected = tuple(
        Rejection(
            index=int(item.get("index", -1)),
            event_id=str(item.get("event_id", "")),
            reason=str(item.get("reason", "")),
            detail=str(item.get("detail", "")),
        )
        for item in data.get("rejected") or []
        if isinstance(item, dict)
    )
    return Receipt(
        accepted=data["accepted"],
        rejected=rejected,
        duplicate=bool(data.get("duplicate", False)),
        batch_id=str(data.get("batch_id", "")),
        retries=retries,
    )


def _message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace").strip()
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return str(data)[:200]


def _status_error(status: int, message: str, url: str) -> ClientError:
    text = f"{url}: HTTP {status}: {message}"
    if status == 401:
        return Unauthenticated(text)
    if status == 403:
        return PermissionDenied(text)
    if status == 413:  # too many events, or too many bytes, in one request
        return InvalidArgument(f"{text} (send fewer events per request: --batch-size)")
    if status in (400, 415, 422):
        return InvalidArgument(text)
    if status == 429:
        return ResourceExhausted(text)
    if status in (502, 503, 504):
        return Unavailable(text)
    return ServerError(text)


def rfc3339_now() -> str:
    """Now in UTC as RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TrackPoster:
    """Sends batches to one gateway with one write key over a shared aiohttp session."""

    def __init__(
        self,
        base_url: str,
        *,
        write_key: str,
        max_retries: int = DEFAULT_MAX_RETRIES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[], None] | None = None,
        may_retry: Callable[[], bool] | None = None,
        on_long_wait: Callable[[str], None] | None = None,
    ) -> None:
        if not write_key:
            raise UsageError(
                "a write key is needed: --key or TPIPE_WRITE_KEY (make run's are in"
                " .local/dev/keys.json)"
            )
        self.url = base_url.rstrip("/") + TRACK_PATH
        self._key = write_key
        self._max_retries = max_retries
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._on_retry = on_retry
        self._may_retry = may_retry
        self._on_long_wait = on_long_wait
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TrackPoster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the HTTP session (idempotent)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def post(
        self, events: Sequence[Mapping[str, Any]], *, sent_at: Callable[[], str] | None = None
    ) -> Receipt:
        """Posts one batch (gzip); retries 429/503 and failed or garbled exchanges; returns the
        receipt.

        Without `sent_at` the body is the events alone, the same on every attempt and every
        run: the gateway knows a retry by its content. With it, each attempt's body carries
        `sent_at()` read just before it goes (the gateway measures the device clock's skew
        against it, so a stale one would read a retry's wait as skew), and one
        Idempotency-Key for all the attempts tells the gateway they are one batch.
        """
        headers = {
            "Authorization": f"Bearer {self._key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": USER_AGENT,
        }
        if sent_at is None:
            body = gzip.compress(orjson.dumps(list(events)), compresslevel=5)
        else:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        retries = 0
        while True:
            wait_floor: float | None = None
            if sent_at is not None:
                payload = {"sent_at": sent_at(), "events": events}
                body = gzip.compress(orjson.dumps(payload), compresslevel=5)
            try:
                async with self._client().post(self.url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status == 202:
                        try:
                            return _receipt(orjson.loads(raw), retries)
                        except orjson.JSONDecodeError:
                            raise ServerError(f"{self.url}: a 202 that is not JSON") from None
                    failure = _status_error(resp.status, _message(raw), self.url)
                    if resp.status not in _RETRY_STATUSES:
                        raise failure
                    wait_floor = retry_after_s(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as err:
                # Refused or dropped connections, replies cut short or not HTTP at all: the
                # batch may or may not be stored, and sending it again is harmless (the
                # gateway recognises a retry by its content or its Idempotency-Key).
                if isinstance(err, TimeoutError):
                    failure = Unavailable(f"{self.url}: timed out after {self._timeout_s:g} s")
                else:
                    failure = Unavailable(f"{self.url}: {describe(err)}")
            if retries >= self._max_retries or not self._retrying():
                raise failure
            delay = self._backoff.delay(retries + 1, retry_after_s=wait_floor)
            if self._on_long_wait is not None and wait_floor is not None and delay >= LONG_WAIT_S:
                self._on_long_wait(
                    f"{failure}; waiting {delay:g} s (Retry-After) before retry "
                    f"{retries + 1} of {self._max_retries}"
                )
            await self._sleep(delay)
            if not self._retrying():  # told to stop while waiting
                raise failure
            retries += 1
            if self._on_retry is not None:
                self._on_retry()

    def _retrying(self) -> bool:
        return self._may_retry is None or self._may_retry()
