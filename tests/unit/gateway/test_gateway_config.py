"""GatewayConfig: defaults, every validation error, --help and exit codes."""

from __future__ import annotations

import dataclasses

import pytest

import gateway.__main__
from gateway import config as cfg
from gateway.__main__ import main
from gateway.config import GatewayConfig
from pipeline.config import load
from pipeline.errors import ConfigError


def test_defaults() -> None:
    config = load(GatewayConfig, {})

    assert (config.host, config.http_port, config.grpc_port) == ("127.0.0.1", 3000, 50051)
    assert config.query_target == cfg.DEFAULT_QUERY_TARGET == "127.0.0.1:50053"
    assert config.publish_timeout_s == cfg.DEFAULT_PUBLISH_TIMEOUT_S
    assert config.max_in_flight == cfg.DEFAULT_MAX_IN_FLIGHT
    assert config.max_in_flight_bytes == cfg.DEFAULT_MAX_IN_FLIGHT_BYTES
    assert config.max_body_bytes == cfg.DEFAULT_MAX_BODY_BYTES
    assert config.max_decompressed_bytes == cfg.DEFAULT_MAX_DECOMPRESSED_BYTES
    assert config.max_events_per_batch == cfg.DEFAULT_MAX_EVENTS_PER_BATCH
    assert config.write_keys == ()
    assert config.read_keys == ()
    assert config.keys_file == ""
    assert config.trusted_proxies == ()
    assert config.rate_limit_rps == 0.0
    assert config.rate_limit_burst == cfg.DEFAULT_RATE_LIMIT_BURST
    assert config.nats_url == ("nats://127.0.0.1:4222",)


def test_values_are_read_from_the_environment() -> None:
    config = load(
        GatewayConfig,
        {
            "GATEWAY_HTTP_PORT": "8080",
            "GATEWAY_WRITE_KEYS": "k1:app-a, k2:app-b",
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,::1",
            "GATEWAY_MAX_IN_FLIGHT": "7",
        },
    )

    assert config.http_port == 8080
    assert config.write_keys == ("k1:app-a", "k2:app-b")
    assert config.trusted_proxies == ("10.0.0.0/8", "::1")
    assert config.max_in_flight == 7


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("GATEWAY_HTTP_PORT", "70000"),
        ("GATEWAY_GRPC_PORT", "-1"),
        ("GATEWAY_HTTP_PORT", "http"),
        ("GATEWAY_WRITE_KEYS", "just-a-key"),
        ("GATEWAY_READ_KEYS", ":name"),
        ("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("GATEWAY_PUBLISH_TIMEOUT_S", "0"),
        ("GATEWAY_MAX_IN_FLIGHT", "0"),
        ("GATEWAY_MAX_IN_FLIGHT_BYTES", "0"),
        ("GATEWAY_RETRY_AFTER_S", "-1"),
        ("GATEWAY_RATE_LIMIT_RPS", "-1"),
        ("GATEWAY_RATE_LIMIT_BURST", "0"),
        ("GATEWAY_MAX_BODY_BYTES", "0"),
        ("GATEWAY_MAX_DECOMPRESSED_BYTES", "0"),
        ("GATEWAY_MAX_EVENTS_PER_BATCH", "0"),
        ("GATEWAY_MAX_FIELD_CHARS", "0"),
        ("GATEWAY_MAX_EVENT_ID_CHARS", "0"),
        ("GATEWAY_MAX_METADATA_ENTRIES", "-1"),
        ("GATEWAY_MAX_METADATA_KEY_CHARS", "0"),
        ("GATEWAY_MAX_METADATA_VALUE_CHARS", "0"),
        ("GATEWAY_QUERY_TIMEOUT_S", "-2"),
        ("GATEWAY_GRACEFUL_STOP_S", "0"),
    ],
)
def test_each_invalid_setting_names_its_variable(env: str, value: str) -> None:
    with pytest.raises(ConfigError, match=env):
        load(GatewayConfig, {env: value})


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("usage: tpipe gateway [--help]   (also: python -m gateway)")
    for field in dataclasses.fields(GatewayConfig):
        assert field.metadata["env"] in out


def test_an_unexpected_argument_exits_2_naming_the_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--bogus"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("gateway: unexpected arguments: --bogus\n")
    assert "usage: tpipe gateway" in err


