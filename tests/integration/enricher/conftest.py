"""Fixtures for the enricher's integration tests: a private nats-server, the enricher in-process
or as subprocesses, and helpers to publish raw batches and read the streams back.

Each test gets its own nats-server (tests/servers.py), so tests that kill and restart
things cannot disturb anyone else. A missing nats-server is an error, never a skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from enricher import Enricher
from pipeline import natsconn
from tests.integration.enricher.helpers import (
    EnricherProcess,
    enricher_config,
    wait_until_ready,
)
from tests.servers import NatsProcess


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    """A nats-server with JetStream of this test's own."""
    server = NatsProcess(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def js(nats_server: NatsProcess) -> AsyncIterator[JetStreamContext]:
    """A JetStream client on the private server, with the pipeline's streams created."""
    nc: Client = await nats.connect(nats_server.url)
    context = nc.jetstream()
    await natsconn.ensure_streams(context, enricher_config(nats_server.url))
    try:
        yield context
    finally:
        await nc.close()


@pytest.fixture
async def enricher(nats_server: NatsProcess, js: JetStreamContext) -> AsyncIterator[Enricher]:
    """An enricher running in this process."""
    service = Enricher(enricher_config(nats_server.url))
    await service.start()
    await wait_until_ready(service)
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def spawn(nats_server: NatsProcess, tmp_path: Path) -> Iterator[Callable[..., EnricherProcess]]:
    """Starts enricher subprocesses on the private server; stops every one at the end."""
    started: list[EnricherProcess] = []

    def start(**overrides: str) -> EnricherProcess:
        log_path = tmp_path / f"enricher-{len(started)}.log"
        process = EnricherProcess(nats_server.url, log_path, **overrides)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
