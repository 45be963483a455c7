"""pipeline.natsconn: what the connection logs never show."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import pytest

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
