"""The gateway's settings: GATEWAY_* (plus the shared NATS_*, LOG_* and OTEL_*)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pipeline.config import non_negative, port, positive, setting
from pipeline.settings import NatsSettings, TracingSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 3000
DEFAULT_GRPC_PORT = 50051
DEFAULT_QUERY_TARGET = "127.0.0.1:50053"
DEFAULT_QUERY_TIMEOUT_S = 10.0
DEFAULT_PUBLISH_TIMEOUT_S = 5.0
DEFAULT_MAX_IN_FLIGHT = 512
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_RATE_LIMIT_BURST = 100
DEFAULT_MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_DECOMPRESSED_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_EVENTS_PER_BATCH = 1000
DEFAULT_MAX_FIELD_CHARS = 256
DEFAULT_MAX_EVENT_ID_CHARS = 128
DEFAULT_MAX_METADATA_ENTRIES = 64
DEFAULT_MAX_METADATA_KEY_CHARS = 128
DEFAULT_MAX_METADATA_VALUE_CHARS = 2048
DEFAULT_GRACEFUL_STOP_S = 20.0


def _cidrs(value: tuple[str, ...]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP network (CIDR)"
    return None


_TARGET_FORMS = "host:port (or dns:///host:port, ipv4:addr:port, ipv6:[addr]:port, unix:path)"


def _host_port(text: str) -> str | None:
    """Checks `host:port` or `[v6]:port`, the port a number from 1 to 65535."""
    if "/" in text:  # http://host:port, xds:///name...
        return f"must be {_TARGET_FORMS}"
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            return f"must be {_TARGET_FORMS}"
        port = rest[1:]
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            # gRPC would dial port 443.
            return f"has no port: must be {_TARGET_FORMS}"
        if ":" in host:
            return "has an IPv6 address that is not in brackets ([::1]:50053)"
    if not host:
        return f"has no host: must be {_TARGET_FORMS}"
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        return "has a port that is not a number from 1 to 65535"
    return None


def _query_target(value: str) -> str | None:
    """Checks a gRPC target as grpc dials it: host:port, dns:[//authority/]host:port,
    ipv4:/ipv6: lists of addresses with their ports, unix:path or unix-abstract:name. gRPC
    takes a host without a port too, and dials it on 443."""
    if not value:
        return "must not be empty"
    scheme, colon, rest = value.partition(":")
    if colon and scheme in ("unix", "unix-abstract"):
        return None if rest.strip("/") else "names no socket (unix:/path/to/socket)"
    if colon and scheme == "dns":
        if rest.startswith("//"):  # dns://authority/host:port, the authority often empty
            _, slash, rest = rest[2:].partition("/")
            if not slash:
                return f"must be {_TARGET_FORMS}"
        return _host_port(rest)
    if colon and scheme in ("ipv4", "ipv6"):
        for address in rest.split(","):
            problem = _host_port(address)
            if problem:
                return problem
        return None
    return _host_port(value)


def key_problem(key: str) -> str | None:
    """What keeps a configured key from ever matching a request's, or None.

    A request presents its key in an `Authorization: Bearer` or `X-Api-Key` header, or in
    gRPC metadata, and the gateway drops whitespace around it there: a key matches only if
    it is printable ASCII without whitespace (what all three carry as it is). The text
    follows "the key" and never quotes the key.
    """
    if not key:
        return "is empty"
    if key[0].isspace() or key[-1].isspace():
        end = "begins" if key[0].isspace() else "ends"
        return (
            f"{end} with whitespace, which a request cannot send (it is dropped from the"
            " header), so no request would match it: remove the whitespace"
        )
    for char in key:
        if "!" <= char <= "~":
            continue
        if char.isspace():
            what = "whitespace"
        elif char.isprintable():
            what = "a non-ASCII character"
        else:
            what = "a control or other invisible character"
        return (
            f"holds {what}, which a request cannot send as part of a key (a key is printable"
            " ASCII without spaces), so no request would match it"
        )
    return None


def _key_pairs(value: tuple[str, ...]) -> str | None:
    """Checks <key>:<id> entries; a problem names the entry by position, never its text."""
    for number, item in enumerate(value, 1):
        key, sep, owner = item.partition(":")
        entry = f"entry {number} of {len(value)}"
        if not sep:
            return f"{entry} has no ':' (each entry is <key>:<id>)"
        if not key.strip():
            return f"{entry} has no key before its ':' (each entry is <key>:<id>)"
        if not owner.strip():
            return f"{entry} has no id after its ':' (each entry is <key>:<id>)"
        problem = key_problem(key)
        if problem:
            return f"{entry}: the key {problem}"
    return None


@dataclass(frozen=True)
class GatewayConfig(NatsSettings, TracingSettings):
    """Everything the gateway reads at start."""

    host: str = setting("GATEWAY_HOST", DEFAULT_HOST, "address the HTTP and gRPC servers bind to")
    http_port: int = setting("GATEWAY_HTTP_PORT", DEFAULT_HTTP_PORT, "HTTP port", check=port)
    grpc_port: int = setting("GATEWAY_GRPC_PORT", DEFAULT_GRPC_PORT, "gRPC port", check=port)
    write_keys: tuple[str, ...] = setting(
        "GATEWAY_WRITE_KEYS",
        (),
        "write keys as <key>:<app_id>, comma-separated (a key is printable ASCII without"
        " spaces; the app id, 1-64 letters, digits, _ or -, becomes the subject token; a key"
        " given twice must name one app)",
        check=_key_pairs,
        secret=True,
    )
    read_keys: tuple[str, ...] = setting(
        "GATEWAY_READ_KEYS",
        (),
        "read keys as <key>:<name>, comma-separated (a key is printable ASCII without spaces)",
        check=_key_pairs,
        secret=True,
    )
    keys_file: str = setting(
        "GATEWAY_KEYS_FILE",
        "",
        'JSON file {"write_keys": {"<key>": "<app_id>"}, "read_keys": {"<key>": "<name>"}}, '
        "added to the keys of GATEWAY_WRITE_KEYS and GATEWAY_READ_KEYS (a key in both must "
        "name one owner)",
    )
    workers: int = setting(
        "GATEWAY_WORKERS",
        1,
        "gateway processes sharing the HTTP and gRPC ports (SO_REUSEPORT)",
        check=positive,
    )
    reuse_port: bool = setting(
        "GATEWAY_REUSE_PORT",
        False,
        "bind with SO_REUSEPORT so several gateways share the ports (set for workers)",
    )
    trusted_proxies: tuple[str, ...] = setting(
        "GATEWAY_TRUSTED_PROXIES",
        (),
        "CIDRs whose X-Forwarded-For is believed, comma-separated (an IPv4 proxy matches an "
        "IPv4 CIDR also when GATEWAY_HOST is :: and it connects as ::ffff:a.b.c.d; hops may "
        "carry a port, IPv6 ones in brackets)",
        check=_cidrs,
    )
    publish_timeout_s: float = setting(
        "GATEWAY_PUBLISH_TIMEOUT_S",
        DEFAULT_PUBLISH_TIMEOUT_S,
        "seconds to wait for JetStream's ack before answering 503 (a batch whose ack comes "
        "later is stored all the same: its retry answers duplicate)",
        check=positive,
    )
    max_in_flight: int = setting(
        "GATEWAY_MAX_IN_FLIGHT",
        DEFAULT_MAX_IN_FLIGHT,
        "ingest requests handled at once; more get 429 (a small limit sheds most of what the "
        "gateway could take under overload: docs/reliability.md)",
        check=positive,
    )
    max_in_flight_bytes: int = setting(
        "GATEWAY_MAX_IN_FLIGHT_BYTES",
        DEFAULT_MAX_IN_FLIGHT_BYTES,
        "body bytes held at once, counted as each request's body is read and inflated; a "
        "request that does not fit beside the others gets 429 before the rest is read "
        "(bounds memory)",
        check=positive,
    )
    rate_limit_rps: float = setting(
        "GATEWAY_RATE_LIMIT_RPS",
        0.0,
        "requests per second allowed per app (all its write keys) or reader "
        "(0: no limit); more gets 429. Counted per gateway process: with GATEWAY_WORKERS=N "
        "an app may send N times this rate",
        check=non_negative,
    )
    rate_limit_burst: int = setting(
        "GATEWAY_RATE_LIMIT_BURST",
        DEFAULT_RATE_LIMIT_BURST,
        "requests an app or reader may send at once above its rate, per gateway process "
        "(N workers allow N bursts)",
        check=positive,
    )
    retry_after_s: int = setting(
        "GATEWAY_RETRY_AFTER_S",
        DEFAULT_RETRY_AFTER_S,
        "seconds sent in Retry-After with 503 and with a 429 for too much in flight (a 429 "
        "for a rate sends the seconds until the next request is allowed)",
        check=non_negative,
    )
    max_body_bytes: int = setting(
        "GATEWAY_MAX_BODY_BYTES",
        DEFAULT_MAX_BODY_BYTES,
        "largest request body as sent (compressed), bytes",
        check=positive,
    )
    max_decompressed_bytes: int = setting(
        "GATEWAY_MAX_DECOMPRESSED_BYTES",
        DEFAULT_MAX_DECOMPRESSED_BYTES,
        "largest request body after gzip decompression, and largest gRPC message, bytes",
        check=positive,
    )
    max_events_per_batch: int = setting(
        "GATEWAY_MAX_EVENTS_PER_BATCH",
        DEFAULT_MAX_EVENTS_PER_BATCH,
        "most events in one batch; more gets 413",
        check=positive,
    )
    max_field_chars: int = setting(
        "GATEWAY_MAX_FIELD_CHARS",
        DEFAULT_MAX_FIELD_CHARS,
        "longest session_id, user_id, event_name, app_version or device_os, characters",
        check=positive,
    )
    max_event_id_chars: int = setting(
        "GATEWAY_MAX_EVENT_ID_CHARS",
        DEFAULT_MAX_EVENT_ID_CHARS,
        "longest event_id, characters",
        check=positive,
    )
    max_metadata_entries: int = setting(
        "GATEWAY_MAX_METADATA_ENTRIES",
        DEFAULT_MAX_METADATA_ENTRIES,
        "most metadata entries per event",
        check=non_negative,
    )
    max_metadata_key_chars: int = setting(
        "GATEWAY_MAX_METADATA_KEY_CHARS",
        DEFAULT_MAX_METADATA_KEY_CHARS,
        "longest metadata key, characters",
        check=positive,
    )
    max_metadata_value_chars: int = setting(
        "GATEWAY_MAX_METADATA_VALUE_CHARS",
        DEFAULT_MAX_METADATA_VALUE_CHARS,
        "longest metadata value, characters",
        check=positive,
    )
    query_target: str = setting(
        "GATEWAY_QUERY_TARGET",
        DEFAULT_QUERY_TARGET,
        "host:port of the gRPC QueryService (or a gRPC target: dns:///host:port, unix:path)",
        check=_query_target,
    )
    query_timeout_s: float = setting(
        "GATEWAY_QUERY_TIMEOUT_S",
        DEFAULT_QUERY_TIMEOUT_S,
        "deadline of a QueryService call, seconds",
        check=positive,
    )
    graceful_stop_s: float = setting(
        "GATEWAY_GRACEFUL_STOP_S",
        DEFAULT_GRACEFUL_STOP_S,
        "seconds a graceful stop may take: in-flight requests get them to finish, the NATS "
        "drain what is left (at least 1 s)",
        check=positive,
    )
