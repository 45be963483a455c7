"""What `tpipe dlq replay` sends back: pure functions, no servers."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from telemetry.v1 import event_pb2

from pipeline import subjects
from tpipe import _cmd_dlq


def _entry(**changes: object) -> _cmd_dlq.Entry:
    fields: dict[str, object] = {
        "seq": 42,
        "stage": "indexer",
        "reason": "mapper_parsing_exception: ...",
        "source_subject": "telemetry.enriched.v1.shop",
        "deliveries": 1,
        "time": "2026-11-26T10:00:00Z",
        "size": 3,
        "headers": {
            subjects.DLQ_STAGE_HEADER: "indexer",
            subjects.DLQ_REASON_HEADER: "mapper_parsing_exception: ...",
            subjects.DLQ_SUBJECT_HEADER: "telemetry.enriched.v1.shop",
            subjects.DLQ_DELIVERIES_HEADER: "1",
            subjects.MSG_ID_HEADER: "dlq:indexer:7:abc",
            "Nats-Expected-Stream": "TELEMETRY_DLQ",
            subjects.TRACEPARENT_HEADER: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA,
        },
        "data": b"abc",
    }
    fields.update(changes)
    return _cmd_dlq.Entry(**fields)  # type: ignore[arg-type]


def test_replay_headers_drop_the_dlq_and_jetstream_ones_and_add_a_new_id() -> None:
    headers = _cmd_dlq.replay_headers(_entry())

    assert headers == {
        subjects.TRACEPARENT_HEADER: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA,
        subjects.MSG_ID_HEADER: "dlq-replay:indexer:42:2026-11-26T10:00:00Z",
        _cmd_dlq.REPLAY_OF_HEADER: "42",
    }


def test_an_entry_of_a_dlq_made_anew_gets_another_replay_id() -> None:
    # Its sequences start at 1 again: the id of an earlier replay would be dropped by the
    # source stream's duplicate window, and the entry deleted unsent.
    before = _cmd_dlq.replay_headers(_entry(time="2026-11-26T10:00:00Z"))
    after = _cmd_dlq.replay_headers(_entry(time="2026-11-26T10:04:00Z"))

    assert before[subjects.MSG_ID_HEADER] != after[subjects.MSG_ID_HEADER]
    assert _cmd_dlq.replay_headers(_entry()) == before  # the same entry: the same id


def test_a_rejected_event_goes_back_as_a_batch_of_one() -> None:
    event = event_pb2.EnrichedEvent(event=event_pb2.Event(event_id="e-1", event_name="x"))
    entry = _entry(
        data=event.SerializeToString(),
        headers={subjects.SCHEMA_HEADER: _cmd_dlq.ENRICHED_EVENT_SCHEMA},
    )

    batch = event_pb2.EnrichedBatch.FromString(_cmd_dlq.replay_payload(entry))

    assert [e.event.event_id for e in batch.events] == ["e-1"]
    assert _cmd_dlq.replay_headers(entry)[subjects.SCHEMA_HEADER] == subjects.ENRICHED_SCHEMA


def test_whole_messages_go_back_byte_for_byte() -> None:
    assert _cmd_dlq.replay_payload(_entry(data=b"\xff\x00 anything")) == b"\xff\x00 anything"


def test_an_event_dead_letter_that_is_not_an_event_is_refused() -> None:
    entry = _entry(data=b"\xff\xff", headers={subjects.SCHEMA_HEADER: "telemetry.v1.EnrichedEvent"})
    with pytest.raises(DecodeError):
        _cmd_dlq.replay_payload(entry)


@pytest.mark.parametrize(
    ("subject", "ok"),
    [
        ("telemetry.raw.v1.shop", True),
        ("telemetry.enriched.v1.shop", True),
        ("telemetry.dlq.v1.indexer", False),
        ("", False),
        ("orders.created", False),
    ],
)
def test_only_pipeline_subjects_are_replayed(subject: str, ok: bool) -> None:
    assert _cmd_dlq.replayable(_entry(source_subject=subject)) is ok
