"""Clock-skew correction: when an event happened, by the server's clock.

All times are integer nanoseconds since the Unix epoch, so the arithmetic is exact.
"""

from __future__ import annotations

from typing import NamedTuple

from telemetry.v1 import event_pb2

NANOS_PER_S = 1_000_000_000
NANOS_PER_MS = 1_000_000

FUTURE_SLACK_NS = 60 * NANOS_PER_S
"""FUTURE_SLACK_NS: how far after its receipt an event's corrected time may lie.

An event cannot happen after the server received it: a corrected time later than
that means the device clock moved between stamping the event and sending the
batch (or, without a sent_at, that it runs ahead). The slack covers clocks a
little ahead and sent_at texts of coarser precision than the events'.
"""

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


class BatchClock:
    """The clock correction of one batch: its skew is measured once, applied to each event.

    corrected = client_timestamp - skew. Without a skew the client time is used
    as it is (UNCORRECTED). An unset (epoch) client time, a skew beyond
    `max_skew_ns`, a result more than `max_skew_ns` before `received_ns` or
    more than `FUTURE_SLACK_NS` after it (an event from the future) is ABSURD,
    and the corrected time falls back to `received_ns`.
    """

    __slots__ = ("_highest", "_lowest", "received_ns", "skew_ns", "status")

    def __init__(self, *, skew_ns: int | None, received_ns: int, max_skew_ns: int) -> None:
        self.received_ns = received_ns
        self.skew_ns = 0 if skew_ns is None else skew_ns
        """skew_ns is the skew of every event's fix (0 unknown)."""
        self.status: event_pb2.ClockStatus.ValueType = UNCORRECTED if skew_ns is None else CORRECTED
        """status is the status of every event's fix that is not ABSURD."""
        # The client times whose correction lies from max_skew_ns before the
        # receipt to FUTURE_SLACK_NS after it.
        self._lowest = received_ns + self.skew_ns - max_skew_ns
        self._highest = received_ns + self.skew_ns + min(max_skew_ns, FUTURE_SLACK_NS)
        if abs(self.skew_ns) > max_skew_ns:
            self._lowest, self._highest = 1, 0  # none

    def corrected(self, client_ns: int) -> int | None:
        """The corrected time of a client time, or None when the clock is ABSURD."""
        if client_ns and self._lowest <= client_ns <= self._highest:
            return client_ns - self.skew_ns
        return None

    def fix(self, client_ns: int) -> ClockFix:
        """The outcome for one event's client time."""
        corrected = self.corrected(client_ns)
        if corrected is None:
            return ClockFix(self.received_ns, self.skew_ns, ABSURD)
        return ClockFix(corrected, self.skew_ns, self.status)


def correct_clock(
    *, client_ns: int, skew_ns: int | None, received_ns: int, max_skew_ns: int
) -> ClockFix:
    """Corrects a client timestamp by the measured skew of its batch (see `BatchClock`)."""
    clock = BatchClock(skew_ns=skew_ns, received_ns=received_ns, max_skew_ns=max_skew_ns)
    return clock.fix(client_ns)
