"""The enricher's settings: defaults, and one error per validation, naming the variable."""

from __future__ import annotations

import dataclasses

import pytest

from enricher import config as cfg
from enricher.config import Config
from pipeline.config import load
from pipeline.errors import ConfigError


def test_defaults() -> None:
    config = load(Config, {})
    assert config.consumer_name == "enricher"
    assert config.fetch_batch == cfg.DEFAULT_FETCH_BATCH
    assert config.fetch_timeout_s == cfg.DEFAULT_FETCH_TIMEOUT_S
    assert config.concurrency == cfg.DEFAULT_CONCURRENCY
    assert config.max_ack_pending == cfg.DEFAULT_MAX_ACK_PENDING
    assert config.ack_wait_s == cfg.DEFAULT_ACK_WAIT_S
    assert config.max_deliver == cfg.DEFAULT_MAX_DELIVER
    assert config.publish_timeout_s == cfg.DEFAULT_PUBLISH_TIMEOUT_S
    assert config.nak_delay_s == cfg.DEFAULT_NAK_DELAY_S
    assert config.nak_max_delay_s == cfg.DEFAULT_NAK_MAX_DELAY_S
    assert config.max_clock_skew_s == 365 * 24 * 3600
    assert config.max_events_per_message == cfg.DEFAULT_MAX_EVENTS_PER_MESSAGE == 1000
    assert config.geoip_db == ""
    assert config.event_message_max_chars == cfg.DEFAULT_EVENT_MESSAGE_MAX_CHARS
    assert config.lag_refresh_s == cfg.DEFAULT_LAG_REFRESH_S
    assert (config.grpc_host, config.grpc_port) == ("127.0.0.1", 50052)
    assert config.grpc_max_events == cfg.DEFAULT_GRPC_MAX_EVENTS
    assert (config.http_host, config.http_port) == ("127.0.0.1", 8081)
    assert config.stop_timeout_s == cfg.DEFAULT_STOP_TIMEOUT_S
    assert config.nats_url == ("nats://127.0.0.1:4222",)


def test_every_setting_has_the_prefix_or_is_shared() -> None:
    shared = {"LOG_", "NATS_", "STREAM_", "OTEL_"}
    for field in dataclasses.fields(Config):
        env = field.metadata["env"]
        assert env.startswith("ENRICHER_") or any(env.startswith(p) for p in shared), env


def test_values_are_read() -> None:
    config = load(
        Config,
        {
            "NATS_URL": "nats://a:1,nats://b:2",
            "ENRICHER_FETCH_BATCH": "10",
            "ENRICHER_MAX_CLOCK_SKEW_S": "86400",
            "ENRICHER_GEOIP_DB": "/data/city.mmdb",
            "ENRICHER_GRPC_PORT": "0",
        },
    )
    assert config.nats_url == ("nats://a:1", "nats://b:2")
    assert config.fetch_batch == 10
    assert config.max_clock_skew_s == 86400.0
    assert config.geoip_db == "/data/city.mmdb"
    assert config.grpc_port == 0


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("ENRICHER_CONSUMER_NAME", "has.dot"),
        ("ENRICHER_CONSUMER_NAME", "has space"),
        ("ENRICHER_FETCH_BATCH", "0"),
        ("ENRICHER_FETCH_BATCH", "many"),
        ("ENRICHER_FETCH_TIMEOUT_S", "0"),
        ("ENRICHER_CONCURRENCY", "0"),
        ("ENRICHER_MAX_ACK_PENDING", "0"),
        ("ENRICHER_ACK_WAIT_S", "-1"),
        ("ENRICHER_MAX_DELIVER", "0"),
        ("ENRICHER_PUBLISH_TIMEOUT_S", "0"),
        ("ENRICHER_NAK_DELAY_S", "0"),
        ("ENRICHER_NAK_MAX_DELAY_S", "0"),
        ("ENRICHER_MAX_CLOCK_SKEW_S", "0"),
        ("ENRICHER_MAX_CLOCK_SKEW_S", "1e-12"),
        ("ENRICHER_MAX_CLOCK_SKEW_S", "59.9"),
        ("ENRICHER_EVENT_MESSAGE_MAX_CHARS", "0"),
        ("ENRICHER_EVENT_MESSAGE_MAX_CHARS", "262145"),
        ("ENRICHER_MAX_EVENTS_PER_MESSAGE", "0"),
        ("ENRICHER_LAG_REFRESH_S", "0"),
        ("ENRICHER_GRPC_PORT", "70000"),
        ("ENRICHER_GRPC_MAX_EVENTS", "0"),
        ("ENRICHER_HTTP_PORT", "-1"),
        ("ENRICHER_STOP_TIMEOUT_S", "0"),
    ],
)
def test_invalid_value_names_the_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        load(Config, {env: value})


def test_the_smallest_max_clock_skew_is_a_minute() -> None:
    assert load(Config, {"ENRICHER_MAX_CLOCK_SKEW_S": "60"}).max_clock_skew_s == 60.0


def test_event_message_max_chars_is_at_most_262144() -> None:
    # A text must fit a NATS message beside its event: a larger limit is refused at start.
    assert cfg.MAX_EVENT_MESSAGE_MAX_CHARS == 262_144
    # what the gateway's default limits let into one text, as docs/observability.md advises
    config = load(Config, {"ENRICHER_EVENT_MESSAGE_MAX_CHARS": "139648"})
    assert config.event_message_max_chars == 139_648
    config = load(Config, {"ENRICHER_EVENT_MESSAGE_MAX_CHARS": "262144"})
    assert config.event_message_max_chars == 262_144
    with pytest.raises(
        ConfigError, match=r"ENRICHER_EVENT_MESSAGE_MAX_CHARS=1000000: must be between 1 and 262144"
    ):
        load(Config, {"ENRICHER_EVENT_MESSAGE_MAX_CHARS": "1000000"})


def test_in_flight_must_fit_in_max_ack_pending() -> None:
    with pytest.raises(ConfigError, match="ENRICHER_MAX_ACK_PENDING"):
        load(
            Config,
            {
                "ENRICHER_CONCURRENCY": "4",
                "ENRICHER_FETCH_BATCH": "100",
                "ENRICHER_MAX_ACK_PENDING": "399",
            },
        )
    load(
        Config,
        {
            "ENRICHER_CONCURRENCY": "4",
            "ENRICHER_FETCH_BATCH": "100",
            "ENRICHER_MAX_ACK_PENDING": "400",
        },
    )


def test_max_nak_delay_must_not_be_below_the_first() -> None:
    with pytest.raises(ConfigError, match="ENRICHER_NAK_MAX_DELAY_S"):
        load(Config, {"ENRICHER_NAK_DELAY_S": "10", "ENRICHER_NAK_MAX_DELAY_S": "5"})


def test_a_publish_must_end_well_within_ack_wait() -> None:
    # A message held while NATS does not take its publish is touched between attempts.
    with pytest.raises(ConfigError, match=r"ENRICHER_ACK_WAIT_S=9\.0: must be at least twice"):
        load(Config, {"ENRICHER_ACK_WAIT_S": "9", "ENRICHER_PUBLISH_TIMEOUT_S": "5"})
    assert load(Config, {"ENRICHER_ACK_WAIT_S": "10", "ENRICHER_PUBLISH_TIMEOUT_S": "5"})
