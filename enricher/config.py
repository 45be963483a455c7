"""The enricher's settings: prefix ENRICHER_ (plus the shared NATS_*, LOG_* and OTEL_*)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import non_empty, port, positive, setting
from pipeline.errors import ConfigError
from pipeline.settings import NatsSettings, TracingSettings, nats_duration

DEFAULT_CONSUMER_NAME = "enricher"
DEFAULT_FETCH_BATCH = 32  # messages per fetch
# A fetch returns what it got only when its batch is full or this runs out, so it bounds the
# latency added when traffic is light (measured: 1.0 s added ~1 s to accept -> searchable).
DEFAULT_FETCH_TIMEOUT_S = 0.1
DEFAULT_CONCURRENCY = 2  # fetch loops per process
DEFAULT_MAX_ACK_PENDING = 256  # messages delivered and not yet acked, over all processes
DEFAULT_ACK_WAIT_S = 30.0
DEFAULT_MAX_DELIVER = 5  # failed deliveries before a message goes to the DLQ
DEFAULT_PUBLISH_TIMEOUT_S = 5.0
DEFAULT_NAK_DELAY_S = 1.0  # first redelivery delay; doubles with each delivery
DEFAULT_NAK_MAX_DELAY_S = 60.0
DEFAULT_MAX_CLOCK_SKEW_S = 365 * 24 * 3600.0  # one year
# Below a minute, clocks that are merely a little off (and events a device sent a minute
# late) would be judged absurd; a tiny value would even round to 0 ns.
MIN_MAX_CLOCK_SKEW_S = 60.0
DEFAULT_EVENT_MESSAGE_MAX_CHARS = 4096
# Above the 139,648 characters the gateway's default limits let into one text (its event name
# and metadata); a text too large for its NATS message is cut to fit all the same.
MAX_EVENT_MESSAGE_MAX_CHARS = 262_144
# Events per raw message: the gateway's GATEWAY_MAX_EVENTS_PER_BATCH default.
DEFAULT_MAX_EVENTS_PER_MESSAGE = 1000
DEFAULT_LAG_REFRESH_S = 5.0
DEFAULT_GRPC_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 50052
DEFAULT_GRPC_MAX_EVENTS = 10_000  # events per EnrichEvents request
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8081
DEFAULT_STOP_TIMEOUT_S = 20.0

_CONSUMER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _consumer_name(value: str) -> str | None:
    if not value or not set(value) <= _CONSUMER_NAME_CHARS:
        return "must be letters, digits, '_' or '-'"
    return None


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be 1 or greater"


def _at_least_a_minute(value: float) -> str | None:
    return None if value >= MIN_MAX_CLOCK_SKEW_S else f"must be at least {MIN_MAX_CLOCK_SKEW_S:g}"


def _event_message_max_chars(value: int) -> str | None:
    if not 1 <= value <= MAX_EVENT_MESSAGE_MAX_CHARS:
        return (
            f"must be between 1 and {MAX_EVENT_MESSAGE_MAX_CHARS} (more than the gateway's default"
            " limits let into one text)"
        )
    return None


@dataclass(frozen=True)
class Config(NatsSettings, TracingSettings):
    """Everything the enricher reads from its environment."""

    consumer_name: str = setting(
        "ENRICHER_CONSUMER_NAME",
        DEFAULT_CONSUMER_NAME,
        "durable consumer on TELEMETRY_RAW shared by all enricher processes",
        check=_consumer_name,
    )
    fetch_batch: int = setting(
        "ENRICHER_FETCH_BATCH", DEFAULT_FETCH_BATCH, "raw messages per fetch", check=_at_least_one
    )
    fetch_timeout_s: float = setting(
        "ENRICHER_FETCH_TIMEOUT_S",
        DEFAULT_FETCH_TIMEOUT_S,
        "seconds one fetch waits for messages (also bounds how long stop waits)",
        check=nats_duration,
    )
    concurrency: int = setting(
        "ENRICHER_CONCURRENCY",
        DEFAULT_CONCURRENCY,
        "fetch loops per process (messages in flight = concurrency x fetch batch)",
        check=_at_least_one,
    )
    max_ack_pending: int = setting(
        "ENRICHER_MAX_ACK_PENDING",
        DEFAULT_MAX_ACK_PENDING,
        "raw messages delivered and not yet acked, over all enricher processes (at least "
        "ENRICHER_CONCURRENCY x ENRICHER_FETCH_BATCH)",
        check=_at_least_one,
    )
    ack_wait_s: float = setting(
        "ENRICHER_ACK_WAIT_S",
        DEFAULT_ACK_WAIT_S,
        "seconds before an unacked raw message is redelivered (at least twice "
        "ENRICHER_PUBLISH_TIMEOUT_S)",
        check=nats_duration,
    )
    max_deliver: int = setting(
        "ENRICHER_MAX_DELIVER",
        DEFAULT_MAX_DELIVER,
        "failed deliveries of a raw message before it goes to the DLQ (publishes NATS did "
        "not take are tried again in place and spend none; a message redelivered past it, "
        "e.g. given back by restarts, is still tried, up to four times it)",
        check=_at_least_one,
    )
    publish_timeout_s: float = setting(
        "ENRICHER_PUBLISH_TIMEOUT_S",
        DEFAULT_PUBLISH_TIMEOUT_S,
        "seconds to wait for JetStream to ack a publish",
        check=positive,
    )
    nak_delay_s: float = setting(
        "ENRICHER_NAK_DELAY_S",
        DEFAULT_NAK_DELAY_S,
        "seconds before a failed message is tried again (a publish NATS did not take: in "
        "place, the message kept; any other failure: redelivered); doubles each time",
        check=nats_duration,
    )
    nak_max_delay_s: float = setting(
        "ENRICHER_NAK_MAX_DELAY_S",
        DEFAULT_NAK_MAX_DELAY_S,
        "longest delay before a failed message is tried again, seconds (at least "
        "ENRICHER_NAK_DELAY_S)",
        check=nats_duration,
    )
    max_events_per_message: int = setting(
        "ENRICHER_MAX_EVENTS_PER_MESSAGE",
        DEFAULT_MAX_EVENTS_PER_MESSAGE,
        "events per raw message at most; a message with more goes to the DLQ (keep it at "
        "least GATEWAY_MAX_EVENTS_PER_BATCH)",
        check=_at_least_one,
    )
    max_clock_skew_s: float = setting(
        "ENRICHER_MAX_CLOCK_SKEW_S",
        DEFAULT_MAX_CLOCK_SKEW_S,
        "seconds of clock skew or correction beyond which a timestamp is absurd (at least 60)",
        check=_at_least_a_minute,
    )
    geoip_db: str = setting(
        "ENRICHER_GEOIP_DB",
        "",
        "path of a MaxMind-format database (country+city); empty uses the embedded country table",
    )
    event_message_max_chars: int = setting(
        "ENRICHER_EVENT_MESSAGE_MAX_CHARS",
        DEFAULT_EVENT_MESSAGE_MAX_CHARS,
        "characters of event_message at most: the one text free-text search matches, the "
        "event name then each metadata key and value, keys in sorted order; cut at a word's end "
        "(a word the cut falls in is left out, unless it is the first word: one word that long "
        "is cut where the limit falls); no word past the cut is found "
        "(enricher_event_message_truncated_total counts the events cut). At most "
        f"{MAX_EVENT_MESSAGE_MAX_CHARS}, more than the gateway's default limits let into one text "
        "(139,648); a text too large for its NATS message is cut to fit all the same",
        check=_event_message_max_chars,
    )
    lag_refresh_s: float = setting(
        "ENRICHER_LAG_REFRESH_S",
        DEFAULT_LAG_REFRESH_S,
        "seconds between refreshes of the consumer lag metric",
        check=positive,
    )
    grpc_host: str = setting(
        "ENRICHER_GRPC_HOST", DEFAULT_GRPC_HOST, "gRPC EnrichService address", check=non_empty
    )
    grpc_port: int = setting(
        "ENRICHER_GRPC_PORT", DEFAULT_GRPC_PORT, "gRPC EnrichService port", check=port
    )
    grpc_max_events: int = setting(
        "ENRICHER_GRPC_MAX_EVENTS",
        DEFAULT_GRPC_MAX_EVENTS,
        "events per EnrichEvents request at most (their response must also fit in 4 MiB, "
        "gRPC's default message limit: RESOURCE_EXHAUSTED otherwise)",
        check=_at_least_one,
    )
    http_host: str = setting(
        "ENRICHER_HTTP_HOST",
        DEFAULT_HTTP_HOST,
        "address of /healthz, /readyz, /metrics",
        check=non_empty,
    )
    http_port: int = setting(
        "ENRICHER_HTTP_PORT", DEFAULT_HTTP_PORT, "port of /healthz, /readyz, /metrics", check=port
    )
    stop_timeout_s: float = setting(
        "ENRICHER_STOP_TIMEOUT_S",
        DEFAULT_STOP_TIMEOUT_S,
        "seconds a graceful stop may take, all of it: the batches in hand, then the NATS "
        "drain and the servers' grace get what is left (at least 1 s each); the messages "
        "left are nak'd, for redelivery at once",
        check=positive,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        in_flight = self.concurrency * self.fetch_batch
        if in_flight > self.max_ack_pending:
            raise ConfigError(
                f"ENRICHER_MAX_ACK_PENDING={self.max_ack_pending}: must be at least "
                f"ENRICHER_CONCURRENCY x ENRICHER_FETCH_BATCH = {in_flight}"
            )
        if self.ack_wait_s < 2 * self.publish_timeout_s:
            # A message waiting for NATS to take its publish is touched between attempts:
            # one attempt must end well within ack_wait, or the message is redelivered.
            raise ConfigError(
                f"ENRICHER_ACK_WAIT_S={self.ack_wait_s}: must be at least twice "
                f"ENRICHER_PUBLISH_TIMEOUT_S={self.publish_timeout_s}"
            )
        if self.nak_max_delay_s < self.nak_delay_s:
            raise ConfigError(
                f"ENRICHER_NAK_MAX_DELAY_S={self.nak_max_delay_s}: must be at least "
                f"ENRICHER_NAK_DELAY_S={self.nak_delay_s}"
            )
