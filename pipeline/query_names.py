"""The names people and JSON clients use for QueryService's enums.

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
