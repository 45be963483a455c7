"""The dead letter a stage stores for a message it gives up on: its id, headers the DLQ
stream takes, and a message that fits the server's max_payload (pure functions, no server)."""

from __future__ import annotations

from nats.js import api as js_api

from pipeline import natsconn, subjects

MAX_PAYLOAD = 1_048_576


def _sent_size(payload: bytes, headers: dict[str, str]) -> int:
    """What the server counts against max_payload: the header block as nats-py writes it
    (with the Nats-Expected-Stream js.publish adds), then the payload."""
    sent = {**headers, js_api.Header.EXPECTED_STREAM: subjects.DLQ_STREAM}
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in sent.items())
    return len(block + b"\r\n") + len(payload)


def _letter(
    data: bytes, headers: dict[str, str], **options: object
) -> tuple[bytes, dict[str, str]]:
    return natsconn.dead_letter_message(
        stage="enricher",
        reason="undecodable: " + "why " * 400,
        data=data,
        source_subject="telemetry.raw.v1.shop",
        headers=headers,
        deliveries=2,
        msg_id="7",
        source_seq=7,
        **options,  # type: ignore[arg-type]
    )


def test_jetstreams_own_headers_are_dropped_in_any_case_and_the_others_kept() -> None:
    # Each would make the DLQ stream refuse the dead letter, every time it is tried.
    headers = {
        "Nats-Msg-Id": "raw-1",
        "Nats-Expected-Last-Subject-Sequence": "41",
        "nats-expected-last-sequence": "40",
        "NATS-ROLLUP": "sub",
        "Nats-TTL": "1s",
        subjects.TRACEPARENT_HEADER: "00-abc-def-01",
        subjects.DLQ_REPLAY_OF_HEADER: "3",
        "X-Origin": "test",
    }

    payload, out = _letter(b"garbage", headers)

    assert payload == b"garbage"
    assert [k for k in out if k.lower().startswith("nats-")] == [subjects.MSG_ID_HEADER]
    assert out[subjects.MSG_ID_HEADER] == "dlq:enricher:7"
    assert out[subjects.TRACEPARENT_HEADER] == "00-abc-def-01"
    assert out[subjects.DLQ_REPLAY_OF_HEADER] == "3"
    assert out["X-Origin"] == "test"
    assert out[subjects.DLQ_SOURCE_SEQ_HEADER] == "7"
    assert subjects.DLQ_OMITTED_BYTES_HEADER not in out


def test_a_message_near_max_payload_keeps_its_bytes_with_a_shorter_reason() -> None:
    data = b"x" * (MAX_PAYLOAD - 600)
    # Without a limit: the reason as long as it may be, and more than would fit.
    _, whole = _letter(data, {})
    assert _sent_size(data, whole) > MAX_PAYLOAD

    payload, out = _letter(data, {}, max_payload=MAX_PAYLOAD)

    assert payload == data
    assert out[subjects.DLQ_REASON_HEADER].startswith("undecodable: why")
    assert len(out[subjects.DLQ_REASON_HEADER]) == natsconn.DLQ_REASON_MIN_CHARS
    assert _sent_size(payload, out) <= MAX_PAYLOAD


def test_a_payload_that_cannot_fit_is_left_out_and_its_size_and_sequence_kept() -> None:
    data = b"x" * (MAX_PAYLOAD - 100)
    headers = {"Nats-Msg-Id": "raw-1", "X-Origin": "test"}

    payload, out = _letter(data, headers, max_payload=MAX_PAYLOAD)

    assert payload == b""
    assert out[subjects.DLQ_OMITTED_BYTES_HEADER] == str(len(data))
    assert out[subjects.DLQ_SOURCE_SEQ_HEADER] == "7"
    assert out["X-Origin"] == "test"
    assert len(out[subjects.DLQ_REASON_HEADER]) == natsconn.DLQ_REASON_MAX_CHARS
    assert _sent_size(payload, out) <= MAX_PAYLOAD


def test_original_headers_too_large_for_any_dead_letter_are_left_out_too() -> None:
    headers = {"X-Huge": "h" * (MAX_PAYLOAD - 200)}

    payload, out = _letter(b"", headers, max_payload=MAX_PAYLOAD)

    assert payload == b""
    assert "X-Huge" not in out
    assert out[subjects.DLQ_STAGE_HEADER] == "enricher"
    assert _sent_size(payload, out) <= MAX_PAYLOAD


def test_a_dead_letter_is_named_by_the_sequence_and_the_message_id() -> None:
    assert subjects.dead_letter_id(stream_seq=42, msg_id="b-1", data=b"x") == "42:b-1"
    # The same message again (a redelivery): the same name, dropped by the DLQ as a duplicate.
    assert subjects.dead_letter_id(stream_seq=42, msg_id="b-1", data=b"y") == "42:b-1"
    # A stream made anew numbers its messages from 1 again: another message at 42 is not it.
    assert subjects.dead_letter_id(stream_seq=42, msg_id="b-2", data=b"x") == "42:b-2"


def test_a_message_without_an_id_is_named_by_its_bytes() -> None:
    first = subjects.dead_letter_id(stream_seq=42, msg_id="", data=b"first")
    assert first == subjects.dead_letter_id(stream_seq=42, msg_id="", data=b"first")
    assert first != subjects.dead_letter_id(stream_seq=42, msg_id="", data=b"second")
    assert first == f"42:{subjects.digest(b'first')}"


def test_a_long_message_id_is_named_by_its_hash() -> None:
    long_a, long_b = "a" * 129 + "1", "a" * 129 + "2"
    named_a = subjects.dead_letter_id(stream_seq=42, msg_id=long_a, data=b"x")
    assert named_a != subjects.dead_letter_id(stream_seq=42, msg_id=long_b, data=b"x")
    assert len(named_a) < 80
    assert subjects.dead_letter_id(stream_seq=42, msg_id="a" * 128, data=b"x") == "42:" + "a" * 128
