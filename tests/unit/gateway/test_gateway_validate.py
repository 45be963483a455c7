"""Per-event validation, Go-style metadata numbers, RFC 3339, and the JSON -> Event mapping."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry.v1 import event_pb2

from gateway._validate import (
    Limits,
    _checked_fields,
    _checked_timestamp,
    _json_metadata,
    check_count,
    go_float,
    parse_envelope,
    read_json_events,
    read_proto_events,
)
from gateway.errors import InvalidRequest, TooLarge
from pipeline import rfc3339 as _rfc3339
from tests.unit.gateway.strategies import event_like

LIMITS = Limits(
    max_events=100,
    max_field_chars=32,
    max_event_id_chars=40,
    max_metadata_entries=3,
    max_metadata_key_chars=8,
    max_metadata_value_chars=16,
)
R = event_pb2.RejectionReason


def good(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "e-1",
        "session_id": "s",
        "user_id": "u",
        "event_name": "tap",
        "client_timestamp": "2024-01-01T00:00:00Z",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


def judge(
    *items: object, limits: Limits = LIMITS
) -> tuple[event_pb2.RawBatch, list[event_pb2.EventRejection]]:
    batch = event_pb2.RawBatch()
    return batch, read_json_events(list(items), limits, batch.events)


def as_proto(item: dict[str, Any]) -> event_pb2.Event:
    """The Event a gRPC/Connect client sends for a JSON event of string fields; its
    client_timestamp is RFC 3339 text or a Timestamp as it goes on the wire."""
    event = event_pb2.Event(metadata=item.get("metadata") or {})
    for name in ("event_id", "session_id", "user_id", "event_name", "app_version", "device_os"):
        if item.get(name) is not None:
            setattr(event, name, item[name])
    stamp = item.get("client_timestamp")
    if isinstance(stamp, str):
        parsed = _rfc3339.parse(stamp)
        assert parsed is not None
        stamp = Timestamp(seconds=parsed[0], nanos=parsed[1])
    if stamp is not None:
        event.client_timestamp.CopyFrom(stamp)
    return event


def judge_proto(
    *events: event_pb2.Event, limits: Limits = LIMITS
) -> tuple[event_pb2.RawBatch, list[event_pb2.EventRejection]]:
    batch = event_pb2.RawBatch()
    return batch, read_proto_events(events, limits, batch.events)


# Problems an event may have whether it comes as JSON or as an Event message.
PROBLEMS: list[tuple[dict[str, Any], int]] = [
    (good(event_id=...), R.REJECTION_REASON_MISSING_FIELD),
    (good(event_id=""), R.REJECTION_REASON_MISSING_FIELD),
    (good(user_id=""), R.REJECTION_REASON_MISSING_FIELD),
    (good(session_id=None), R.REJECTION_REASON_MISSING_FIELD),
    (good(event_name=...), R.REJECTION_REASON_MISSING_FIELD),
    (good(client_timestamp=...), R.REJECTION_REASON_MISSING_FIELD),
    (good(user_id="u" * 33), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(session_id="s" * 33), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(event_name="n" * 33), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(app_version="v" * 33), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(device_os="o" * 33), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(event_id="e" * 41), R.REJECTION_REASON_FIELD_TOO_LONG),
    # The rejection names an id of up to 256 characters, none longer.
    (good(event_id="e" * 256), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(event_id="e" * 257), R.REJECTION_REASON_FIELD_TOO_LONG),
    (good(metadata={"": "x"}), R.REJECTION_REASON_INVALID_METADATA),
    (
        good(metadata={"a": "1", "b": "2", "c": "3", "d": "4"}),
        R.REJECTION_REASON_METADATA_TOO_LARGE,
    ),
    (good(metadata={"k" * 9: "v"}), R.REJECTION_REASON_METADATA_TOO_LARGE),
    (good(metadata={"k": "v" * 17}), R.REJECTION_REASON_METADATA_TOO_LARGE),
    (good(event_id="a/b"), R.REJECTION_REASON_INVALID_EVENT_ID),
    (good(event_id="-leading"), R.REJECTION_REASON_INVALID_EVENT_ID),
]
JSON_ONLY_PROBLEMS: list[tuple[object, int]] = [
    ([1, 2], R.REJECTION_REASON_NOT_AN_OBJECT),
    (good(event_name=5), R.REJECTION_REASON_INVALID_TYPE),
    (good(app_version=2.3), R.REJECTION_REASON_INVALID_TYPE),
    (good(client_timestamp=1698314400), R.REJECTION_REASON_INVALID_TYPE),
    (good(metadata=[1]), R.REJECTION_REASON_INVALID_TYPE),
    (good(client_timestamp="2024-01-01 00:00:00"), R.REJECTION_REASON_INVALID_TIMESTAMP),
    (good(client_timestamp="2024-02-30T00:00:00Z"), R.REJECTION_REASON_INVALID_TIMESTAMP),
    (good(client_timestamp="2024-01-01T00:00:00"), R.REJECTION_REASON_INVALID_TIMESTAMP),
    (good(metadata={"a": {"b": 1}}), R.REJECTION_REASON_INVALID_METADATA),
    (good(metadata={"a": [1]}), R.REJECTION_REASON_INVALID_METADATA),
    (good(metadata={"a": None}), R.REJECTION_REASON_INVALID_METADATA),
]
# Timestamps only a message can carry: past what RFC 3339 writes.
PROTO_ONLY_PROBLEMS: list[tuple[dict[str, Any], int]] = [
    (
        good(client_timestamp=Timestamp(seconds=0, nanos=1_000_000_000)),
        R.REJECTION_REASON_INVALID_TIMESTAMP,
    ),
    (good(client_timestamp=Timestamp(seconds=0, nanos=-1)), R.REJECTION_REASON_INVALID_TIMESTAMP),
    (
        good(client_timestamp=Timestamp(seconds=_rfc3339.MIN_SECONDS - 1)),
        R.REJECTION_REASON_INVALID_TIMESTAMP,
    ),
    (
        good(client_timestamp=Timestamp(seconds=_rfc3339.MAX_SECONDS + 1)),
        R.REJECTION_REASON_INVALID_TIMESTAMP,
    ),
]


@pytest.mark.parametrize(
    ("path", "item", "reason"),
    [("json", item, reason) for item, reason in PROBLEMS + JSON_ONLY_PROBLEMS]
    + [("proto", item, reason) for item, reason in PROBLEMS + PROTO_ONLY_PROBLEMS],
)
def test_each_problem_has_its_reason(path: str, item: Any, reason: int) -> None:
    batch, rejections = judge(item) if path == "json" else judge_proto(as_proto(item))

    assert len(batch.events) == 0
    (rejection,) = rejections
    assert (rejection.index, rejection.reason) == (0, reason)
    assert rejection.detail
    event_id = item.get("event_id") if isinstance(item, dict) else None
    readable = isinstance(event_id, str) and len(event_id) <= 256
    assert rejection.event_id == (event_id if readable else "")


def test_valid_event_maps_field_by_field() -> None:
    batch, rejections = judge(
        good(
            client_timestamp="2023-10-26T12:00:05.25+02:00",
            app_version="2.3.1",
            device_os="iOS 17.2",
            metadata={"price": 2.5, "qty": 3, "ok": True, "no": False, "s": "x"},
            unknown_field="ignored",
        ),
        limits=dataclasses.replace(LIMITS, max_metadata_entries=5),
    )

    assert rejections == []
    (event,) = batch.events
    assert event == event_pb2.Event(
        event_id="e-1",
        session_id="s",
        user_id="u",
        event_name="tap",
        client_timestamp=Timestamp(seconds=1698314405, nanos=250_000_000),
        app_version="2.3.1",
        device_os="iOS 17.2",
        metadata={"price": "2.5", "qty": "3", "ok": "true", "no": "false", "s": "x"},
    )


@pytest.mark.parametrize("path", ["json", "proto"])
def test_later_duplicates_are_rejected_and_the_first_kept(path: str) -> None:
    items = [good(), good(user_id="other"), good(event_id="e-2"), good(event_id="e-2")]
    if path == "json":
        batch, rejections = judge(*items)
    else:
        batch, rejections = judge_proto(*map(as_proto, items))

    assert [(e.event_id, e.user_id) for e in batch.events] == [("e-1", "u"), ("e-2", "u")]
    assert [(r.index, r.event_id, r.reason) for r in rejections] == [
        (1, "e-1", R.REJECTION_REASON_DUPLICATE_EVENT_ID),
        (3, "e-2", R.REJECTION_REASON_DUPLICATE_EVENT_ID),
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.5, "2.5"),
        (3.0, "3"),
        (-0.0, "-0"),
        (0.0, "0"),
        (19.99, "19.99"),
        (100.0, "100"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5e-7, "-2.5e-07"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_floats_print_like_go_percent_v(value: float, text: str) -> None:
    assert go_float(value) == text


def test_envelope_shapes() -> None:
    assert parse_envelope([{}], max_events=5) == ([{}], None)
    assert parse_envelope({"events": [{}], "sent_at": "1970-01-01T00:00:01Z"}, max_events=5) == (
        [{}],
        (1, 0),
    )
    bad: object
    for bad in ([], {"events": {}}, {"sent_at": "x", "events": [{}]}, "text", 3, None):
        with pytest.raises(InvalidRequest):
            parse_envelope(bad, max_events=5)
    with pytest.raises(TooLarge):
        parse_envelope([{}] * 6, max_events=5)


def test_a_batch_of_exactly_the_most_events_is_taken() -> None:
    assert parse_envelope([{}] * 5, max_events=5) == ([{}] * 5, None)
    check_count(5, max_events=5)  # the gRPC/Connect path's check
    with pytest.raises(TooLarge, match="6 events; at most 5"):
        check_count(6, max_events=5)


@pytest.mark.parametrize(
    "text",
    [
        "0000-01-01T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:60Z",  # a leap second ends a UTC day, never another minute
        "2016-12-31T23:59:60+01:00",
        "2016-12-31T23:59:61Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00+24:00",
        "\uff12\uff10\uff12\uff14-01-01T00:00:00Z",  # full-width digits
        "0001-01-01T00:00:00+00:01",
    ],
)
def test_rfc3339_rejects(text: str) -> None:
    assert _rfc3339.parse(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5Z",
        "2016-12-31T15:59:60-08:00",
        "2017-01-01T00:59:60+01:00",
    ],
)
def test_a_leap_second_is_the_last_instant_of_its_day(text: str) -> None:
    assert _rfc3339.parse(text) == (1483228799, 999_999_999)  # 2016-12-31T23:59:59.999999999Z


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("2024-01-01T00:00:00.1234567891Z", 123_456_789),  # RFC 3339 bounds no digits
        ("2024-01-01T00:00:00.999999999999+00:00", 999_999_999),  # cut off, never rounded up
        ("2024-01-01T00:00:00.000000000100Z", 0),
    ],
)
def test_rfc3339_fractions_past_nanoseconds_are_cut_off(text: str, nanos: int) -> None:
    assert _rfc3339.parse(text) == (1_704_067_200, nanos)


@given(
    moment=st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    offset_min=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_rfc3339_agrees_with_datetime(moment: dt.datetime, offset_min: int) -> None:
    zone = dt.timezone(dt.timedelta(minutes=offset_min))
    aware = moment.replace(tzinfo=zone)
    text = aware.isoformat()
    expected = aware - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

    parsed = _rfc3339.parse(text)

    assert parsed == (
        expected.days * 86400 + expected.seconds,
        moment.microsecond * 1000,
    )
    seconds, nanos = parsed
    assert _rfc3339.parse(_rfc3339.format_utc(seconds, nanos)) == parsed


@settings(max_examples=500)
@given(items=st.lists(event_like, max_size=10))
def test_every_event_is_either_added_or_rejected(items: list[dict[str, Any]]) -> None:
    batch, rejections = judge(*items)

    assert len(batch.events) + len(rejections) == len(items)
    assert [r.index for r in rejections] == sorted({r.index for r in rejections})
    assert all(r.reason != R.REJECTION_REASON_UNSPECIFIED for r in rejections)
    # What JSON accepts, the proto path accepts unchanged.
    again = event_pb2.RawBatch()
    assert read_proto_events(batch.events, LIMITS, again.events) == []
    assert list(again.events) == list(batch.events)


text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=32)


@given(
    event_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}", fullmatch=True),
    session_id=text,
    metadata=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=16), max_size=3),
    moment=st.datetimes(
        min_value=dt.datetime(1970, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(dt.UTC),
    ),
)
def test_valid_json_events_round_trip(
    event_id: str, session_id: str, metadata: dict[str, str], moment: dt.datetime
) -> None:
    stamp = moment.isoformat().replace("+00:00", "Z")

    batch, rejections = judge(
        good(event_id=event_id, session_id=session_id, metadata=metadata, client_timestamp=stamp)
    )

    assert rejections == []
    (event,) = batch.events
    assert (event.event_id, event.session_id, dict(event.metadata)) == (
        event_id,
        session_id,
        metadata,
    )
    assert event.client_timestamp.ToDatetime(tzinfo=dt.UTC) == moment


def millis_text(moment: dt.datetime, *, fraction: bool) -> str:
    """`moment` (naive, UTC) in the clients' usual shape, with or without milliseconds."""
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment:%H:%M:%S}"
    return text + (f".{moment.microsecond // 1000:03d}Z" if fraction else "Z")