def test_bad_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "99999")

    assert main([]) == 2

    err = capsys.readouterr().err
    assert "GATEWAY_HTTP_PORT" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", ["1", "3"])
def test_one_port_for_both_servers_exits_2_naming_both(
    workers: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under GATEWAY_WORKERS both binds would share the port, each taking the other's calls.
    monkeypatch.setenv("GATEWAY_WRITE_KEYS", "unit-key-0123456789:app")
    monkeypatch.setenv("GATEWAY_WORKERS", workers)
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "18999")
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "18999")
    monkeypatch.setattr(gateway.__main__, "supervise", lambda _: 0)  # nothing starts
    monkeypatch.setattr(gateway.__main__.service, "run", lambda *_, **__: 0)

    assert main([]) == 2

    err = capsys.readouterr().err
    assert err == (
        "gateway: GATEWAY_HTTP_PORT and GATEWAY_GRPC_PORT are both 18999: give each server a"
        " port of its own\n"
    )


def test_no_keys_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("GATEWAY_WRITE_KEYS", "GATEWAY_READ_KEYS", "GATEWAY_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)

    assert main([]) == 2
    assert "no keys" in capsys.readouterr().err


def test_bad_app_id_in_keys_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_WRITE_KEYS", "k1:app.with.dots")

    assert main([]) == 2
    assert "app.with.dots" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "value", "problem"),
    [
        ("GATEWAY_WRITE_KEYS", "wk-secret-1:app,wk-secret-2", "entry 2 of 2 has no ':'"),
        ("GATEWAY_WRITE_KEYS", "wk-secret-1:,wk-secret-2:app", "entry 1 of 2 has no id"),
        ("GATEWAY_READ_KEYS", "rk-secret-1:ops, :ops", "entry 2 of 2 has no key"),
        ("GATEWAY_READ_KEYS", "rk-secret-1 :ops", "entry 1 of 1: the key ends with whitespace"),
    ],
)
def test_a_bad_key_entry_is_named_by_its_position_never_by_its_text(
    env: str,
    value: str,
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError) as err:
        load(GatewayConfig, {env: value})
    assert str(err.value).startswith(f"{env}: {problem}")
    assert "secret" not in str(err.value)

    monkeypatch.setenv(env, value)
    assert main([]) == 2
    out = capsys.readouterr()
    assert problem in out.err
    assert "secret" not in out.err + out.out


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:50053",
        "indexer.internal:50053",
        "[::1]:50053",
        "dns:///indexer.internal:50053",
        "dns://10.0.0.2/indexer.internal:50053",
        "dns:indexer.internal:50053",
        "ipv4:10.0.0.1:50053,10.0.0.2:50053",
        "ipv6:[::1]:50053",
        "unix:/run/indexer.sock",
        "unix:///run/indexer.sock",
        "unix-abstract:indexer",
    ],
)
def test_the_query_target_takes_what_grpc_dials(target: str) -> None:
    assert load(GatewayConfig, {"GATEWAY_QUERY_TARGET": target}).query_target == target


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("nohostport", "has no port: must be host:port"),  # gRPC would dial port 443
        ("dns:///indexer", "has no port: must be host:port"),
        ("ipv4:10.0.0.1:50053,10.0.0.2", "has no port: must be host:port"),
        (":50053", "has no host: must be host:port"),
        ("indexer:0", "has a port that is not a number from 1 to 65535"),
        ("indexer:http", "has a port that is not a number from 1 to 65535"),
        ("::1:50053", "has an IPv6 address that is not in brackets"),
        ("http://indexer:50053", "must be host:port"),
        ("unix:", "names no socket"),
    ],
)
def test_a_query_target_grpc_cannot_dial_stops_the_gateway_at_start(
    target: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(GatewayConfig, {"GATEWAY_QUERY_TARGET": target})
    assert str(err.value).startswith(f"GATEWAY_QUERY_TARGET={target!r}: {problem}")


def test_a_bad_trusted_proxy_shows_the_setting_as_written() -> None:
    with pytest.raises(ConfigError) as err:
        load(GatewayConfig, {"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 10.0.0.0/33"})
    assert str(err.value) == (
        "GATEWAY_TRUSTED_PROXIES='10.0.0.0/8, 10.0.0.0/33': '10.0.0.0/33' is not an IP network"
        " (CIDR)"
    )
