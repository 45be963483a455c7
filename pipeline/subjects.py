"""Stream names, subjects and message headers: the JetStream side of the contract."""

from __future__ import annotations

import hashlib
import re

RAW_STREAM = "TELEMETRY_RAW"
ENRICHED_STREAM = "TELEMETRY_ENRICHED"
DLQ_STREAM = "TELEMETRY_DLQ"

RAW_SUBJECTS = "telemetry.raw.v1.>"
ENRICHED_SUBJECTS = "telemetry.enriched.v1.>"
DLQ_SUBJECTS = "telemetry.dlq.v1.>"

# Headers set on pipeline messages.
MSG_ID_HEADER = "Nats-Msg-Id"  # JetStream's deduplication id
TRACEPARENT_HEADER = "traceparent"  # W3C trace context
SCHEMA_HEADER = "Telemetry-Schema"  # fully qualified proto message name of the payload
DLQ_STAGE_HEADER = "Telemetry-Dlq-Stage"  # the stage that gave up on the message
DLQ_REASON_HEADER = "Telemetry-Dlq-Reason"  # why, for people
DLQ_SUBJECT_HEADER = "Telemetry-Dlq-Subject"  # the subject the message came from
DLQ_DELIVERIES_HEADER = "Telemetry-Dlq-Deliveries"  # how often it was delivered
# The message's sequence in the stream it came from (the stream of its source subject).
DLQ_SOURCE_SEQ_HEADER = "Telemetry-Dlq-Source-Seq"
# On a dead letter stored without its payload (too large to fit with the DLQ headers): the
# size of the payload left out, in bytes. The original is still in its source stream, at
# Telemetry-Dlq-Source-Seq, until the stream's max age removes it.
DLQ_OMITTED_BYTES_HEADER = "Telemetry-Dlq-Omitted-Bytes"
# On a replayed message, the DLQ entry it came from; passed on by the enricher, so that a
# replayed raw message whose events the indexer rejects still names it.
DLQ_REPLAY_OF_HEADER = "Telemetry-Dlq-Replay-Of"

RAW_SCHEMA = "telemetry.v1.RawBatch"
ENRICHED_SCHEMA = "telemetry.v1.EnrichedBatch"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_token(token: str) -> bool:
    """True when `token` can be one subject token (an app id or a stage name)."""
    return bool(_TOKEN.fullmatch(token))


def _token(token: str) -> str:
    if not valid_token(token):
        raise ValueError(f"not a valid subject token: {token!r}")
    return token


def raw_subject(app_id: str) -> str:
    """The subject raw batches of app `app_id` are published on."""
    return f"telemetry.raw.v1.{_token(app_id)}"


def enriched_subject(app_id: str) -> str:
    """The subject enriched batches of app `app_id` are published on."""
    return f"telemetry.enriched.v1.{_token(app_id)}"


def dlq_subject(stage: str) -> str:
    """The subject messages a stage gives up on are published on."""
    return f"telemetry.dlq.v1.{_token(stage)}"


def app_of(subject: str) -> str:
    """The app id at the end of a raw or enriched subject."""
    return subject.rsplit(".", 1)[-1]


def digest(data: bytes) -> str:
    """`sha256-<hex>` of `data`: what names a message that has no id of its own."""
    return "sha256-" + hashlib.sha256(data).hexdigest()


# A message id longer than this is named in a dead letter's id by its hash.
_DEAD_LETTER_ID_MSG_ID_CHARS = 128


def dead_letter_id(*, stream_seq: int, msg_id: str, data: bytes) -> str:
    """What names the dead letter of one stream message (the DLQ's Nats-Msg-Id after
    `dlq:<stage>:`), from its sequence in its stream and its own Nats-Msg-Id (`msg_id`; the
    digest of its bytes `data` when it has none).

    The same on every redelivery, so a message dead-lettered again is dropped as a
    duplicate; not the sequence alone, so that a new message of a stream made anew (its
    sequences start at 1 again) within the DLQ's duplicate window is not taken for an
    earlier one, dropped, and lost.
    """
    if not msg_id:
        return f"{stream_seq}:{digest(data)}"
    if len(msg_id) > _DEAD_LETTER_ID_MSG_ID_CHARS:
        msg_id = digest(msg_id.encode())
    return f"{stream_seq}:{msg_id}"
