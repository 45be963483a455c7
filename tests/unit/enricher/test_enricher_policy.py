"""The permanent-or-retryable decision."""

from __future__ import annotations

from enricher._policy import (
    REASON_MAX_DELIVERIES,
    DeadLetter,
    Retry,
    RetryPolicy,
    before_processing,
    nak_delay_s,
    on_failure,
)
from enricher.errors import BrokerError, PoisonMessageError

POLICY = RetryPolicy(max_deliver=3, base_delay_s=0.5, max_delay_s=3.0)


def test_poison_is_permanent() -> None:
    action = on_failure(PoisonMessageError("undecodable", "x"), deliveries=1, policy=POLICY)
    assert action == DeadLetter("undecodable", "x")


def test_broker_trouble_and_unknown_errors_are_retried() -> None:
    assert on_failure(BrokerError("timeout"), deliveries=1, policy=POLICY) == Retry(0.5)
    assert on_failure(RuntimeError("bug"), deliveries=2, policy=POLICY) == Retry(1.0)


def test_delay_grows_and_is_capped() -> None:
    delays = [nak_delay_s(deliveries=n, policy=POLICY) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert nak_delay_s(deliveries=10_000, policy=POLICY) == 3.0


def test_other_failures_are_permanent_from_the_last_allowed_delivery() -> None:
    assert on_failure(RuntimeError("bug"), deliveries=2, policy=POLICY) == Retry(1.0)
    for deliveries in (3, 9):
        action = on_failure(RuntimeError("bug"), deliveries=deliveries, policy=POLICY)
        assert isinstance(action, DeadLetter)
        assert action.reason == REASON_MAX_DELIVERIES
        assert action.detail.endswith("last error: RuntimeError('bug')")


def test_broker_failures_are_never_permanent_however_often_delivered() -> None:
    # Stops give back held messages, each redelivery counting: that is not the message's doing.
    assert on_failure(BrokerError("timeout"), deliveries=3, policy=POLICY) == Retry(2.0)
    assert on_failure(BrokerError("timeout"), deliveries=40, policy=POLICY) == Retry(3.0)


def test_only_a_message_delivered_far_past_the_limit_is_given_up_unprocessed() -> None:
    # Four times the limit (3): stops during an outage spend deliveries, a crash loop more.
    assert before_processing(deliveries=12, policy=POLICY) is None
    given_up = before_processing(deliveries=13, policy=POLICY)
    assert isinstance(given_up, DeadLetter)
    assert given_up.reason == REASON_MAX_DELIVERIES
    assert given_up.detail.startswith("delivered 13 times and never settled")
