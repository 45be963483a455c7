"""The hand-written wire encoding: byte for byte what protobuf's serialiser writes."""

from __future__ import annotations

from google.protobuf import timestamp_pb2, wrappers_pb2
from hypothesis import example, given
from hypothesis import strategies as st
from telemetry.v1 import event_pb2

from enricher import _wire as wire

_UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# The edges of each unrolled length of `varint`, and of the loop past them.
_EDGES = [2**bits + delta for bits in (7, 14, 21, 28, 35, 63) for delta in (-1, 0, 1)]


@given(value=st.one_of(_UINT64, st.sampled_from(_EDGES)))
@example(value=0)
@example(value=2**64 - 1)
def test_varint_matches_protobuf(value: int) -> None:
    # UInt64Value encodes `value` as its tag (field 1, varint: 0x08) then the varint.
    expected = wrappers_pb2.UInt64Value(value=value).SerializeToString()
    assert (b"\x08" + wire.varint(value) if value else b"") == expected


@given(
    value=st.one_of(
        _INT64,
        st.sampled_from(
            [e * sign for e in _EDGES for sign in (1, -1) if -(2**63) <= e * sign < 2**63]
        ),
    )
)
@example(value=-1)
@example(value=-(2**63))
def test_int_field_matches_protobuf_for_negatives_and_zero(value: int) -> None:
    key = wire.tag(wrappers_pb2.Int64Value, "value", wire.WIRE_VARINT)
    assert wire.int_field(key, value) == wrappers_pb2.Int64Value(value=value).SerializeToString()


@given(text=st.text())
def test_string_field_matches_protobuf(text: str) -> None:
    key = wire.tag(wrappers_pb2.StringValue, "value", wire.WIRE_LEN)
    assert wire.string_field(key, text) == wrappers_pb2.StringValue(value=text).SerializeToString()


@given(seconds=_INT64, nanos=st.integers(min_value=0, max_value=999_999_999))
def test_message_field_matches_protobuf_even_when_empty(seconds: int, nanos: int) -> None:
    key = wire.tag(event_pb2.EnrichedEvent, "received_at", wire.WIRE_LEN)
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    expected = event_pb2.EnrichedEvent(received_at=stamp).SerializeToString()
    assert wire.message_field(key, stamp.SerializeToString()) == expected


def test_tags_carry_the_field_number_and_wire_type() -> None:
    assert wire.tag(event_pb2.EnrichedBatch, "events", wire.WIRE_LEN) == b"\x0a"
    assert wire.tag(event_pb2.EnrichedEvent, "clock_skew_ms", wire.WIRE_VARINT) == b"\x28"
    assert wire.tag(event_pb2.EnrichedEvent, "request_id", wire.WIRE_LEN) == b"\x62"
