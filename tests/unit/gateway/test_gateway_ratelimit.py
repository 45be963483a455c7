"""Per-key request rate: a token bucket per principal, and 429 on the routes past it."""

from __future__ import annotations

import pytest

from gateway import Gateway
from gateway._auth import Kind, Principal
from gateway._ratelimit import RateLimiter
from gateway.errors import Overloaded
from tests.unit.gateway.conftest import (
    READ_KEY,
    WRITE_KEY,
    FakeBroker,
    FakeQuery,
    asgi_client,
    unit_config,
)

APP = Principal(Kind.WRITE, "app-1")
OTHER = Principal(Kind.WRITE, "app-2")


def test_bucket_allows_the_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])

    for _ in range(3):
        limiter.take(APP)
    with pytest.raises(Overloaded):
        limiter.take(APP)
    limiter.take(OTHER)  # buckets are per key

    now[0] = 0.5  # one token back at 2/s
    limiter.take(APP)
    with pytest.raises(Overloaded):
        limiter.take(APP)


def test_the_refusal_says_how_long_until_the_next_token() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=0.05, burst=1, clock=lambda: now[0])  # a token each 20 s
    limiter.take(APP)

    waits = []
    for at in (0.0, 5.0, 19.5):
        now[0] = at
        with pytest.raises(Overloaded) as refused:
            limiter.take(APP)
        waits.append(refused.value.wait_s)

    assert waits == [20, 15, 1]  # whole seconds, rounded up, at least one
    fast = RateLimiter(rate=50.0, burst=1, clock=lambda: now[0])
    fast.take(APP)
    with pytest.raises(Overloaded) as refused:
        fast.take(APP)
    assert refused.value.wait_s == 1


def test_rate_zero_means_no_limit() -> None:
    limiter = RateLimiter(rate=0.0, burst=1)
    for _ in range(1000):
        limiter.take(APP)


async def test_routes_answer_429_with_retry_after_past_the_rate() -> None:
    gateway = Gateway(
        unit_config(GATEWAY_RATE_LIMIT_RPS="0.001", GATEWAY_RATE_LIMIT_BURST="2"),
        broker=FakeBroker(),
        query=FakeQuery(),
    )
    async with asgi_client(gateway) as http:
        statuses = [
            (
                await http.post("/v1/track", content=b"[]", headers={"X-Api-Key": WRITE_KEY})
            ).status_code
            for _ in range(3)
        ]
        limited = await http.post("/v1/track", content=b"[]", headers={"X-Api-Key": WRITE_KEY})
        connect = await http.post(
            "/telemetry.v1.IngestService/IngestEvents",
            content=b"{}",
            headers={"X-Api-Key": WRITE_KEY, "Content-Type": "application/json"},
        )
        reader = await http.get("/v1/events", headers={"X-Api-Key": READ_KEY})

    assert statuses == [400, 400, 429]
    # The next token is 1000 s away at 0.001/s: that, not the configured default.
    assert limited.headers["Retry-After"] == "1000"
    assert (connect.status_code, connect.headers["Retry-After"]) == (429, "1000")
    assert reader.status_code == 200  # another key, another bucket