usual_stamps = st.builds(
    millis_text,
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
    fraction=st.booleans(),
)
# What may replace a character of a usual timestamp: look-alikes of what belongs there.
stamp_chars = st.sampled_from("0123456789:.-TtZz +x\u0663\u00b2\uff10")


@given(
    seen=usual_stamps,
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=25), stamp_chars | st.just("")), max_size=3
    ),
)
def test_rfc3339_shortcut_agrees_with_the_full_parse(
    seen: str, edits: list[tuple[int, str]]
) -> None:
    assert _rfc3339.parse(seen) == _rfc3339.parse_full(seen) is not None
    # Its minute is cached now: texts that share or nearly share it take the shortcut.
    text = seen
    for position, char in edits:
        text = text[:position] + char + text[position + 1 :]

    assert _rfc3339.parse(text) == _rfc3339.parse_full(text)
    assert _rfc3339.parse(seen) == _rfc3339.parse_full(seen)


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:60Z",  # a leap second ends a UTC day, never another minute
        "2016-12-31T23:59:60+01:00",
        "2016-12-31T23:59:61Z",
        "2024-01-01T00:00:5xZ",
        "2024-01-01T00:00:0\u0663Z",
        "2024-01-01T00:00:00.2\u00b25Z",
        "2024-01-01T00:00:00.25 Z",
        "2024-01-01T00:00:00.+25Z",
        "2024-01-01T00:00:00_250Z",
        "2024-01-01T00:00-00.250Z",
    ],
)
def test_rfc3339_shortcut_rejects_a_bad_tail_in_a_seen_minute(text: str) -> None:
    assert _rfc3339.parse("2024-01-01T00:00:00.250Z") == (1704067200, 250_000_000)

    assert _rfc3339.parse(text) is None


