"""The one place that decides what happens to a message that could not be enriched.

Permanent failures (the message can never succeed) go to the DLQ and are
terminated on the source; retryable ones are nak'ed with a delay that grows with
each delivery. A failure other than NATS's on a message's last allowed delivery, or
past it, is permanent, whatever it was. A broker failure never is: NATS not taking a
publish says nothing about the message, so it spends no delivery and never sends a
message to the DLQ, however often the message was delivered (a stop gives back the
messages it holds, and each redelivery counts). Only a message delivered far past the
limit without ever being settled is given up before it is processed (`before_processing`).
"""

from __future__ import annotations

from dataclasses import dataclass

from enricher.errors import BrokerError, PoisonMessageError

REASON_MAX_DELIVERIES = "max_deliveries"
# A message delivered more than this many times its limit was never settled: one that ends
# the process as it is handled (killed for its memory, say) would come back for ever, and
# take the enricher down with it each time. Stops while NATS does not take publishes also
# spend deliveries, hence the wide margin.
UNSETTLED_FACTOR = 4


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
    """A dead letter for a message delivered more than UNSETTLED_FACTOR times its limit,
    given up without being processed; None for any other (it is processed as usual)."""
    ceiling = policy.max_deliver * UNSETTLED_FACTOR
    if deliveries <= ceiling:
        return None
    return DeadLetter(
        REASON_MAX_DELIVERIES,
        f"delivered {deliveries} times and never settled (more than {UNSETTLED_FACTOR} times "
        f"the limit of {policy.max_deliver}): given up unprocessed, as a message that ends "
        "the process as it is handled would otherwise come back for ever",
    )


def on_failure(err: Exception, *, deliveries: int, policy: RetryPolicy) -> DeadLetter | Retry:
    """Permanent or retryable: poison input is permanent, broker trouble is retried, and
    any other error is retried until the message's `max_deliver`-th delivery.

    Unknown errors are retried too: a bug or an outage must not throw data away; if it
    persists, the delivery limit sends the message to the DLQ with that error.
    """
    if isinstance(err, PoisonMessageError):
        return DeadLetter(err.reason, err.detail)
    if deliveries >= policy.max_deliver and not isinstance(err, BrokerError):
        return DeadLetter(
            REASON_MAX_DELIVERIES,
            f"delivered {deliveries} times, the limit is {policy.max_deliver}; "
            f"last error: {repr(err)[:500]}",
        )
    return Retry(nak_delay_s(deliveries=deliveries, policy=policy))


def nak_delay_s(*, deliveries: int, policy: RetryPolicy) -> float:
    """base * 2^(deliveries - 1), at most `max_delay_s`."""
    exponent = min(max(deliveries, 1) - 1, 30)
    return float(min(policy.base_delay_s * (2**exponent), policy.max_delay_s))
