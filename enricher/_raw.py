"""Reading a raw message: its payload, its schema, the app it belongs to."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import DecodeError
from telemetry.v1 import event_pb2

from enricher.errors import PoisonMessageError
from pipeline import subjects

REASON_UNDECODABLE = "undecodable"
REASON_WRONG_SCHEMA = "wrong_schema"
REASON_EMPTY_BATCH = "empty_batch"
REASON_INVALID_APP_ID = "invalid_app_id"
REASON_TOO_MANY_EVENTS = "too_many_events"


def decode_raw(
    data: bytes, headers: Mapping[str, str], *, max_events: int = 0
) -> event_pb2.RawBatch:
    """The RawBatch in `data`; raises PoisonMessageError when there is none.

    A message without a Telemetry-Schema header is taken for a RawBatch (the
    original pipeline's EventBatch decodes as one without context). A batch
    without events is refused: the gateway never publishes one, so such bytes
    are something else that happened to parse. So is a batch of more than
    `max_events` events (0: no limit), which the gateway refuses too: a message
    of many tiny events would hold the enricher for seconds.
    """
    schema = headers.get(subjects.SCHEMA_HEADER, subjects.RAW_SCHEMA)
    if schema != subjects.RAW_SCHEMA:
        raise PoisonMessageError(
            REASON_WRONG_SCHEMA, f"schema {schema!r}, expected {subjects.RAW_SCHEMA}"
        )
    try:
        raw = event_pb2.RawBatch.FromString(data)
    except DecodeError as err:
        raise PoisonMessageError(REASON_UNDECODABLE, f"not a RawBatch: {err}") from None
    if not raw.events:
        raise PoisonMessageError(REASON_EMPTY_BATCH, "the batch has no events")
    if max_events and len(raw.events) > max_events:
        raise PoisonMessageError(
            REASON_TOO_MANY_EVENTS,
            f"the batch has {len(raw.events)} events, more than the limit of {max_events} "
            "(ENRICHER_MAX_EVENTS_PER_MESSAGE)",
        )
    return raw


def app_id_of(raw: event_pb2.RawBatch, subject: str) -> str:
    """The app of a batch: from its context, else the last token of its subject."""
    app_id = raw.context.app_id or subjects.app_of(subject)
    if not subjects.valid_token(app_id):
        raise PoisonMessageError(REASON_INVALID_APP_ID, f"app id {app_id[:80]!r}")
    return app_id


def enriched_msg_id(*, stream_seq: int, raw_msg_id: str, data: bytes) -> str:
    """The Nats-Msg-Id of the enriched batch made from one raw message.

    The raw message's stream sequence is the same on every redelivery, so a
    retried publish is dropped by JetStream's duplicate window; the raw message
    id, or the digest of its bytes when it has none, keeps ids apart should the raw
    stream be made anew (its sequences start at 1 again) within that window.
    """
    return f"enr:{stream_seq}:{raw_msg_id or subjects.digest(data)}"