def test_epoch_timestamp_is_present_on_the_event() -> None:
    batch, _ = judge(good(client_timestamp="1970-01-01T00:00:00Z"))

    (event,) = batch.events
    assert event.HasField("client_timestamp")
    assert event.client_timestamp == Timestamp(seconds=0, nanos=0)


metadata_scalars = st.one_of(
    st.text(max_size=16), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False)
)
valid_like = st.fixed_dictionaries(
    {
        "event_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,39}", fullmatch=True),
        "session_id": st.text(min_size=1, max_size=32),
        "user_id": st.sampled_from(["u", "user-1", "\u00fcser"]),
        "event_name": st.sampled_from(["tap", "screen_view"]),
        "client_timestamp": usual_stamps | st.sampled_from(["2024-02-29T23:59:59.999999999+01:30"]),
    },
    optional={
        "app_version": st.text(max_size=8) | st.none(),
        "device_os": st.text(max_size=8) | st.none(),
        "metadata": st.dictionaries(st.text(max_size=8), metadata_scalars, max_size=3) | st.none(),
    },
)


def plain_event(item: dict[str, Any]) -> event_pb2.Event:
    """The event the gateway built before: the general checks and one constructor call."""
    seconds, nanos = _checked_timestamp(item["client_timestamp"])
    return event_pb2.Event(
        **_checked_fields(item, LIMITS),
        client_timestamp=Timestamp(seconds=seconds, nanos=nanos),
        metadata=_json_metadata(item.get("metadata"), LIMITS) or {},
    )


