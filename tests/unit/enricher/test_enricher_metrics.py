"""The enricher's metrics: a series for each dead-letter reason from the start, at 0, as
Prometheus' increase() takes nothing from a series that first appears at 1."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from telemetry.v1 import event_pb2

from enricher._enrich import REASON_TOO_LARGE
from enricher._metrics import Metrics
from enricher._policy import DeadLetter, RetryPolicy, before_processing, on_failure
from enricher._raw import app_id_of, decode_raw
from enricher.errors import PoisonMessageError
from pipeline import subjects

POLICY = RetryPolicy(max_deliver=3, base_delay_s=0.5, max_delay_s=3.0)
TWO_EVENTS = event_pb2.RawBatch(events=[event_pb2.Event(), event_pb2.Event()])


def _poison(read: Callable[[], object]) -> str:
    with pytest.raises(PoisonMessageError) as caught:
        read()
    return caught.value.reason


def test_every_reason_a_raw_message_is_dead_lettered_for_is_a_series_at_0() -> None:
    reasons = {
        _poison(lambda: decode_raw(b"\xff\xff not protobuf", {})),
        _poison(lambda: decode_raw(b"", {subjects.SCHEMA_HEADER: "telemetry.v1.Other"})),
        _poison(lambda: decode_raw(b"", {})),
        _poison(lambda: decode_raw(TWO_EVENTS.SerializeToString(), {}, max_events=1)),
        _poison(lambda: app_id_of(event_pb2.RawBatch(), "telemetry.raw.v1.bad app")),
        REASON_TOO_LARGE,  # an event no message holds (test_enricher_handler)
    }
    for given_up in (
        before_processing(deliveries=13, policy=POLICY),
        on_failure(RuntimeError("bug"), deliveries=3, policy=POLICY),
    ):
        assert isinstance(given_up, DeadLetter)
        reasons.add(given_up.reason)
    assert len(reasons) == 7

    sample = Metrics().registry.get_sample_value
    assert {reason: sample("enricher_dlq_total", {"reason": reason}) for reason in reasons} == (
        dict.fromkeys(reasons, 0.0)
    )
