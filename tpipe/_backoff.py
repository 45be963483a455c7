"""Capped exponential backoff with jitter (uniform in the upper half of each step), shared by
the gRPC client and the HTTP poster."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_INITIAL_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 5.0
DEFAULT_MULTIPLIER = 2.0
# The longest a server's Retry-After makes us wait before one retry: a larger value (a
# day, a misconfigured proxy) would look like a hang; the retry simply comes sooner.
MAX_RETRY_AFTER_S = 60.0


def parse_retry_after(text: str) -> float | None:
    """Seconds from a Retry-After value (delta-seconds), between 0 and MAX_RETRY_AFTER_S;
    None when it is not a finite number (an HTTP date, "inf", "nan")."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return min(max(0.0, value), MAX_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number `attempt` (1 for the first retry): a random share of a cap.

    The cap grows as initial * multiplier**(attempt-1) up to `max_s`; the delay is uniform in
    [cap/2, cap] so many clients retrying together spread out instead of stampeding.
    A server's Retry-After, when given, is a floor.
    """

    initial_s: float = DEFAULT_INITIAL_BACKOFF_S
    max_s: float = DEFAULT_MAX_BACKOFF_S
    multiplier: float = DEFAULT_MULTIPLIER
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def cap(self, attempt: int) -> float:
        """The largest delay before retry `attempt`."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        return min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))

    def delay(self, attempt: int, *, retry_after_s: float | None = None) -> float:
        """The delay before retry `attempt`, never below the server's Retry-After."""
        cap = self.cap(attempt)
        jittered = cap / 2 + self.rand() * cap / 2
        if retry_after_s is not None and retry_after_s > jittered:
            return retry_after_s
        return jittered
