"""Settings more than one service has: where NATS and OpenSearch are, logging, tracing.

Service configs inherit these dataclasses, so each variable is declared once.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import non_empty, positive, setting
from pipeline.errors import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
# The schemes nats-py connects with (a URL without one is nats://); it takes no mix of
# websocket URLs and others.
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_WEBSOCKET_SCHEMES = ("ws", "wss")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}")
DEFAULT_OPENSEARCH_URL = "http://127.0.0.1:9200"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_DUPLICATE_WINDOW_S = 600.0
DEFAULT_STREAM_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_DLQ_MAX_AGE_S = 30 * 24 * 3600.0  # 0: kept until replayed or deleted
DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4317"
TRACES_EXPORTERS = ("none", "console", "otlp")
# What nats-server takes in a stream's configuration: it refuses a stream outside these
# bounds (error 10052, or 10025 for a duration it cannot read), and the services would try
# again for ever, never ready.
STREAM_MAX_REPLICAS = 5
STREAM_MIN_DURATION_S = 0.1  # max age and duplicate window: 100 ms at least
# It reads durations as int64 nanoseconds: nothing longer than about 292 years.
STREAM_MAX_DURATION_S = (2**63 - 1) // 10**9
# A consumer's durations (its ack wait, a nak's delay, a fetch's expiry) go as int64
# nanoseconds too: a longer ack wait is refused (error 10025), a longer delay is ignored (the
# message redelivered at once), a longer fetch is refused; a shorter one than a nanosecond
# is sent as 0, which for an ack wait means the server's default (30 s).
NATS_MIN_DURATION_S = 1e-9
NATS_MAX_DURATION_S = STREAM_MAX_DURATION_S


def _log_level(value: str) -> str | None:
    ok = {"DEBUG", "INFO", "WARNING", "ERROR"}
    return None if value.upper() in ok else f"must be one of {', '.join(sorted(ok))}"


@dataclass(frozen=True)
class LogSettings:
    """Observability logging."""

    log_level: str = setting("LOG_LEVEL", "INFO", "log level", check=_log_level)
    log_format: str = setting(
        "LOG_FORMAT",
        "json",
        "log format: json (one object a line) or text (a line for people, with the same fields"
        " as key=value)",
        check=lambda v: None if v in ("json", "text") else "must be json or text",
    )


def _traces_exporter(value: str) -> str | None:
    return None if value in TRACES_EXPORTERS else f"must be one of {', '.join(TRACES_EXPORTERS)}"


def _otlp_endpoint(value: str) -> str | None:
    """Checks the collector's address as the OTLP/gRPC exporter reads it: the host and port
    of a URL (what follows them is dropped), or a bare host:port. Never quotes the value."""
    if not value:
        return "must not be empty"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (read for the ValueError of a port out of range)
    except ValueError:
        return "is not a URL with a valid host and port (expected http://host:port)"
    if "@" in (parts.netloc or value):
        # The exporter would dial "user:password@host" (which never connects) and write it
        # in each failed export's log line.
        return (
            "holds a user name or password, which OTLP/gRPC does not send: give credentials"
            " in OTEL_EXPORTER_OTLP_HEADERS (authorization=...)"
        )
    if parts.netloc and (parts.query or parts.fragment):
        return (
            "has a query string or fragment, which OTLP/gRPC does not send: give credentials"
            " in OTEL_EXPORTER_OTLP_HEADERS (authorization=...)"
        )
    if parts.netloc and not parts.hostname:
        return "has no host (expected http://host:port)"
    return None


@dataclass(frozen=True)
class TracingSettings:
    """Observability traces (OpenTelemetry), under the standard OTEL_* names."""

    traces_exporter: str = setting(
        "OTEL_TRACES_EXPORTER",
        "none",
        "where the pipeline's own traces go: none, console (stdout) or otlp (OTLP/gRPC)",
        check=_traces_exporter,
    )
    otlp_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        DEFAULT_OTLP_ENDPOINT,
        "OTLP/gRPC collector for OTEL_TRACES_EXPORTER=otlp (http:// means no TLS; credentials"
        " go in OTEL_EXPORTER_OTLP_HEADERS, read by the exporter, not in the URL)",
        check=_otlp_endpoint,
        secret=True,  # may be written with credentials in it, which the check refuses unquoted
    )


def _stream_replicas(value: int) -> str | None:
    if 1 <= value <= STREAM_MAX_REPLICAS:
        return None
    return f"must be between 1 and {STREAM_MAX_REPLICAS} (JetStream's most)"


def _stream_duration(value: float) -> str | None:
    if STREAM_MIN_DURATION_S <= value <= STREAM_MAX_DURATION_S:
        return None
    return (
        f"must be between {STREAM_MIN_DURATION_S:g} and {STREAM_MAX_DURATION_S} seconds "
        "(JetStream's bounds)"
    )


def nats_duration(value: float) -> str | None:
    """Checks a consumer's duration (ack wait, nak delay, fetch expiry) as NATS reads it."""
    if NATS_MIN_DURATION_S <= value <= NATS_MAX_DURATION_S:
        return None
    return (
        f"must be between {NATS_MIN_DURATION_S:g} and {NATS_MAX_DURATION_S} seconds "
        "(JetStream reads it as int64 nanoseconds)"
    )


