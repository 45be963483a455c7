"""Settings declared on dataclasses: parsing, defaults, validation messages and help."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as fields_of
from pathlib import Path

import certifi
import pytest

from enricher.config import Config as EnricherConfig
from gateway.config import GatewayConfig
from indexer.config import Config as IndexerConfig
from pipeline.config import help_text, load, port, positive, setting
from pipeline.errors import ConfigError
from pipeline.settings import NatsSettings, OpenSearchSettings
from pipeline.subjects import dlq_subject, enriched_subject, raw_subject, valid_token

DEFAULT_FLUSH_S = 0.5


@dataclass(frozen=True)
class Example:
    flush_s: float = setting("EX_FLUSH_S", DEFAULT_FLUSH_S, "flush interval", check=positive)
    port: int = setting("EX_PORT", 3000, "port", check=port)
    verbose: bool = setting("EX_VERBOSE", False, "talk more")
    urls: tuple[str, ...] = setting("EX_URLS", ("a",), "URLs")
    name: str = setting("EX_NAME", "n", "name")


def test_defaults_when_the_environment_is_empty() -> None:
    assert load(Example, {}) == Example()


def test_values_are_parsed_by_type() -> None:
    env = {
        "EX_FLUSH_S": "2.5",
        "EX_PORT": " 8080 ",
        "EX_VERBOSE": "yes",
        "EX_URLS": "nats://a:1, nats://b:2,",
        "EX_NAME": "x",
    }
    assert load(Example, env) == Example(2.5, 8080, True, ("nats://a:1", "nats://b:2"), "x")


def test_blank_values_mean_the_default() -> None:
    assert load(Example, {"EX_PORT": "  "}).port == 3000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EX_PORT": "abc"}, "EX_PORT='abc': expected an integer"),
        ({"EX_PORT": "70000"}, "EX_PORT=70000: must be a port number"),
        ({"EX_FLUSH_S": "0"}, "EX_FLUSH_S=0.0: must be greater than 0"),
        ({"EX_FLUSH_S": "soon"}, "EX_FLUSH_S='soon': expected a number"),
        ({"EX_FLUSH_S": "inf"}, "EX_FLUSH_S='inf': expected a finite number"),
        ({"EX_FLUSH_S": "-Infinity"}, "EX_FLUSH_S='-Infinity': expected a finite number"),
        ({"EX_FLUSH_S": "nan"}, "EX_FLUSH_S='nan': expected a finite number"),
        ({"EX_VERBOSE": "maybe"}, "EX_VERBOSE='maybe': expected true or false"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(Example, env)
    assert str(err.value).startswith(message)


@dataclass(frozen=True)
class Secrets:
    password: str = setting(
        "EX_PASSWORD",
        "",
        "password",
        check=lambda v: "too short" if 0 < len(v) < 8 else None,
        secret=True,
    )
    pin: int = setting("EX_PIN", 1234, "pin", secret=True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EX_PASSWORD": "hunter2"}, "EX_PASSWORD: too short"),
        ({"EX_PIN": "hunter2"}, "EX_PIN: expected an integer"),
    ],
)
def test_a_secret_setting_is_never_quoted_in_its_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(Secrets, env)
    assert str(err.value) == message
    assert "hunter2" not in str(err.value)


def test_settings_that_may_hold_credentials_are_secret() -> None:
    declared = {
        field.metadata["env"]: field.metadata["secret"]
        for cls in (NatsSettings, OpenSearchSettings)
        for field in fields_of(cls)
    }
    for name in ("NATS_URL", "OPENSEARCH_URL", "OPENSEARCH_PASSWORD"):
        assert declared[name], name


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ("http://127.0.0.1:4222", "entry 1 of 1: NATS does not take the scheme http://; use"),
        (
            "nats://h1:4222,https://u:s3cret@h2",
            "entry 2 of 2: NATS does not take the scheme https://",
        ),
        ("NATS://h1:4222", "entry 1 of 1: NATS does not take the scheme NATS://"),
        ("nats://u:s3cret@:4222", "entry 1 of 1 has no host"),
        ("nats://h1:0", "entry 1 of 1 has a port that is not a number from 1 to 65535"),
        ("u:s3cret@h1:port", "entry 1 of 1 has a port that is not a number from 1 to 65535"),
        ("nats://[::1:4222", "entry 1 of 1 is not a valid URL"),
        ("ws://h1:80,nats://h2:4222", "mixes ws:// or wss:// URLs with others"),
    ],
)
def test_a_nats_url_nats_py_cannot_connect_to_stops_the_service_at_start(
    urls: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(NatsSettings, {"NATS_URL": urls})
    assert str(err.value).startswith(f"NATS_URL: {problem}")
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    "urls",
    [
        "nats://127.0.0.1:4222",
        "127.0.0.1:4222",  # nats:// is the default
        "nats://u:s3cret@h1:4222, tls://h2:4222, h3",
        "nats://[::1]:4222",
        "ws://h1:8080,wss://h2",
    ],
)
def test_every_url_nats_py_connects_to_is_taken(urls: str) -> None:
    assert load(NatsSettings, {"NATS_URL": urls}).nats_url == tuple(
        url.strip() for url in urls.split(",")
    )


def test_a_bad_list_shows_the_setting_as_written_not_as_a_tuple() -> None:
    @dataclass(frozen=True)
    class Lists:
        hosts: tuple[str, ...] = setting(
            "EX_HOSTS", (), "hosts", check=lambda v: "b is bad" if "b" in v else None
        )

    with pytest.raises(ConfigError) as err:
        load(Lists, {"EX_HOSTS": " a, b "})
    assert str(err.value) == "EX_HOSTS='a, b': b is bad"


def test_help_lists_every_variable_with_its_default() -> None:
    text = help_text(Example, "example")
    for name in ("EX_FLUSH_S", "EX_PORT", "EX_VERBOSE", "EX_URLS", "EX_NAME"):
        assert name in text
    assert "[default: 0.5]" in text


def test_shared_settings_keep_the_original_variable_names() -> None:
    nats = load(NatsSettings, {"NATS_URL": "nats://h1:4222,nats://h2:4222"})
    assert nats.nats_url == ("nats://h1:4222", "nats://h2:4222")
    search = load(OpenSearchSettings, {"OPENSEARCH_URL": "https://os:9200"})
    assert search.opensearch_url == ("https://os:9200",)
    with pytest.raises(ConfigError, match="NATS_URL"):
        load(NatsSettings, {"NATS_URL": " , "})
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        load(NatsSettings, {"LOG_LEVEL": "LOUD"})


def test_subjects_follow_the_contract() -> None:
    assert raw_subject("shop-ios") == "telemetry.raw.v1.shop-ios"
    assert enriched_subject("shop_ios") == "telemetry.enriched.v1.shop_ios"
    assert dlq_subject("enricher") == "telemetry.dlq.v1.enricher"
    for bad in ("", "a.b", "a*", "a>", "a b", "x" * 65):
        assert not valid_token(bad)
        with pytest.raises(ValueError, match="subject token"):
            raw_subject(bad)


# Each of these makes nats-server refuse the stream (error 10052, or 10025 for a duration
# beyond int64 nanoseconds), leaving the services retrying for ever.
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STREAM_MAX_AGE_S": "60", "STREAM_DUPLICATE_WINDOW_S": "600"},
            "STREAM_DUPLICATE_WINDOW_S=600.0: must not exceed STREAM_MAX_AGE_S=60.0",
        ),
        ({"STREAM_MAX_AGE_S": "120"}, "STREAM_DUPLICATE_WINDOW_S=600.0: must not exceed"),
        ({"STREAM_REPLICAS": "6"}, "STREAM_REPLICAS=6: must be between 1 and 5"),
        ({"STREAM_REPLICAS": "0"}, "STREAM_REPLICAS=0: must be between 1 and 5"),
        ({"STREAM_MAX_AGE_S": "0.05"}, "STREAM_MAX_AGE_S=0.05: must be between 0.1 and"),
        ({"STREAM_MAX_AGE_S": "1e10"}, "STREAM_MAX_AGE_S=10000000000.0: must be between"),
        ({"STREAM_DUPLICATE_WINDOW_S": "0.001"}, "STREAM_DUPLICATE_WINDOW_S=0.001: must be"),
    ],
)
@pytest.mark.parametrize("service", [NatsSettings, GatewayConfig, EnricherConfig, IndexerConfig])
def test_stream_settings_nats_would_refuse_stop_every_service_at_start(
    service: type, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(service, env)
    assert str(err.value).startswith(message)


def test_stream_settings_at_their_bounds_are_taken() -> None:
    edge = {
        "STREAM_MAX_AGE_S": "0.1",
        "STREAM_DUPLICATE_WINDOW_S": "0.1",
        "STREAM_REPLICAS": "5",
    }
    assert load(NatsSettings, edge).stream_max_age_s == 0.1
    longest = load(NatsSettings, {"STREAM_MAX_AGE_S": "9223372036"})
    assert longest.stream_max_age_s * 10**9 < 2**63


# A consumer's durations reach nats-server as int64 nanoseconds as well: a longer ack wait is
# refused (error 10025, the consumer never created), a longer nak delay ignored (the message
# redelivered at once), a longer fetch refused; a shorter ack wait than 1 ns is sent as 0,
# read as the server's default of 30 s.
@pytest.mark.parametrize(
    ("service", "env", "value"),
    [
        (EnricherConfig, "ENRICHER_ACK_WAIT_S", "1e10"),
        (EnricherConfig, "ENRICHER_ACK_WAIT_S", "1e-10"),
        (EnricherConfig, "ENRICHER_NAK_DELAY_S", "1e10"),
        (EnricherConfig, "ENRICHER_NAK_MAX_DELAY_S", "1e10"),
        (EnricherConfig, "ENRICHER_FETCH_TIMEOUT_S", "1e10"),
        (IndexerConfig, "INDEXER_ACK_WAIT_S", "1e10"),
        (IndexerConfig, "INDEXER_ACK_WAIT_S", "1e-10"),
    ],
)
def test_consumer_durations_nats_cannot_read_stop_the_service_at_start(
    service: type, env: str, value: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(service, {env: value})
    assert str(err.value) == (
        f"{env}={float(value)!r}: must be between 1e-09 and 9223372036 seconds"
        " (JetStream reads it as int64 nanoseconds)"
    )


def test_consumer_durations_at_their_bounds_are_taken() -> None:
    longest = "9223372036"
    enricher = load(
        EnricherConfig,
        {
            "ENRICHER_ACK_WAIT_S": longest,
            "ENRICHER_NAK_DELAY_S": longest,
            "ENRICHER_NAK_MAX_DELAY_S": longest,
            "ENRICHER_FETCH_TIMEOUT_S": longest,
        },
    )
    assert enricher.ack_wait_s * 10**9 < 2**63
    assert load(IndexerConfig, {"INDEXER_ACK_WAIT_S": "1e-9"}).ack_wait_s == 1e-9


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAM_DLQ_MAX_AGE_S": "0.05"}, "STREAM_DLQ_MAX_AGE_S=0.05: must be 0 (no age limit)"),
        ({"STREAM_DLQ_MAX_AGE_S": "-1"}, "STREAM_DLQ_MAX_AGE_S=-1.0: must be 0 (no age limit)"),
        (
            {"STREAM_DLQ_MAX_AGE_S": "300"},
            "STREAM_DUPLICATE_WINDOW_S=600.0: must not exceed STREAM_DLQ_MAX_AGE_S=300.0",
        ),
    ],
)
def test_the_dead_letters_age_is_checked_as_nats_would(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(NatsSettings, env)
    assert str(err.value).startswith(message)


def test_the_dead_letters_age_may_be_unlimited() -> None:
    settings = load(NatsSettings, {"STREAM_DLQ_MAX_AGE_S": "0"})
    assert settings.dlq_max_age_s == 0
    assert load(NatsSettings, {}).dlq_max_age_s == 30 * 24 * 3600.0


def test_a_ca_bundle_is_read_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bundle = certifi.where()

    for value, problem in (
        (tmp_path / "absent.pem", "cannot be read: No such file or directory"),
        (junk, "holds no PEM certificate"),
    ):
        with pytest.raises(ConfigError) as err:
            load(OpenSearchSettings, {"OPENSEARCH_CA_CERTS": str(value)})
        assert str(err.value) == f"OPENSEARCH_CA_CERTS={str(value)!r}: {problem}"
    assert load(OpenSearchSettings, {"OPENSEARCH_CA_CERTS": bundle}).opensearch_ca_certs == bundle
    # A directory of hashed certificates, as the client also takes (capath).
    assert load(OpenSearchSettings, {"OPENSEARCH_CA_CERTS": str(tmp_path)}).opensearch_ca_certs