@settings(max_examples=300)
@given(items=st.lists(valid_like | event_like, max_size=8))
def test_events_are_built_as_one_constructor_call_would(items: list[dict[str, Any]]) -> None:
    batch, rejections = judge(*items)

    rejected = {r.index for r in rejections}
    expected = event_pb2.RawBatch(
        events=[plain_event(item) for n, item in enumerate(items) if n not in rejected]
    )
    assert batch == expected
    assert batch.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


def test_the_largest_event_bound_holds_for_an_event_at_every_limit() -> None:
    wide = "\N{GRINNING FACE}"  # 4 bytes in UTF-8, one character
    event = event_pb2.Event(
        event_id=wide * LIMITS.max_event_id_chars,
        client_timestamp=Timestamp(seconds=_rfc3339.MIN_SECONDS, nanos=999_999_999),
        metadata={
            f"{n}{wide * (LIMITS.max_metadata_key_chars - 1)}": wide
            * LIMITS.max_metadata_value_chars
            for n in range(LIMITS.max_metadata_entries)
        },
    )
    for name in ("session_id", "user_id", "event_name", "app_version", "device_os"):
        setattr(event, name, wide * LIMITS.max_field_chars)

    assert event.ByteSize() <= LIMITS.largest_event_bytes() <= event.ByteSize() + 64


