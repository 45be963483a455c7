"""Requests per second per principal: a token bucket per app (shared by all its write keys,
so rotating keys does not double a rate) or per reader name; off when the rate is 0.

The buckets live in this process: each of GATEWAY_WORKERS has its own, so the total an app
may send is the workers times the rate (README, "Scaling out and production")."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from gateway._auth import Principal
from gateway.errors import Overloaded


class RateLimiter:
    """Allows `rate` requests/s per principal with bursts of up to `burst`."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._clock = clock
        # principal -> (tokens, time of the last refill); bounded by the configured keys.
        self._buckets: dict[Principal, tuple[float, float]] = {}

    def take(self, principal: Principal) -> None:
        """Takes one token for `principal`; raises Overloaded when its bucket is empty."""
        if self._rate <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.get(principal, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[principal] = (tokens, now)
            # Retry-After: whole seconds until the next token, at least one.
            wait_s = max(1, math.ceil((1.0 - tokens) / self._rate))
            raise Overloaded(f"{principal.name} is past its request rate", wait_s=wait_s)
        self._buckets[principal] = (tokens - 1.0, now)
