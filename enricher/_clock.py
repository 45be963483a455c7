"""Clock-skew correction: when an event happened, by the server's clock.

All times are integer nanoseconds since the Unix epoch, so the arithmetic is exact.
"""

from __future__ import annotations

from typing import NamedTuple

from telemetry.v1 import event_pb2

NANOS_PER_S = 1_000_000_000
NANOS_PER_MS = 1_000_000

UNCORRECTED = event_pb2.CLOCK_STATUS_UNCORRECTED
CORRECTED = event_pb2.CLOCK_STATUS_CORRECTED
ABSURD = event_pb2.CLOCK_STATUS_ABSURD


class ClockFix(NamedTuple):
    """The outcome of examining one event's clock."""

    corrected_ns: int
    """corrected_ns is the best estimate of when the event happened, by the server's clock."""
    skew_ns: int
    """skew_ns is the device clock minus the server clock (sent_at - received_at); 0 unknown."""
    status: event_pb2.ClockStatus.ValueType
    """status says how `corrected_ns` was obtained."""


def measure_skew(*, sent_ns: int | None, received_ns: int) -> int | None:
    """The device clock minus the server clock, or None without a sent_at.

    Transit time counts as skew; for a batch sent over a mobile network that is
    milliseconds to seconds, far below the clock errors this is meant to undo.
    """
    if sent_ns is None:
        return None
    return sent_ns - received_ns


def correct_clock(
    *, client_ns: int, skew_ns: int | None, received_ns: int, max_skew_ns: int
) -> ClockFix:
    """Corrects a client timestamp by the measured skew of its batch.

    corrected = client_timestamp - skew. Without a skew the client time is used
    as it is (UNCORRECTED). An unset (epoch) client time, a skew beyond
    `max_skew_ns` or a result farther than `max_skew_ns` from `received_ns` is
    ABSURD, and the corrected time falls back to `received_ns`.
    """
    skew = 0 if skew_ns is None else skew_ns
    if client_ns == 0 or abs(skew) > max_skew_ns:
        return ClockFix(received_ns, skew, ABSURD)
    corrected = client_ns - skew
    if abs(corrected - received_ns) > max_skew_ns:
        return ClockFix(received_ns, skew, ABSURD)
    return ClockFix(corrected, skew, UNCORRECTED if skew_ns is None else CORRECTED)