def _stream_age_or_none(value: float) -> str | None:
    if value == 0 or STREAM_MIN_DURATION_S <= value <= STREAM_MAX_DURATION_S:
        return None
    return (
        f"must be 0 (no age limit) or between {STREAM_MIN_DURATION_S:g} and "
        f"{STREAM_MAX_DURATION_S} seconds (JetStream's bounds)"
    )


def _nats_urls(value: tuple[str, ...]) -> str | None:
    """Checks NATS URLs as nats-py reads them: nats://, tls://, ws:// or wss:// (none is
    nats://), with a host, and a port from 1 to 65535 when one is given; nats-py would take
    another scheme for a host name and try it for ever (`http://h:4222` as the host `http`).
    An entry is named by its position, never quoted: it may hold a password."""
    if not value:
        return "must not be empty"
    schemes = set()
    for number, url in enumerate(value, 1):
        entry = f"entry {number} of {len(value)}"
        scheme, sep, _ = url.partition("://")
        if not sep:
            scheme, url = "nats", f"nats://{url}"
        if scheme not in NATS_SCHEMES:
            # A scheme holds no credentials; what does not look like one is not shown.
            shown = f" {scheme}://" if _URL_SCHEME.fullmatch(scheme) else ""
            return (
                f"{entry}: NATS does not take the scheme{shown}; use nats://, tls://, ws:// or"
                " wss://"
            )
        schemes.add(scheme)
        try:
            parts = urlsplit(url)
        except ValueError:  # an unclosed [ of an IPv6 address
            return f"{entry} is not a valid URL (expected nats://host:port)"
        if not parts.hostname:
            return f"{entry} has no host (expected nats://host:port)"
        try:
            port_ok = parts.port != 0
        except ValueError:
            port_ok = False
        if not port_ok:
            return f"{entry} has a port that is not a number from 1 to 65535"
    if schemes & set(_WEBSOCKET_SCHEMES) and schemes - set(_WEBSOCKET_SCHEMES):
        return "mixes ws:// or wss:// URLs with others, which NATS does not take"
    return None


