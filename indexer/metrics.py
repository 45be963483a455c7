"""The indexer's observability metrics, in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from telemetry.v1 import query_service_pb2

from indexer.outcomes import Outcome

# indexer_dlq_total's reasons: an event OpenSearch refused or that is no document, another
# event under a stored event_id, and the kinds of message dead-lettered whole.
DLQ_REJECTED = "rejected"
DLQ_EVENT_ID_COLLISION = "event_id_collision"
DLQ_UNDECODABLE = "undecodable"
DLQ_EMPTY_BATCH = "empty_batch"
DLQ_MAX_DELIVERIES = "max_deliveries"
DLQ_REASONS = (
    DLQ_REJECTED,
    DLQ_EVENT_ID_COLLISION,
    DLQ_UNDECODABLE,
    DLQ_EMPTY_BATCH,
    DLQ_MAX_DELIVERIES,
)
# indexer_messages_total's outcomes: how a message was settled.
SETTLED_ACKED = "acked"
SETTLED_TERMED = "termed"
SETTLED_NAKKED = "nakked"
SETTLED = (SETTLED_ACKED, SETTLED_TERMED, SETTLED_NAKKED)
_QUERY_METHODS = tuple(
    method.name for method in query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].methods
)

_BULK_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_QUERY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters, gauges and histograms of one indexer instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.documents = Counter(
            "indexer_documents",
            "Documents by write outcome: created, duplicate (already indexed) or rejected.",
            ["outcome"],
            registry=self.registry,
        )
        self.bulk_retries = Counter(
            "indexer_bulk_retries",
            "Documents sent again after a retryable failure (429, 5xx, timeout, no connection).",
            registry=self.registry,
        )
        self.dlq = Counter(
            "indexer_dlq",
            "Messages or events published to the dead-letter stream.",
            ["reason"],
            registry=self.registry,
        )
        self.dlq_refused = Counter(
            "indexer_dlq_refused",
            "Messages terminated, or rejected events dropped, without a dead letter: the DLQ"
            " refused it for good.",
            registry=self.registry,
        )
        self.messages = Counter(
            "indexer_messages",
            "NATS messages by how they were settled: acked, termed or nakked.",
            ["outcome"],
            registry=self.registry,
        )
        self.bulk_seconds = Histogram(
            "indexer_bulk_seconds",
            "Duration of bulk requests, in seconds.",
            buckets=_BULK_BUCKETS_S,
            registry=self.registry,
        )
        self.bulk_in_flight = Gauge(
            "indexer_bulk_requests_in_flight",
            "Bulk requests in flight.",
            registry=self.registry,
        )
        self.intake_held = Gauge(
            "indexer_intake_held",
            "1 while fetching is held because OpenSearch fails whole bulk requests with"
            " retryable errors (429, 5xx, timeout, no connection), else 0.",
            registry=self.registry,
        )
        self.awaiting_retry = Gauge(
            "indexer_documents_awaiting_retry",
            "Documents whose write failed with a retryable error and that are not written yet"
            " (retried after a backoff, for as long as it takes).",
            registry=self.registry,
        )
        self.consumer_pending = Gauge(
            "indexer_consumer_pending",
            "Messages in the stream the consumer has not received yet (lag).",
            registry=self.registry,
        )
        self.messages_in_progress = Gauge(
            "indexer_messages_in_progress",
            "Messages received and not yet settled.",
            registry=self.registry,
        )
        self.query_seconds = Histogram(
            "indexer_query_seconds",
            "Duration of QueryService calls, in seconds.",
            ["method", "code"],
            buckets=_QUERY_BUCKETS_S,
            registry=self.registry,
        )
        self.query_partial = Counter(
            "indexer_query_partial",
            "OpenSearch answers to QueryService without some shards: returned with the indices "
            "named (returned=true, the caller set return_partial_success) or refused UNAVAILABLE.",
            ["method", "returned"],
            registry=self.registry,
        )
        self.retention_deleted = Counter(
            "indexer_retention_deleted_indices",
            "Daily indices deleted by retention.",
            registry=self.registry,
        )
        # Every series of a known label value exists from the start, at 0: a counter that
        # first appears at 1 has no increase() in Prometheus, and an alert on it would miss
        # the first dead letter after each start.
        for outcome in Outcome:
            if outcome.done:
                self.documents.labels(outcome=outcome.value)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason=reason)
        for settled in SETTLED:
            self.messages.labels(outcome=settled)
        for method in _QUERY_METHODS:
            for returned in ("true", "false"):
                self.query_partial.labels(method=method, returned=returned)
