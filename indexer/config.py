"""The indexer's settings: NATS and OpenSearch (shared) plus its own, prefixed INDEXER_."""

from __future__ import annotations

import re
from dataclasses import dataclass

from indexer.documents import DEFAULT_FUTURE_DAYS, DEFAULT_PAST_DAYS, DatedWindow
from indexer.template import DEFAULT_REFRESH_INTERVAL
from pipeline.config import non_negative, port, positive, setting
from pipeline.errors import ConfigError
from pipeline.settings import (
    NatsSettings,
    OpenSearchSettings,
    TracingSettings,
    nats_duration,
)

DEFAULT_INDEX_PREFIX = "telemetry-"
DEFAULT_INDEX_SHARDS = 1
DEFAULT_INDEX_REPLICAS = 0
DEFAULT_TEMPLATE_PRIORITY = 200
DEFAULT_CONSUMER_NAME = "indexer"
DEFAULT_FETCH_BATCH = 200  # messages per pull request
DEFAULT_MAX_ACK_PENDING = 1000  # messages delivered but not yet acked
DEFAULT_ACK_WAIT_S = 30.0
DEFAULT_MAX_DELIVERIES = 10
DEFAULT_BULK_MAX_DOCS = 1000
DEFAULT_BULK_MAX_BYTES = 5 * 1024 * 1024
# OpenSearch's default http.max_content_length: a larger body is refused (413) whole.
MAX_BULK_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_FLUSH_INTERVAL_S = 0.2
DEFAULT_BULK_CONCURRENCY = 4  # bulk requests in flight
DEFAULT_RETRY_BASE_S = 0.2
DEFAULT_RETRY_MAX_S = 10.0
DEFAULT_RETENTION_DAYS = 30  # 0 keeps indices forever
MAX_RETENTION_DAYS = 36_500  # a century; past that, 0 (forever) says it
DEFAULT_RETENTION_INTERVAL_S = 3600.0
DEFAULT_PENDING_REFRESH_S = 5.0
DEFAULT_GRACEFUL_STOP_S = 20.0
DEFAULT_GRPC_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 50053
DEFAULT_QUERY_MAX_IN_FLIGHT = 64  # QueryService calls served at once
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8082

# OpenSearch index names: lowercase, no spaces or \/*?"<>|,#: and not starting with -_+.
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,100}$")
# The template and searches cover <prefix>*: without a separator at its end, a prefix
# such as `telemetry` would take in `telemetrylogs-...`, someone else's indices.
_PREFIX_ENDS = ("-", "_", ".")


def _index_prefix(value: str) -> str | None:
    if not _PREFIX.fullmatch(value):
        return "must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    if not value.endswith(_PREFIX_ENDS):
        return "must end with '-', '_' or '.' (e.g. telemetry-), so <prefix>* matches only its own"
    return None


_TIME_VALUE = re.compile(r"^(-1|[1-9][0-9]{0,6}(nanos|micros|ms|s|m|h|d))$")


def _time_value(value: str) -> str | None:
    if not _TIME_VALUE.fullmatch(value):
        return "must be a positive OpenSearch time value such as 200ms, 1s or 1m, or -1 for off"
    return None


def _retention_days(value: int) -> str | None:
    if not 0 <= value <= MAX_RETENTION_DAYS:
        return f"must be between 0 (keep forever) and {MAX_RETENTION_DAYS}"
    return None


def _window_days(value: int) -> str | None:
    if not 0 <= value <= MAX_RETENTION_DAYS:
        return f"must be between 0 and {MAX_RETENTION_DAYS}"
    return None


def _bulk_max_bytes(value: int) -> str | None:
    if not 0 < value <= MAX_BULK_MAX_BYTES:
        return (
            f"must be between 1 and {MAX_BULK_MAX_BYTES} (100 MiB, OpenSearch's default"
            " http.max_content_length; larger requests are refused)"
        )
    return None


def _consumer_name(value: str) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value)
    return None if ok else "must be 1-64 letters, digits, '_' or '-'"