@pytest.mark.parametrize("value", [{"nested": 1}, [1], None, "v" * 100])
def test_a_key_too_long_is_refused_before_a_detail_quotes_it(value: object) -> None:
    _, [rejection] = judge(good(metadata={"k" * 5000: value}))

    assert rejection.reason == R.REJECTION_REASON_METADATA_TOO_LARGE
    assert rejection.detail == "metadata key longer than 8 characters"


def test_an_event_at_a_leap_second_is_stored_at_the_last_instant_of_its_day() -> None:
    batch, rejections = judge(good(client_timestamp="2016-12-31T23:59:60Z"))

    assert rejections == []
    stamp = batch.events[0].client_timestamp
    assert (stamp.seconds, stamp.nanos) == (1483228799, 999_999_999)


def test_a_sent_at_at_a_leap_second_is_read() -> None:
    _, sent_at = parse_envelope(
        {"sent_at": "2016-12-31T23:59:60Z", "events": [good()]}, max_events=10
    )

    assert sent_at == (1483228799, 999_999_999)


# RFC 3339 date-times whose instant is before 0001-01-01T00:00:00Z or after 9999-12-31T23:59:59Z.
OUT_OF_RANGE = [
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.5-00:01",
    "0001-01-01T00:00:00+00:01",
    "0001-01-01T00:00:60+00:01",  # the leap second ending 0000-12-31 UTC
    "0000-12-31T23:30:00+01:00",  # RFC 3339 writes the year 0000, but this is 0000 in UTC too
    "0000-06-15T12:00:00Z",
]


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_a_client_timestamp_outside_the_years_1_to_9999_in_utc_says_so(text: str) -> None:
    _, [rejection] = judge(good(client_timestamp=text))

    assert rejection.reason == R.REJECTION_REASON_INVALID_TIMESTAMP
    assert rejection.detail == (
        "client_timestamp is out of range: it lies outside the years 0001-9999 in UTC"
    )


@pytest.mark.parametrize(
    "text", ["2024-02-30T00:00:00Z", "2024-01-01T00:00:00", "0001-01-01T00:00:00+24:00", "x"]
)
def test_a_client_timestamp_that_is_no_date_time_is_not_called_out_of_range(text: str) -> None:
    assert not _rfc3339.out_of_range(text)
    _, [rejection] = judge(good(client_timestamp=text))

    assert rejection.detail.startswith("client_timestamp is not an RFC 3339 date-time")


def test_the_edges_of_the_range_are_in_it() -> None:
    for text in ("0001-01-01T00:00:00Z", "0001-01-01T00:01:00+00:01", "9999-12-31T23:59:59-00:00"):
        assert _rfc3339.parse(text) is not None
        assert not _rfc3339.out_of_range(text)


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_a_sent_at_outside_the_years_1_to_9999_in_utc_says_so(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^sent_at is out of range: it lies outside the"):
        parse_envelope({"sent_at": text, "events": [good()]}, max_events=10)


# RFC 3339 writes the year 0000; with an offset, its last hours are in 0001 once in UTC.
YEAR_0000_IN_RANGE = "0000-12-31T23:30:00-01:00"  # 0001-01-01T00:30:00Z


def test_a_client_timestamp_in_year_0000_that_is_0001_in_utc_is_taken() -> None:
    batch, rejections = judge(good(client_timestamp=YEAR_0000_IN_RANGE))

    assert rejections == []
    assert batch.events[0].client_timestamp == Timestamp(seconds=_rfc3339.MIN_SECONDS + 1800)


def test_a_sent_at_in_year_0000_that_is_0001_in_utc_is_read() -> None:
    _, sent_at = parse_envelope({"sent_at": YEAR_0000_IN_RANGE, "events": [good()]}, max_events=10)

    assert sent_at == (_rfc3339.MIN_SECONDS + 1800, 0)
