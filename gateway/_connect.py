"""The Connect protocol (unary) for IngestService on the HTTP port.

POST /telemetry.v1.IngestService/IngestEvents with `application/json` (protobuf JSON
mapping) or `application/proto` (binary). Errors are `{"code", "message"}` with the
HTTP status of the one code table. See https://connectrpc.com/docs/protocol/.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf import json_format
from telemetry.v1 import ingest_service_pb2

from gateway._ingest import check_json_values
from gateway._validate import check_proto_count
from gateway.errors import InvalidRequest, UnsupportedMedia

PATH = "/telemetry.v1.IngestService/IngestEvents"
JSON = "application/json"
PROTO = "application/proto"
PROTOCOL_VERSION = "1"

IngestProto = Callable[
    [ingest_service_pb2.IngestEventsRequest], Awaitable[ingest_service_pb2.IngestEventsResponse]
]


def codec(media: str, protocol_version: str | None) -> str:
    """The codec of a request (JSON or PROTO); raises for other content types."""
    if protocol_version is not None and protocol_version.strip() != PROTOCOL_VERSION:
        raise InvalidRequest(f"Connect-Protocol-Version must be {PROTOCOL_VERSION}")
    if media in (JSON, PROTO):
        return media
    raise UnsupportedMedia("Content-Type must be application/json or application/proto")


def decode(
    body: bytes, media: str, *, most_json_values: int = 0, max_events: int = 0
) -> ingest_service_pb2.IngestEventsRequest:
    """The request message of a body; raises InvalidRequest for one that does not decode,
    and TooLarge for JSON of more than `most_json_values` values or protobuf of more than
    `max_events` events (each when set), before it is parsed."""
    message = ingest_service_pb2.IngestEventsRequest()
    if media == JSON and most_json_values:
        check_json_values(body, most_json_values)
    elif media != JSON and max_events:
        check_proto_count(body, max_events=max_events)
    try:
        if media == JSON:
            json_format.Parse(body.decode("utf-8"), message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(body)
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8 JSON") from None
    except json_format.ParseError as err:  # names the field and what is wrong with it
        raise InvalidRequest(f"the body is not an IngestEventsRequest: {_brief(err)}") from None
    except Exception as err:  # any other decoding failure is the client's mistake too
        raise InvalidRequest(
            f"the body is not an IngestEventsRequest: {type(err).__name__}"
        ) from None
    return message


def _brief(err: Exception, limit: int = 300) -> str:
    text = str(err).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def encode(message: ingest_service_pb2.IngestEventsResponse, media: str) -> bytes:
    """The response body in the request's codec."""
    if media == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()
