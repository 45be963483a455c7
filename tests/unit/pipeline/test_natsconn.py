"""pipeline.natsconn: what the connection logs never show."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError

from pipeline import natsconn
from pipeline.config import load
from pipeline.settings import NatsSettings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@10.0.0.5:4222", "10.0.0.5:4222"),
        ("tls://tok3n@nats.example:4443", "nats.example:4443"),
        ("alice:s3cret@127.0.0.1:4222", "127.0.0.1:4222"),
        ("nats://[::1]:4222", "[::1]:4222"),
        ("nats://host.example", "host.example"),
        (urlparse("nats://alice:s3cret@10.0.0.5:4222"), "10.0.0.5:4222"),
        (None, ""),
    ],
)
def test_an_address_is_host_and_port_only(url: str | None, shown: str) -> None:
    assert natsconn.address(url) == shown


async def test_connect_retries_log_no_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load(
        NatsSettings,
        {"NATS_URL": "nats://alice:s3cret@127.0.0.1:1", "NATS_CONNECT_TIMEOUT_S": "0.2"},
    )
    with caplog.at_level(logging.WARNING, logger=natsconn.log.name), pytest.raises(TimeoutError):
        await asyncio.wait_for(natsconn.connect(settings, name="test"), timeout=1.0)
    assert caplog.records  # each failed try is logged
    assert "s3cret" not in caplog.text
    assert "alice" not in caplog.text


def test_dead_letters_are_kept_longer_than_the_events_streams() -> None:
    ages = {
        config.name: config.max_age for config in natsconn.stream_configs(load(NatsSettings, {}))
    }

    assert ages == {
        "TELEMETRY_RAW": 7 * 24 * 3600.0,
        "TELEMETRY_ENRICHED": 7 * 24 * 3600.0,
        "TELEMETRY_DLQ": 30 * 24 * 3600.0,
    }


class _ExistingStreams:
    """JetStream where every stream exists with another configuration (error 10058)."""

    def __init__(self) -> None:
        self.updated: list[StreamConfig] = []

    async def add_stream(self, config: StreamConfig) -> None:
        raise BadRequestError(code=400, err_code=10058, description="stream name already in use")

    async def update_stream(self, config: StreamConfig) -> None:
        self.updated.append(config)


async def test_an_existing_dlq_stream_gets_the_dead_letters_age() -> None:
    js = _ExistingStreams()
    settings = load(NatsSettings, {"STREAM_DLQ_MAX_AGE_S": "0", "STREAM_MAX_AGE_S": "3600"})

    await natsconn.ensure_streams(js, settings)  # type: ignore[arg-type]

    assert {config.name: config.max_age for config in js.updated} == {
        "TELEMETRY_RAW": 3600.0,
        "TELEMETRY_ENRICHED": 3600.0,
        "TELEMETRY_DLQ": 0.0,  # no age limit: kept until replayed or deleted
    }
