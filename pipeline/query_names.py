"""The names people and JSON clients use for QueryService's enums, and its one trailer.

One table for the gateway's JSON routes (`group_by=`, `interval=`) and the `tpipe`
command line (`--by`, `--interval`), so both accept the same words.
"""

from __future__ import annotations

from telemetry.v1 import query_service_pb2

GROUP_BY: dict[str, query_service_pb2.AggregationField.ValueType] = {
    "event_name": query_service_pb2.AGGREGATION_FIELD_EVENT_NAME,
    "user_id": query_service_pb2.AGGREGATION_FIELD_USER_ID,
    "session_id": query_service_pb2.AGGREGATION_FIELD_SESSION_ID,
    "app_version": query_service_pb2.AGGREGATION_FIELD_APP_VERSION,
    "device_os": query_service_pb2.AGGREGATION_FIELD_DEVICE_OS,
    "os_name": query_service_pb2.AGGREGATION_FIELD_OS_NAME,
    "country": query_service_pb2.AGGREGATION_FIELD_GEO_COUNTRY,
    "app_id": query_service_pb2.AGGREGATION_FIELD_APP_ID,
}

INTERVALS: dict[str, query_service_pb2.HistogramInterval.ValueType] = {
    "minute": query_service_pb2.HISTOGRAM_INTERVAL_MINUTE,
    "hour": query_service_pb2.HISTOGRAM_INTERVAL_HOUR,
    "day": query_service_pb2.HISTOGRAM_INTERVAL_DAY,
}

# Trailing metadata on the UNAVAILABLE a QueryService answers when part of the event store
# did not answer and the caller did not set return_partial_success: its details are meant for
# the caller (which indices, what to do), unlike those of a transport failure.
PARTIAL_ANSWER_TRAILER = "telemetry-partial-answer"

# Trailing metadata on the UNAVAILABLE a QueryService answers when the event store did not
# answer at all: its details too are meant for the caller (try again later), unlike those of a
# channel that reached no QueryService ("failed to connect to all addresses; ...").
STORE_UNAVAILABLE_TRAILER = "telemetry-event-store"