@dataclass(frozen=True)
class NatsSettings(LogSettings):
    """Where NATS JetStream is and how the pipeline's streams are set up."""

    nats_url: tuple[str, ...] = setting(
        "NATS_URL",
        (DEFAULT_NATS_URL,),
        "NATS server URLs, comma-separated: nats://host:port (tls://, ws:// or wss:// also)",
        check=_nats_urls,
        secret=True,  # nats://user:password@host
    )
    nats_connect_timeout_s: float = setting(
        "NATS_CONNECT_TIMEOUT_S",
        DEFAULT_CONNECT_TIMEOUT_S,
        "seconds per connect try",
        check=positive,
    )
    stream_replicas: int = setting(
        "STREAM_REPLICAS",
        1,
        f"replicas of each stream, 1-{STREAM_MAX_REPLICAS} (3 on a JetStream cluster)",
        check=_stream_replicas,
    )
    stream_max_age_s: float = setting(
        "STREAM_MAX_AGE_S",
        DEFAULT_STREAM_MAX_AGE_S,
        "seconds a message is kept in the raw and enriched streams, processed or not: one"
        " older is discarded (at least 0.1)",
        check=_stream_duration,
    )
    dlq_max_age_s: float = setting(
        "STREAM_DLQ_MAX_AGE_S",
        DEFAULT_DLQ_MAX_AGE_S,
        "seconds a dead letter is kept in TELEMETRY_DLQ unless replayed; 0 keeps it until"
        " replayed or deleted (at least 0.1 otherwise); applied to an existing stream at start",
        check=_stream_age_or_none,
    )
    duplicate_window_s: float = setting(
        "STREAM_DUPLICATE_WINDOW_S",
        DEFAULT_DUPLICATE_WINDOW_S,
        "seconds JetStream remembers message ids to drop retried publishes (at least 0.1, at"
        " most STREAM_MAX_AGE_S and a non-zero STREAM_DLQ_MAX_AGE_S)",
        check=_stream_duration,
    )

    def __post_init__(self) -> None:
        """Checks the settings that bound one another (`load()` checks each alone first)."""
        if self.duplicate_window_s > self.stream_max_age_s:
            # nats-server: "duplicates window can not be larger then max age"
            raise ConfigError(
                f"STREAM_DUPLICATE_WINDOW_S={self.duplicate_window_s!r}: must not exceed "
                f"STREAM_MAX_AGE_S={self.stream_max_age_s!r} (JetStream refuses such a stream)"
            )
        if self.dlq_max_age_s and self.duplicate_window_s > self.dlq_max_age_s:
            raise ConfigError(
                f"STREAM_DUPLICATE_WINDOW_S={self.duplicate_window_s!r}: must not exceed "
                f"STREAM_DLQ_MAX_AGE_S={self.dlq_max_age_s!r} (JetStream refuses such a stream;"
                " 0 there means no age limit)"
            )


def _ca_certs(value: str) -> str | None:
    """Checks a CA bundle as the OpenSearch client reads it: a PEM file or a directory."""
    if not value:
        return None
    path = Path(value)
    if path.is_dir():
        readable = os.access(path, os.R_OK | os.X_OK)
        return None if readable else "is a directory this process cannot read"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:  # an OSError too: first
        return "holds no PEM certificate"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    return None


@dataclass(frozen=True)
class OpenSearchSettings:
    """Where OpenSearch is and how to authenticate."""

    opensearch_url: tuple[str, ...] = setting(
        "OPENSEARCH_URL",
        (DEFAULT_OPENSEARCH_URL,),
        "OpenSearch URLs, comma-separated",
        check=non_empty,
        secret=True,  # https://user:password@host
    )
    opensearch_username: str = setting("OPENSEARCH_USERNAME", "", "basic-auth user name")
    opensearch_password: str = setting(
        "OPENSEARCH_PASSWORD", "", "basic-auth password", secret=True
    )
    opensearch_ca_certs: str = setting(
        "OPENSEARCH_CA_CERTS",
        "",
        "path of a CA bundle (PEM), or a directory of CA certificates, to verify OpenSearch's"
        " TLS certificate; read at start",
        check=_ca_certs,
    )
    opensearch_verify_certs: bool = setting(
        "OPENSEARCH_VERIFY_CERTS", True, "verify OpenSearch's TLS certificate"
    )
    opensearch_timeout_s: float = setting(
        "OPENSEARCH_TIMEOUT_S", 30.0, "seconds per OpenSearch request", check=positive
    )
