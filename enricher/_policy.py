"""The one place that decides what happens to a message that could not be enriched.

Permanent failures (the message can never succeed) go to the DLQ and are
terminated on the source; retryable ones (NATS trouble) are nak'ed with a delay
that grows with each delivery. A message delivered more often than allowed is
permanent, whatever went wrong before.
"""

from __future__ import annotations

from dataclasses import dataclass

from enricher.errors import PoisonMessageError

REASON_MAX_DELIVERIES = "max_deliveries"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Send the original message to the DLQ with `reason`, then terminate it."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Nak the message; the broker redelivers it after `delay_s` seconds."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Limits for redeliveries."""

    max_deliver: int
    """max_deliver: deliveries allowed before a message is given up on."""
    base_delay_s: float
    """base_delay_s: the nak delay after the first delivery; it doubles with each one."""
    max_delay_s: float
    """max_delay_s: the longest nak delay."""


def before_processing(*, deliveries: int, policy: RetryPolicy) -> DeadLetter | None:
    """A message delivered more than `max_deliver` times is given up on unprocessed."""
    if deliveries > policy.max_deliver:
        return DeadLetter(
            REASON_MAX_DELIVERIES,
            f"delivered {deliveries} times, more than the limit of {policy.max_deliver}",
        )
    return None


def on_failure(err: Exception, *, deliveries: int, policy: RetryPolicy) -> DeadLetter | Retry:
    """Permanent or retryable: poison input is permanent, everything else is retried.

    Unknown errors are retried too: a bug or an outage must not throw data away;
    if it persists, the delivery limit sends the message to the DLQ.
    """
    if isinstance(err, PoisonMessageError):
        return DeadLetter(err.reason, err.detail)
    return Retry(nak_delay_s(deliveries=deliveries, policy=policy))


def nak_delay_s(*, deliveries: int, policy: RetryPolicy) -> float:
    """base * 2^(deliveries - 1), at most `max_delay_s`."""
    exponent = min(max(deliveries, 1) - 1, 30)
    return float(min(policy.base_delay_s * (2**exponent), policy.max_delay_s))