@dataclass(frozen=True)
class Config(NatsSettings, OpenSearchSettings, TracingSettings):
    """Everything the indexer reads from its environment."""

    index_prefix: str = setting(
        "INDEXER_INDEX_PREFIX",
        DEFAULT_INDEX_PREFIX,
        "prefix of the daily indices, ending with '-', '_' or '.'; the index template"
        " matches <prefix>*",
        check=_index_prefix,
    )
    index_shards: int = setting(
        "INDEXER_INDEX_SHARDS", DEFAULT_INDEX_SHARDS, "primary shards per index", check=positive
    )
    index_replicas: int = setting(
        "INDEXER_INDEX_REPLICAS",
        DEFAULT_INDEX_REPLICAS,
        "replicas per shard (0 on a single node keeps the cluster green)",
        check=non_negative,
    )
    refresh_interval: str = setting(
        "INDEXER_REFRESH_INTERVAL",
        DEFAULT_REFRESH_INTERVAL,
        "how often OpenSearch makes new documents searchable (a time value such as 200ms or"
        " 1s; -1 turns periodic refresh off); applied to existing indices when it changes",
        check=_time_value,
    )
    template_priority: int = setting(
        "INDEXER_TEMPLATE_PRIORITY",
        DEFAULT_TEMPLATE_PRIORITY,
        "priority of the index template",
        check=non_negative,
    )
    consumer_name: str = setting(
        "INDEXER_CONSUMER_NAME",
        DEFAULT_CONSUMER_NAME,
        "durable JetStream consumer name",
        check=_consumer_name,
    )
    fetch_batch: int = setting(
        "INDEXER_FETCH_BATCH", DEFAULT_FETCH_BATCH, "messages per pull request", check=positive
    )
    max_ack_pending: int = setting(
        "INDEXER_MAX_ACK_PENDING",
        DEFAULT_MAX_ACK_PENDING,
        "messages delivered and not yet acked, at most",
        check=positive,
    )
    ack_wait_s: float = setting(
        "INDEXER_ACK_WAIT_S",
        DEFAULT_ACK_WAIT_S,
        "seconds before JetStream redelivers an unacked message (extended while in progress)",
        check=nats_duration,
    )
    max_deliveries: int = setting(
        "INDEXER_MAX_DELIVERIES",
        DEFAULT_MAX_DELIVERIES,
        "deliveries of one message before it goes to the DLQ",
        check=positive,
    )
    bulk_max_docs: int = setting(
        "INDEXER_BULK_MAX_DOCS", DEFAULT_BULK_MAX_DOCS, "documents per bulk request", check=positive
    )
    bulk_max_bytes: int = setting(
        "INDEXER_BULK_MAX_BYTES",
        DEFAULT_BULK_MAX_BYTES,
        "bytes per bulk request body, at most 104857600 (100 MiB, OpenSearch's default"
        " http.max_content_length)",
        check=_bulk_max_bytes,
    )
    flush_interval_s: float = setting(
        "INDEXER_FLUSH_INTERVAL_S",
        DEFAULT_FLUSH_INTERVAL_S,
        "seconds a partial bulk request waits before it is sent",
        check=positive,
    )
    bulk_concurrency: int = setting(
        "INDEXER_BULK_CONCURRENCY",
        DEFAULT_BULK_CONCURRENCY,
        "bulk requests in flight",
        check=positive,
    )
    retry_base_s: float = setting(
        "INDEXER_RETRY_BASE_S",
        DEFAULT_RETRY_BASE_S,
        "seconds before the first retry of a failed bulk item (at most INDEXER_RETRY_MAX_S)",
        check=positive,
    )
    retry_max_s: float = setting(
        "INDEXER_RETRY_MAX_S",
        DEFAULT_RETRY_MAX_S,
        "longest wait between retries, in seconds",
        check=positive,
    )
    retention_days: int = setting(
        "INDEXER_RETENTION_DAYS",
        DEFAULT_RETENTION_DAYS,
        "full days a daily index is kept after its day ends, and after the day it was created"
        " (deleted on the day after both; 0 keeps indices forever)",
        check=_retention_days,
    )
    dated_past_days: int = setting(
        "INDEXER_DATED_PAST_DAYS",
        DEFAULT_PAST_DAYS,
        "days before the UTC day an event arrived that its client day may lie and still get a"
        " daily index; an older one goes to <prefix>undated (bounds how many indices clients"
        " can make)",
        check=_window_days,
    )
    dated_future_days: int = setting(
        "INDEXER_DATED_FUTURE_DAYS",
        DEFAULT_FUTURE_DAYS,
        "days after the UTC day an event arrived that its client day may lie and still get a"
        " daily index; a later one goes to <prefix>undated",
        check=_window_days,
    )
    retention_interval_s: float = setting(
        "INDEXER_RETENTION_INTERVAL_S",
        DEFAULT_RETENTION_INTERVAL_S,
        "seconds between retention runs",
        check=positive,
    )
    pending_refresh_s: float = setting(
        "INDEXER_PENDING_REFRESH_S",
        DEFAULT_PENDING_REFRESH_S,
        "seconds between refreshes of the consumer_pending metric",
        check=positive,
    )
    graceful_stop_s: float = setting(
        "INDEXER_GRACEFUL_STOP_S",
        DEFAULT_GRACEFUL_STOP_S,
        "seconds a graceful stop may take, all of it: in-flight events get what is left to"
        " be indexed and acked (the messages left are nak'd, for redelivery at once), then"
        " the servers' grace and the NATS drain (at least 1 s each)",
        check=positive,
    )
    grpc_host: str = setting(
        "INDEXER_GRPC_HOST", DEFAULT_GRPC_HOST, "address QueryService listens on"
    )
    grpc_port: int = setting(
        "INDEXER_GRPC_PORT", DEFAULT_GRPC_PORT, "port QueryService listens on", check=port
    )
    query_max_in_flight: int = setting(
        "INDEXER_QUERY_MAX_IN_FLIGHT",
        DEFAULT_QUERY_MAX_IN_FLIGHT,
        "QueryService calls served at once, each with a connection to OpenSearch of its own"
        " (apart from the bulk requests'); more are answered RESOURCE_EXHAUSTED, a 429 at the"
        " gateway",
        check=positive,
    )
    http_host: str = setting(
        "INDEXER_HTTP_HOST", DEFAULT_HTTP_HOST, "address of /healthz, /readyz and /metrics"
    )
    http_port: int = setting(
        "INDEXER_HTTP_PORT", DEFAULT_HTTP_PORT, "port of /healthz, /readyz and /metrics", check=port
    )

    @property
    def dated_window(self) -> DatedWindow:
        """The client days that get a daily index, around each event's arrival."""
        return DatedWindow(self.dated_past_days, self.dated_future_days)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retry_base_s > self.retry_max_s:
            raise ConfigError(
                f"INDEXER_RETRY_BASE_S={self.retry_base_s!r}: "
                f"must not exceed INDEXER_RETRY_MAX_S ({self.retry_max_s!r})"
            )
