"""The indexer's settings: defaults, overrides and every validation error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from indexer import config as cfg
from indexer.__main__ import main
from indexer.config import Config
from pipeline.config import load
from pipeline.errors import ConfigError


def test_defaults() -> None:
    config = load(Config, {})
    assert config.index_prefix == "telemetry-"
    assert (config.index_shards, config.index_replicas) == (1, 0)
    assert config.consumer_name == "indexer"
    assert config.bulk_max_docs == cfg.DEFAULT_BULK_MAX_DOCS
    assert config.bulk_max_bytes == 5 * 1024 * 1024
    assert config.flush_interval_s == pytest.approx(0.2)
    assert config.bulk_concurrency == cfg.DEFAULT_BULK_CONCURRENCY
    assert config.max_ack_pending == cfg.DEFAULT_MAX_ACK_PENDING
    assert config.retention_days == 30
    assert config.refresh_interval == "500ms"
    assert (config.grpc_host, config.grpc_port) == ("127.0.0.1", 50053)
    assert (config.http_host, config.http_port) == ("127.0.0.1", 8082)
    assert config.query_max_in_flight == 64
    assert config.opensearch_url == ("http://127.0.0.1:9200",)


def test_overrides() -> None:
    config = load(
        Config,
        {
            "INDEXER_INDEX_PREFIX": "events-",
            "INDEXER_RETENTION_DAYS": "0",
            "INDEXER_GRPC_PORT": "0",
            "OPENSEARCH_URL": "http://a:9200, http://b:9200",
        },
    )
    assert config.index_prefix == "events-"
    assert config.retention_days == 0
    assert config.grpc_port == 0
    assert config.opensearch_url == ("http://a:9200", "http://b:9200")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("INDEXER_INDEX_PREFIX", "Telemetry-", "lowercase"),
        ("INDEXER_INDEX_PREFIX", "-x", "starting with"),
        ("INDEXER_INDEX_PREFIX", "a*b", "lowercase"),
        ("INDEXER_INDEX_PREFIX", "telemetry", "must end with '-', '_' or '.'"),
        ("INDEXER_INDEX_SHARDS", "0", "greater than 0"),
        ("INDEXER_INDEX_REPLICAS", "-1", "0 or greater"),
        ("INDEXER_TEMPLATE_PRIORITY", "-1", "0 or greater"),
        ("INDEXER_CONSUMER_NAME", "a.b", "letters"),
        ("INDEXER_FETCH_BATCH", "0", "greater than 0"),
        ("INDEXER_MAX_ACK_PENDING", "0", "greater than 0"),
        ("INDEXER_ACK_WAIT_S", "0", "must be between 1e-09 and"),
        ("INDEXER_MAX_DELIVERIES", "0", "greater than 0"),
        ("INDEXER_BULK_MAX_DOCS", "many", "expected an integer"),
        ("INDEXER_BULK_MAX_BYTES", "0", "between 1 and 104857600"),
        ("INDEXER_BULK_MAX_BYTES", "104857601", "between 1 and 104857600"),
        ("INDEXER_FLUSH_INTERVAL_S", "0", "greater than 0"),
        ("INDEXER_BULK_CONCURRENCY", "0", "greater than 0"),
        ("INDEXER_RETRY_BASE_S", "0", "greater than 0"),
        ("INDEXER_RETRY_MAX_S", "0", "greater than 0"),
        ("INDEXER_RETENTION_DAYS", "-1", "between 0 (keep forever) and 36500"),
        ("INDEXER_RETENTION_DAYS", "1000000", "between 0 (keep forever) and 36500"),
        ("INDEXER_ACK_WAIT_S", "inf", "finite"),
        ("INDEXER_RETENTION_INTERVAL_S", "0", "greater than 0"),
        ("INDEXER_PENDING_REFRESH_S", "0", "greater than 0"),
        ("INDEXER_GRACEFUL_STOP_S", "0", "greater than 0"),  # as the other services' stops
        ("INDEXER_GRACEFUL_STOP_S", "-1", "greater than 0"),
        ("INDEXER_GRPC_PORT", "70000", "port number"),
        ("INDEXER_HTTP_PORT", "-1", "port number"),
        ("INDEXER_QUERY_MAX_IN_FLIGHT", "0", "greater than 0"),
    ],
)
def test_each_validation_error_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(Config, {variable: value})
    assert str(caught.value).startswith(f"{variable}=")
    assert expected in str(caught.value)


def test_retry_base_must_not_exceed_max() -> None:
    with pytest.raises(ConfigError, match="INDEXER_RETRY_BASE_S"):
        load(Config, {"INDEXER_RETRY_BASE_S": "20", "INDEXER_RETRY_MAX_S": "10"})


def test_help_lists_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tpipe indexer [--help]   (also: python -m indexer)")
    variables = [field.metadata["env"] for field in dataclasses.fields(Config)]
    assert "OPENSEARCH_URL" in variables
    for variable in variables:
        assert variable in out


def test_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INDEXER_BULK_MAX_DOCS", "lots")
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "INDEXER_BULK_MAX_DOCS" in err[0]


def test_a_ca_bundle_that_is_not_there_exits_2_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Otherwise it is found at the first request only, and the indexer stays not ready.
    monkeypatch.setenv("OPENSEARCH_URL", "https://127.0.0.1:9200")
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", str(tmp_path / "ca.pem"))
    monkeypatch.setattr("indexer.__main__.run", lambda *_, **__: None)  # never started

    assert main([]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"indexer: OPENSEARCH_CA_CERTS={str(tmp_path / 'ca.pem')!r}: cannot be read: "
        "No such file or directory"
    ]


@pytest.mark.parametrize("value", ["200ms", "1s", "30s", "2m", "-1"])
def test_refresh_interval_takes_opensearch_time_values(value: str) -> None:
    assert load(Config, {"INDEXER_REFRESH_INTERVAL": value}).refresh_interval == value


@pytest.mark.parametrize("value", ["0s", "1", "fast", "1 s", "-2", "1.5s"])
def test_refresh_interval_rejects_what_opensearch_would_not_take(value: str) -> None:
    with pytest.raises(ConfigError, match="INDEXER_REFRESH_INTERVAL"):
        load(Config, {"INDEXER_REFRESH_INTERVAL": value})
