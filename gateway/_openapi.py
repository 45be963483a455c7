"""The OpenAPI 3.1 document of the gateway's HTTP routes (hand-written, checked by a test)."""

from __future__ import annotations

from typing import Any

from gateway import _query
from gateway._clientinfo import REQUEST_ID
from pipeline.query_names import GROUP_BY, INTERVALS

_REASONS = [
    "REJECTION_REASON_NOT_AN_OBJECT",
    "REJECTION_REASON_MISSING_FIELD",
    "REJECTION_REASON_INVALID_TYPE",
    "REJECTION_REASON_FIELD_TOO_LONG",
    "REJECTION_REASON_INVALID_TIMESTAMP",
    "REJECTION_REASON_INVALID_METADATA",
    "REJECTION_REASON_METADATA_TOO_LARGE",
    "REJECTION_REASON_DUPLICATE_EVENT_ID",
    "REJECTION_REASON_INVALID_EVENT_ID",
    "REJECTION_REASON_EVENT_TOO_LARGE",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *, retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if retry:
        answer["headers"] = {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        }
    return answer


_AUTH_ERRORS = {
    "401": {
        **_error("no key, or an unknown key"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string", "enum": ["Bearer"]}}},
    },
    "403": _error("a key of the other kind (write vs read)"),
}

_UNREACHABLE = {
    "type": "array",
    "items": {"type": "string"},
    "description": "the daily indices that did not answer: matching events in them are "
    "missing from this answer (present only when return_partial_success=true let it through)",
}


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema whose properties are all present."""
    return {"type": "object", "required": list(properties), "properties": properties}


_TIME = {"type": "string", "format": "date-time"}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time", "description": "null when unset"}
_TEXT = {"type": "string"}
# GET /v1/events: one enriched event, with the index's field names (gateway/_query.py).
_EVENT_FIELDS: dict[str, Any] = {
    "event_id": _TEXT,
    "session_id": _TEXT,
    "user_id": _TEXT,
    "event_name": _TEXT,
    "client_timestamp": _MAYBE_TIME,
    "app_version": _TEXT,
    "device_os": _TEXT,
    "metadata": {"type": "object", "additionalProperties": _TEXT},
    "ingestion_timestamp": {**_MAYBE_TIME, "description": "when the gateway received it"},
    "enriched_at": _MAYBE_TIME,
    "corrected_timestamp": {**_MAYBE_TIME, "description": "client time corrected for skew"},
    "clock_skew_ms": {"type": "integer"},
    "clock_status": {
        "type": ["string", "integer"],
        "description": "a CLOCK_STATUS_* name; a number for a status this gateway does not know",
    },
    "geo_country": _TEXT,
    "geo_city": _TEXT,
    "os_name": _TEXT,
    "os_version": _TEXT,
    "event_message": _TEXT,
    "app_id": _TEXT,
    "request_id": _TEXT,
}

_SCHEMAS: dict[str, Any] = {
    "Event": {
        "type": "object",
        "required": ["event_id", "session_id", "user_id", "event_name", "client_timestamp"],
        "properties": {
            "event_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]*$"},
            "session_id": {"type": "string"},
            "user_id": {"type": "string"},
            "event_name": {"type": "string"},
            "client_timestamp": {"type": "string", "format": "date-time"},
            "app_version": {"type": "string"},
            "device_os": {"type": "string"},
            "metadata": {
                "type": "object",
                "description": "numbers and booleans are stored as strings; "
                "nested values and null reject the event",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
        },
    },
    "Batch": {
        "oneOf": [
            {"type": "array", "items": _ref("Event"), "minItems": 1},
            {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "sent_at": {"type": "string", "format": "date-time"},
                    "events": {"type": "array", "items": _ref("Event"), "minItems": 1},
                },
            },
        ]
    },
    "Receipt": {
        "type": "object",
        "required": ["accepted", "rejected", "duplicate", "batch_id"],
        "properties": {
            "accepted": {"type": "integer", "description": "events made durable"},
            "rejected": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "event_id", "reason", "detail"],
                    "properties": {
                        "index": {"type": "integer"},
                        "event_id": {"type": "string"},
                        "reason": {"type": "string", "enum": _REASONS},
                        "detail": {"type": "string"},
                    },
                },
            },
            "duplicate": {
                "type": "boolean",
                "description": "true when the batch had been stored before (a retry)",
            },
            "batch_id": {
                "type": "string",
                "description": "the id the batch is stored under; empty when no event was"
                " accepted (nothing is stored)",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "Connect/gRPC code name"},
            "message": {"type": "string"},
        },
    },
    "EnrichedEvent": {
        "type": "object",
        "required": list(_EVENT_FIELDS),
        "properties": _EVENT_FIELDS,
    },
    "Events": {
        "type": "object",
        "required": ["events", "next_page_token", "total_size"],
        "properties": {
            "events": {"type": "array", "items": _ref("EnrichedEvent")},
            "next_page_token": {"type": "string"},
            "total_size": {"type": "integer"},
            "unreachable": _UNREACHABLE,
        },
    },
    "Aggregate": {
        "type": "object",
        "required": ["total_count", "counts", "count_error_upper_bound", "histogram"],
        "properties": {
            "total_count": {"type": "integer"},
            "counts": {
                "type": "array",
                "description": "the most frequent values of group_by, most frequent first",
                "items": _object(value={"type": "string"}, count={"type": "integer"}),
            },
            "count_error_upper_bound": {
                "type": "integer",
                "description": "0: counts are exact; otherwise each may be short by up to this",
            },
            "histogram": {
                "type": "array",
                "items": _object(start_time=_TIME, count={"type": "integer"}),
            },
            "unreachable": _UNREACHABLE,
        },
    },
}


def _param(
    name: str, kind: dict[str, Any], description: str, *, repeat: bool = False
) -> dict[str, Any]:
    schema = {"type": "array", "items": kind} if repeat else kind
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
        "explode": True,
    }


# What each filter parameter matches; every one may be given more than once (_FILTER_REPEAT).
_FILTERS = {
    "user_id": "events of this user_id, matched exactly (case included)",
    "session_id": "events of this session_id, matched exactly (case included)",
    "event_name": "events with this event_name, matched exactly (case included)",
    "app_version": "events with this app_version, matched exactly (case included)",
    "device_os": 'events with this device_os, or with this OS name alone ("iOS" matches '
    '"iOS 17.2"), matched exactly (case included)',
    "country": "events whose client address the enricher placed in this country, its ISO "
    "3166-1 alpha-2 code in capitals (GB)",
    "app_id": "events ingested for this app, the app of the write key that sent them",
}
_FILTER_REPEAT = (
    "; given more than once, events with any of the values (at most 1,000 values, each of at "
    f"most {_query.MAX_PARAM_CHARS:,} characters; an empty one is a 400, not any value)"
)
# A time parameter: what it keeps, then how it is written.
_TIME_FORMAT = (
    "an RFC 3339 date-time with its offset (Z or ±hh:mm, a + sent as %2B), in the years "
    "0001-9999 in UTC, compared to the millisecond"
)


def _filter_params() -> list[dict[str, Any]]:
    params = [
        _param(name, {"type": "string"}, _FILTERS[name] + _FILTER_REPEAT, repeat=True)
        for name in _query.FILTER_PARAMS
    ]
    params.append(
        _param(
            "start",
            {"type": "string", "format": "date-time"},
            "events whose corrected timestamp is at or after this: " + _TIME_FORMAT,
        )
    )
    params.append(
        _param(
            "end",
            {"type": "string", "format": "date-time"},
            "events whose corrected timestamp is before this, which must not be before start: "
            + _TIME_FORMAT,
        )
    )
    params.append(
        _param(
            "q",
            {"type": "string"},
            "free text: whole words, all of which must match, in any case, in the event name and "
            "the metadata keys and values as one text, keys in sorted order, up to its first "
            "ENRICHER_EVENT_MESSAGE_MAX_CHARS characters (4,096 by default): no word past them "
            "is found; a word they split is left out whole, unless it is the text's first, "
            f"which is cut. At most {_query.MAX_TEXT_CHARS:,} characters (a longer one is a 400); "
            "text with no word to search for, punctuation or symbols alone (#!? or →), is a 400, "
            "not a search that matches nothing; an emoji is a word (q=🎉 finds the events whose "
            "text holds it)",
        )
    )
    return params


def _query_errors() -> dict[str, Any]:
    return {
        "400": _error("a bad parameter (or INVALID_ARGUMENT from the query service)"),
        **_AUTH_ERRORS,
        "429": _error(
            "this key's reader is past its request rate, or the query service is answering"
            " as many queries as it allows (RESOURCE_EXHAUSTED)",
            retry=True,
        ),
        "500": _error("the query service failed (INTERNAL, UNKNOWN or DATA_LOSS)"),
        "503": _error(
            "the query service is unavailable (`the query service is unavailable`: the gateway"
            " cannot reach it), or the event store behind it is (the query service's message),"
            " or part of the event store did not answer (the message names it;"
            " return_partial_success=true accepts what the rest holds)",
            retry=True,
        ),
        "504": _error("the query service missed its deadline"),
    }


_PARTIAL_PARAM = _param(
    "return_partial_success",
    {"type": "boolean", "default": False},
    "true: when part of the event store does not answer, answer from the rest and name the "
    "missing daily indices in `unreachable`; false (or absent; empty is a 400): answer 503 "
    "instead",
)


def _ops(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}}


# Every answer carries X-Request-Id: the client's own when it sent a sane one, else a new one.
REQUEST_ID_PATTERN = f"^{REQUEST_ID.pattern}$"
_REQUEST_ID_PARAM = {
    "name": "X-Request-Id",
    "in": "header",
    "description": "your id for this request, echoed in the answer and logged; "
    "one that does not match the pattern is replaced by a new id",
    "schema": {"type": "string"},
}
_REQUEST_ID_HEADER = {
    "description": "the request's id: the one sent, or a new one",
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}
_DESCRIPTION = (
    "Every answer, error or not, carries `X-Request-Id`. Errors are JSON "
    '`{"code", "message"}` with a Connect/gRPC code name, also for a path that does not exist '
    "(404, `not_found`; a trailing slash, `/v1/events/`, makes another path, never a redirect)"
    " and a method a path does not take (405, `unimplemented`, with `Allow`)."
)


def _with_request_ids(paths: dict[str, Any]) -> dict[str, Any]:
    """`paths` with the X-Request-Id parameter and response header on every operation."""
    out: dict[str, Any] = {}
    for path, item in paths.items():
        out[path] = {}
        for method, operation in item.items():
            params = operation.get("parameters", [])
            if not any(p["name"] == "X-Request-Id" for p in params):
                params = [*params, _REQUEST_ID_PARAM]
            responses = {
                status: {
                    **response,
                    "headers": {**response.get("headers", {}), "X-Request-Id": _REQUEST_ID_HEADER},
                }
                for status, response in operation["responses"].items()
            }
            out[path][method] = {**operation, "parameters": params, "responses": responses}
    return out


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    write: list[dict[str, list[str]]] = [{"writeKey": []}, {"writeKeyHeader": []}]
    read: list[dict[str, list[str]]] = [{"readKey": []}, {"readKeyHeader": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telemetry gateway", "version": "1", "description": _DESCRIPTION},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "bearer"},
                "writeKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "readKey": {"type": "http", "scheme": "bearer"},
                "readKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
        "paths": _with_request_ids(
            {
                "/v1/track": {
                    "post": {
                        "summary": "Ingest a batch of events; 202 once durable in JetStream",
                        "security": write,
                        "parameters": [
                            {
                                "name": "Idempotency-Key",
                                "in": "header",
                                "description": "your batch id: a retry under it is stored once",
                                "schema": {"type": "string", "maxLength": 256},
                            },
                        ],
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref("Batch")}},
                        },
                        "responses": {
                            "202": {
                                "description": "receipt; a batch where every event is invalid "
                                "also gets 202 with accepted 0 (do not retry it)",
                                "content": {"application/json": {"schema": _ref("Receipt")}},
                            },
                            "400": _error(
                                "not JSON, not a batch, empty; a bad sent_at, a gzip body that "
                                "is broken or of more than 32 members, or a bad Idempotency-Key"
                            ),
                            **_AUTH_ERRORS,
                            "413": _error(
                                "body, decompressed body, event count or JSON values (more "
                                "than a batch of the largest events holds) past a limit"
                            ),
                            "415": _error("unsupported Content-Type or Content-Encoding"),
                            "429": _error(
                                "too many requests or bytes in flight, "
                                "or this key's app is past its rate",
                                retry=True,
                            ),
                            "503": _error(
                                "the broker is down or slow; not accepted, retry with the same "
                                "Idempotency-Key. A batch the broker did not confirm in time "
                                "may be stored all the same, and a large one split into "
                                "several messages may be stored in part (the message says "
                                "which): its retry answers duplicate: true, or stores the rest",
                                retry=True,
                            ),
                        },
                    }
                },
                "/telemetry.v1.IngestService/IngestEvents": {
                    "post": {
                        "summary": "IngestService.IngestEvents over the Connect protocol",
                        "security": write,
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "application/proto": {"schema": {}},
                            },
                        },
                        "responses": {
                            "200": {"description": "IngestEventsResponse"},
                            "400": _error("invalid_argument"),
                            **_AUTH_ERRORS,
                            "415": _error("unsupported Content-Type"),
                            "429": _error("resource_exhausted", retry=True),
                            "503": _error("unavailable", retry=True),
                        },
                    }
                },
                "/v1/events": {
                    "get": {
                        "summary": "List events, newest first (QueryService.QueryEvents)",
                        "security": read,
                        "parameters": [
                            *_filter_params(),
                            _param(
                                "page_size",
                                {"type": "integer"},
                                "the most events in the page: absent or 0 means 50, more than "
                                "1000 is taken as 1000, a negative number or an empty value is a "
                                "400; a page too large for one 4 MiB gRPC message holds fewer",
                            ),
                            _param(
                                "page_token",
                                {"type": "string"},
                                "the next_page_token of the page before, for the next one; "
                                "absent for the first page (empty is a 400); a token that is not "
                                "one, or that was made for other filter parameters, is a 400",
                            ),
                            _PARTIAL_PARAM,
                        ],
                        "responses": {
                            "200": {
                                "description": "one page",
                                "content": {"application/json": {"schema": _ref("Events")}},
                            },
                            **_query_errors(),
                        },
                    }
                },
                "/v1/events/aggregate": {
                    "get": {
                        "summary": "Count events by a field and over time (AggregateEvents)",
                        "security": read,
                        "parameters": [
                            *_filter_params(),
                            _param(
                                "group_by",
                                {"type": "string", "enum": list(GROUP_BY)},
                                "the field to count events by, in `counts`; absent for no "
                                "counts by field (empty is a 400)",
                            ),
                            _param(
                                "interval",
                                {"type": "string", "enum": list(INTERVALS)},
                                "the width of the `histogram` buckets over the corrected "
                                "timestamp: UTC minutes, hours or days, whatever the offset of "
                                "start and end (a day starts at 00:00 UTC); absent for no "
                                "histogram (empty is a 400)",
                            ),
                            _param(
                                "limit",
                                {"type": "integer"},
                                "how many of the most frequent values of group_by `counts` lists: "
                                "absent or 0 means 10, more than 1000 is taken as 1000, a "
                                "negative number or an empty value is a 400",
                            ),
                            _PARTIAL_PARAM,
                        ],
                        "responses": {
                            "200": {
                                "description": "counts",
                                "content": {"application/json": {"schema": _ref("Aggregate")}},
                            },
                            **_query_errors(),
                        },
                    }
                },
                "/openapi.json": _ops("this document"),
                "/healthz": _ops("liveness"),
                "/readyz": {
                    "get": {
                        "summary": "readiness: NATS connected and streams present",
                        "responses": {
                            "200": {"description": "ready"},
                            "503": {"description": "not"},
                        },
                    }
                },
                "/metrics": _ops("Prometheus metrics"),
            }
        ),
    }
