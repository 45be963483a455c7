"""Connect request bodies that do not decode: the message says what is wrong."""

from __future__ import annotations

import pytest
from telemetry.v1 import ingest_service_pb2

from gateway._connect import JSON, PROTO, decode
from gateway.errors import InvalidRequest, TooLarge


@pytest.mark.parametrize(
    ("body", "media", "says"),
    [
        (
            b'{"events": [{"event_id": "a", "metadata": {"k": 3}}]}',
            JSON,
            "Failed to parse events field: Failed to parse metadata field",
        ),
        (b'{"sent_at": "yesterday"}', JSON, "Failed to parse sent_at field"),
        (b'{"events": "\xff"}', JSON, "the body is not UTF-8 JSON"),
        (b"\x0a\xff", PROTO, "the body is not an IngestEventsRequest: DecodeError"),
    ],
)
def test_a_body_that_does_not_decode_says_why(body: bytes, media: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        decode(body, media)

    assert says in str(raised.value)


def test_a_long_parse_error_is_cut() -> None:
    body = b'{"sent_at": "' + b"x" * 2000 + b'T00:00:00Z"}'  # the error quotes the value

    with pytest.raises(InvalidRequest) as raised:
        decode(body, JSON)

    assert len(str(raised.value)) < 400


def test_binary_of_more_events_than_a_batch_holds_is_refused_before_it_is_parsed() -> None:
    request = ingest_service_pb2.IngestEventsRequest()
    for _ in range(100_000):
        request.events.add()

    with pytest.raises(TooLarge, match=r"^the batch has more than 1000 events"):
        decode(request.SerializeToString(), PROTO, max_events=1000)
