"""The enricher's own metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from enricher._enrich import REASON_TOO_LARGE
from enricher._policy import REASON_MAX_DELIVERIES
from enricher._raw import (
    REASON_EMPTY_BATCH,
    REASON_INVALID_APP_ID,
    REASON_TOO_MANY_EVENTS,
    REASON_UNDECODABLE,
    REASON_WRONG_SCHEMA,
)

OUTCOME_ENRICHED = "enriched"
OUTCOME_DEAD_LETTERED = "dead_lettered"
OUTCOME_RETRIED = "retried"
# enricher_dlq_total's reasons: every reason a raw message is dead-lettered for.
DLQ_REASONS = (
    REASON_UNDECODABLE,
    REASON_WRONG_SCHEMA,
    REASON_EMPTY_BATCH,
    REASON_TOO_MANY_EVENTS,
    REASON_INVALID_APP_ID,
    REASON_TOO_LARGE,
    REASON_MAX_DELIVERIES,
)

_BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters for messages, events and dead letters; batch latency; consumer lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.messages = Counter(
            "enricher_messages",
            "Raw messages handled, by outcome (enriched, dead_lettered, retried: nak'ed, or "
            "held while NATS does not take its publish, once per delivery)",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "enricher_events",
            "Events enriched and published, once each (a redelivery's events, which JetStream"
            " drops as duplicates, are not counted again)",
            registry=self.registry,
        )
        self.dlq = Counter(
            "enricher_dlq",
            "Raw messages sent to the dead-letter stream, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.dlq_refused = Counter(
            "enricher_dlq_refused",
            "Raw messages terminated without a dead letter: the DLQ refused it for good",
            registry=self.registry,
        )
        self.publish_retries = Counter(
            "enricher_publish_retries",
            "Publishes NATS did not take (enriched batches or dead letters), tried again in place",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "enricher_duplicates",
            "Enriched publishes JetStream dropped as duplicates (redeliveries already published)",
            registry=self.registry,
        )
        self.ack_failures = Counter(
            "enricher_ack_failures",
            "Acks, naks, terms or touches that could not be sent (the broker redelivers)",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "enricher_batch_seconds",
            "Seconds from fetch to ack of one fetched batch of raw messages",
            buckets=_BATCH_BUCKETS_S,
            registry=self.registry,
        )
        self.consumer_pending = Gauge(
            "enricher_consumer_pending",
            "Raw messages not yet delivered to the consumer (lag), refreshed periodically",
            registry=self.registry,
        )
        self.messages_in_progress = Gauge(
            "enricher_messages_in_progress",
            "Raw messages fetched and not yet settled (acked, nak'ed or terminated)",
            registry=self.registry,
        )
        self.messages_held = Gauge(
            "enricher_messages_held",
            "Raw messages kept while NATS does not take their publish (enriched stream or DLQ)",
            registry=self.registry,
        )
        self.event_message_truncated = Counter(
            "enricher_event_message_truncated",
            "Events published, or answered by gRPC EnrichEvents, whose event_message, the text "
            "free-text search matches, was cut (to ENRICHER_EVENT_MESSAGE_MAX_CHARS, or shorter "
            "to fit a NATS message), once each",
            registry=self.registry,
        )
        self.grpc_events = Counter(
            "enricher_grpc_events",
            "Events enriched through gRPC EnrichEvents",
            registry=self.registry,
        )
        # Every series of a known label value exists from the start, at 0: a counter that
        # first appears at 1 has no increase() in Prometheus, and an alert on it would miss
        # the first dead letter after each start.
        for outcome in (OUTCOME_ENRICHED, OUTCOME_DEAD_LETTERED, OUTCOME_RETRIED):
            self.messages.labels(outcome=outcome)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason=reason)
