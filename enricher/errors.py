"""The enricher's exception root and its two kinds of message failure.

Whether a failure is permanent or retryable is decided once, in `enricher._policy`;
the types here only carry the facts it decides on.
"""

from __future__ import annotations


class EnricherError(Exception):
    """Root of every error the enricher raises."""


class SetupError(EnricherError):
    """The enricher cannot start: a resource named by a setting is unusable."""


class PoisonMessageError(EnricherError):
    """A message can never be enriched, however often it is delivered (to the DLQ).

    `reason` is a short stable label for metrics; the message text is for people.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(EnricherError):
    """NATS did not confirm a publish in time, or is unreachable (worth retrying)."""


class PublishRefusedError(EnricherError):
    """NATS refused an enriched publish for good (larger than the server now takes, or a
    JetStream 400): not retried in place; the message is given back to be enriched again
    (split to the server's limit of then) and dead-lettered past its deliveries."""


class DeadLetterRefusedError(EnricherError):
    """NATS refused a dead letter for good (too large, or a JetStream error that trying
    again will not change): the message cannot be stored anywhere."""
