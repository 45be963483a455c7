"""The running pipeline for the CLI and client tests, and a way to run `python -m tpipe`.

The pipeline (gateway, enricher, indexer as processes, a private NATS) starts once for the
package. It indexes into the shared OpenSearch under a prefix of its own, so it neither
sees nor touches anybody else's indices, and removes its own at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nats
import pytest

from pipeline.config import load
from pipeline.natsconn import ensure_streams
from pipeline.settings import NatsSettings
from tests.procs import WRITE_KEY, Pipeline, delete_indices
from tests.servers import NatsProcess

ROOT = Path(__file__).resolve().parents[3]
COMMAND_TIMEOUT_S = 120.0
INDEXED_TIMEOUT_S = 60.0
T = TypeVar("T")


@dataclass
class Running:
    """The pipeline and the environment the CLI needs to reach it."""

    pipeline: Pipeline
    nats_url: str
    env: dict[str, str]

    @property
    def query_target(self) -> str:
        return f"127.0.0.1:{self.pipeline.indexer_grpc_port}"

    @property
    def ingest_target(self) -> str:
        return f"127.0.0.1:{self.pipeline.gateway_grpc_port}"


@pytest.fixture(scope="package")
def running(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Gateway, enricher and indexer on a private NATS and the test OpenSearch."""
    root = tmp_path_factory.mktemp("tpipe-cli")
    nats = NatsProcess(root / "nats")
    nats.start()
    pipeline = Pipeline(
        nats_url=nats.url,
        opensearch_url=opensearch_url,
        index_prefix=f"cli-{uuid.uuid4().hex[:12]}-",
        log_dir=root,
    )
    env = {
        "TPIPE_GATEWAY_URL": pipeline.gateway.base_url,
        "TPIPE_WRITE_KEY": WRITE_KEY,
        "TPIPE_QUERY_TARGET": f"127.0.0.1:{pipeline.indexer_grpc_port}",
        "NATS_URL": nats.url,
    }
    try:
        pipeline.start()
        yield Running(pipeline=pipeline, nats_url=nats.url, env=env)
    finally:
        pipeline.stop()
        nats.stop()
        delete_indices(opensearch_url, pipeline.index_prefix)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    """A NATS of its own, with the pipeline's streams, restartable on its port and store."""
    server = NatsProcess(tmp_path / "nats")
    server.start()
    try:
        asyncio.run(_with_streams(server.url))
        yield server
    finally:
        server.stop()


async def _with_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(), load(NatsSettings, {"NATS_URL": url}))
    finally:
        await nc.close()


def tpipe_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a `python -m tpipe` process: ours, the repo on the path, `extra`."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "gen"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.fixture
def tpipe(running: Running) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `python -m tpipe <args>` against the pipeline; returns the finished process."""

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tpipe", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=tpipe_env(running.env),
            cwd=ROOT,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    return run


def _eventually(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + INDEXED_TIMEOUT_S
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.3)
    raise AssertionError(f"not within {INDEXED_TIMEOUT_S} s: {what}")


@pytest.fixture
def eventually() -> Callable[[Callable[[], T | None], str], T]:
    """Polls a probe until it returns something other than None, within a bound."""
    return _eventually
