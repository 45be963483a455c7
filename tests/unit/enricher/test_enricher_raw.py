"""Reading raw messages: schema, decoding, app id, and the enriched message id."""

from __future__ import annotations

import pytest
from telemetry.v1 import event_pb2

from enricher._raw import (
    REASON_EMPTY_BATCH,
    REASON_INVALID_APP_ID,
    REASON_UNDECODABLE,
    REASON_WRONG_SCHEMA,
    app_id_of,
    decode_raw,
    enriched_msg_id,
)
from enricher.errors import PoisonMessageError
from pipeline import subjects


def _raw(app_id: str = "shop") -> event_pb2.RawBatch:
    raw = event_pb2.RawBatch(events=[event_pb2.Event(event_id="e1", event_name="open")])
    raw.context.app_id = app_id
    return raw


def test_raw_batch_decodes() -> None:
    data = _raw().SerializeToString()
    raw = decode_raw(data, {subjects.SCHEMA_HEADER: subjects.RAW_SCHEMA})
    assert raw.events[0].event_id == "e1"
    assert raw.context.app_id == "shop"


def test_original_event_batch_decodes_without_context() -> None:
    legacy = event_pb2.EventBatch(events=[event_pb2.Event(event_id="old", device_os="iOS 16")])
    raw = decode_raw(legacy.SerializeToString(), {})
    assert raw.events[0].event_id == "old"
    assert not raw.HasField("context")


def test_garbage_is_undecodable() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode_raw(b"\xff\xff\xff\xff not protobuf", {})
    assert caught.value.reason == REASON_UNDECODABLE


def test_other_schema_is_refused() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode_raw(_raw().SerializeToString(), {subjects.SCHEMA_HEADER: "telemetry.v1.Other"})
    assert caught.value.reason == REASON_WRONG_SCHEMA


def test_batch_without_events_is_refused() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        decode_raw(b"", {})
    assert caught.value.reason == REASON_EMPTY_BATCH


def test_app_id_from_context_else_subject() -> None:
    assert app_id_of(_raw("shop"), "telemetry.raw.v1.other") == "shop"
    assert app_id_of(_raw(""), "telemetry.raw.v1.legacy_app") == "legacy_app"


def test_invalid_app_id_is_refused() -> None:
    with pytest.raises(PoisonMessageError) as caught:
        app_id_of(_raw("bad app.id"), "telemetry.raw.v1.x")
    assert caught.value.reason == REASON_INVALID_APP_ID


def test_msg_id_depends_on_the_raw_message_only() -> None:
    assert enriched_msg_id(stream_seq=42, raw_msg_id="b-1", data=b"x") == "enr:42:b-1"
    assert enriched_msg_id(stream_seq=42, raw_msg_id="b-1", data=b"x") != enriched_msg_id(
        stream_seq=43, raw_msg_id="b-1", data=b"x"
    )


def test_a_message_without_an_id_is_named_by_its_bytes() -> None:
    # A raw stream made anew numbers its messages from 1 again: within the duplicate
    # window, a name by sequence alone would drop another message's batch as a duplicate.
    assert enriched_msg_id(stream_seq=42, raw_msg_id="", data=b"first") == enriched_msg_id(
        stream_seq=42, raw_msg_id="", data=b"first"
    )
    assert enriched_msg_id(stream_seq=42, raw_msg_id="", data=b"first") != enriched_msg_id(
        stream_seq=42, raw_msg_id="", data=b"second"
    )
