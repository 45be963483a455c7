"""Clock-skew correction: examples from the issue and properties over all inputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from enricher._clock import (
    ABSURD,
    CORRECTED,
    FUTURE_SLACK_NS,
    NANOS_PER_S,
    UNCORRECTED,
    BatchClock,
    ClockFix,
    correct_clock,
    measure_skew,
)

DAY_NS = 24 * 3600 * NANOS_PER_S
YEAR_NS = 365 * DAY_NS
RECEIVED = 1_700_000_000 * NANOS_PER_S

# Times between 1971 and 2100, in nanoseconds.
times = st.integers(min_value=NANOS_PER_S * 31_536_000, max_value=4_102_444_800 * NANOS_PER_S)
bounds = st.integers(min_value=1, max_value=10 * YEAR_NS)


def test_device_ahead_is_corrected_back() -> None:
    # The device clock runs 30 s ahead: it says it sent the batch 30 s after the server got it.
    skew = measure_skew(sent_ns=RECEIVED + 30 * NANOS_PER_S, received_ns=RECEIVED)
    fix = correct_clock(
        client_ns=RECEIVED + 20 * NANOS_PER_S,
        skew_ns=skew,
        received_ns=RECEIVED,
        max_skew_ns=YEAR_NS,
    )
    assert fix.skew_ns == 30 * NANOS_PER_S
    assert fix.corrected_ns == RECEIVED - 10 * NANOS_PER_S
    assert fix.status == CORRECTED


def test_without_sent_at_the_client_time_is_kept() -> None:
    assert measure_skew(sent_ns=None, received_ns=RECEIVED) is None
    fix = correct_clock(
        client_ns=RECEIVED - 5, skew_ns=None, received_ns=RECEIVED, max_skew_ns=YEAR_NS
    )
    assert fix == (RECEIVED - 5, 0, UNCORRECTED)


def test_unset_client_time_is_absurd() -> None:
    fix = correct_clock(client_ns=0, skew_ns=0, received_ns=RECEIVED, max_skew_ns=YEAR_NS)
    assert fix.status == ABSURD
    assert fix.corrected_ns == RECEIVED


def test_skew_of_years_is_absurd_and_recorded() -> None:
    skew = 3 * YEAR_NS
    fix = correct_clock(
        client_ns=RECEIVED + skew, skew_ns=skew, received_ns=RECEIVED, max_skew_ns=YEAR_NS
    )
    assert fix == (RECEIVED, skew, ABSURD)


def test_client_time_years_off_without_sent_at_is_absurd() -> None:
    fix = correct_clock(
        client_ns=RECEIVED - 2 * YEAR_NS, skew_ns=None, received_ns=RECEIVED, max_skew_ns=YEAR_NS
    )
    assert fix == (RECEIVED, 0, ABSURD)


def test_old_buffered_event_with_small_skew_is_trusted() -> None:
    # An event recorded offline a week ago, on a device 2 s behind.
    fix = correct_clock(
        client_ns=RECEIVED - 7 * DAY_NS,
        skew_ns=-2 * NANOS_PER_S,
        received_ns=RECEIVED,
        max_skew_ns=YEAR_NS,
    )
    assert fix == (RECEIVED - 7 * DAY_NS + 2 * NANOS_PER_S, -2 * NANOS_PER_S, CORRECTED)


def test_event_stamped_after_its_batch_was_sent_is_absurd() -> None:
    # The device clock was a day ahead when the event was stamped and set right
    # before the batch was sent: corrected, the event would happen a day from now.
    fix = correct_clock(
        client_ns=RECEIVED + DAY_NS, skew_ns=0, received_ns=RECEIVED, max_skew_ns=YEAR_NS
    )
    assert fix == (RECEIVED, 0, ABSURD)


def test_client_time_ahead_of_receipt_without_sent_at_is_absurd() -> None:
    fix = correct_clock(
        client_ns=RECEIVED + 10 * 60 * NANOS_PER_S,
        skew_ns=None,
        received_ns=RECEIVED,
        max_skew_ns=YEAR_NS,
    )
    assert fix == (RECEIVED, 0, ABSURD)


def test_event_a_little_after_receipt_is_kept() -> None:
    # sent_at in whole seconds, the event in milliseconds: it may correct to just
    # after the receipt, which is within the slack.
    skew = -400 * 1_000_000
    fix = correct_clock(
        client_ns=RECEIVED + 30 * NANOS_PER_S,
        skew_ns=skew,
        received_ns=RECEIVED,
        max_skew_ns=YEAR_NS,
    )
    assert fix == (RECEIVED + 30 * NANOS_PER_S - skew, skew, CORRECTED)
    edge = correct_clock(
        client_ns=RECEIVED + FUTURE_SLACK_NS + 1,
        skew_ns=0,
        received_ns=RECEIVED,
        max_skew_ns=YEAR_NS,
    )
    assert edge.status == ABSURD


@given(client=times, sent=times, received=times, bound=bounds)
def test_corrected_time_is_never_farther_than_the_bound(
    client: int, sent: int, received: int, bound: int
) -> None:
    skew = measure_skew(sent_ns=sent, received_ns=received)
    fix = correct_clock(client_ns=client, skew_ns=skew, received_ns=received, max_skew_ns=bound)
    assert -bound <= fix.corrected_ns - received <= min(bound, FUTURE_SLACK_NS)
    assert fix.skew_ns == sent - received


@given(client=times, sent=times, received=times, bound=bounds)
def test_plausible_input_is_corrected_exactly(
    client: int, sent: int, received: int, bound: int
) -> None:
    skew = sent - received
    fix = correct_clock(client_ns=client, skew_ns=skew, received_ns=received, max_skew_ns=bound)
    plausible = abs(skew) <= bound and -bound <= client - skew - received <= min(
        bound, FUTURE_SLACK_NS
    )
    if plausible:
        assert fix == (client - skew, skew, CORRECTED)
    else:
        assert fix == (received, skew, ABSURD)


@given(client=times, received=times, bound=bounds)
def test_without_skew_the_status_is_uncorrected_or_absurd(
    client: int, received: int, bound: int
) -> None:
    fix = correct_clock(client_ns=client, skew_ns=None, received_ns=received, max_skew_ns=bound)
    if -bound <= client - received <= min(bound, FUTURE_SLACK_NS):
        assert fix == (client, 0, UNCORRECTED)
    else:
        assert fix == (received, 0, ABSURD)


@given(shift=st.integers(min_value=-YEAR_NS // 2, max_value=YEAR_NS // 2), client=times)
def test_a_device_clock_shift_cancels_out(shift: int, client: int) -> None:
    """The same event seen from a device whose clock is off by `shift` corrects to one time."""
    true_sent = client + NANOS_PER_S
    received = true_sent + NANOS_PER_S  # one second in transit
    honest = correct_clock(
        client_ns=client,
        skew_ns=measure_skew(sent_ns=true_sent, received_ns=received),
        received_ns=received,
        max_skew_ns=YEAR_NS,
    )
    shifted = correct_clock(
        client_ns=client + shift,
        skew_ns=measure_skew(sent_ns=true_sent + shift, received_ns=received),
        received_ns=received,
        max_skew_ns=YEAR_NS,
    )
    assert shifted.corrected_ns == honest.corrected_ns
    assert shifted.status == CORRECTED


def _rule(*, client_ns: int, skew_ns: int | None, received_ns: int, max_skew_ns: int) -> ClockFix:
    """The correction rule written out step by step, one event at a time."""
    skew = 0 if skew_ns is None else skew_ns
    if client_ns == 0 or abs(skew) > max_skew_ns:
        return ClockFix(received_ns, skew, ABSURD)
    corrected = client_ns - skew
    if corrected < received_ns - max_skew_ns or corrected > received_ns + min(
        max_skew_ns, FUTURE_SLACK_NS
    ):
        return ClockFix(received_ns, skew, ABSURD)
    return ClockFix(corrected, skew, UNCORRECTED if skew_ns is None else CORRECTED)


_any_ns = st.integers(min_value=-(10**19), max_value=10**19)


@given(
    clients=st.lists(st.one_of(st.just(0), _any_ns, times), min_size=1, max_size=20),
    skew=st.one_of(st.none(), _any_ns, st.integers(min_value=-YEAR_NS, max_value=YEAR_NS)),
    received=st.one_of(_any_ns, times),
    bound=st.one_of(st.just(0), bounds),
)
def test_one_batch_clock_fixes_every_event_as_the_rule_does(
    clients: list[int], skew: int | None, received: int, bound: int
) -> None:
    clock = BatchClock(skew_ns=skew, received_ns=received, max_skew_ns=bound)
    for client in clients:
        expected = _rule(client_ns=client, skew_ns=skew, received_ns=received, max_skew_ns=bound)
        assert clock.fix(client) == expected
        absurd = expected.status == ABSURD
        assert clock.corrected(client) == (None if absurd else expected.corrected_ns)
        assert clock.skew_ns == expected.skew_ns


@given(skew=st.integers(min_value=-YEAR_NS, max_value=YEAR_NS), bound=bounds)
def test_the_window_edges_are_inside(skew: int, bound: int) -> None:
    clock = BatchClock(skew_ns=skew, received_ns=RECEIVED, max_skew_ns=bound)
    for edge in (-bound, min(bound, FUTURE_SLACK_NS)):
        fix = clock.fix(RECEIVED + skew + edge)
        expected_status = CORRECTED if abs(skew) <= bound else ABSURD
        assert fix.status == expected_status
        assert clock.fix(RECEIVED + skew + edge + (1 if edge > 0 else -1)).status == ABSURD
