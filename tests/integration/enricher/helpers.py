"""Helpers for the enricher's integration tests: settings, raw batches, stream reading,
and the enricher as a subprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx
from nats.js import JetStreamContext
from nats.js import api as js_api
from telemetry.v1 import event_pb2

from enricher import Config, Enricher
from pipeline import subjects
from pipeline.config import load
from tests.servers import ROOT, free_port

READY_TIMEOUT_S = 30.0
POLL_S = 0.05


def enricher_env(nats_url: str, **overrides: str) -> dict[str, str]:
    """Settings for an enricher on the private server, on ports the OS chooses."""
    env = {
        "NATS_URL": nats_url,
        "ENRICHER_GRPC_PORT": "0",
        "ENRICHER_HTTP_PORT": "0",
        "ENRICHER_LAG_REFRESH_S": "0.2",
        "ENRICHER_FETCH_TIMEOUT_S": "0.2",
        "LOG_LEVEL": "WARNING",
    }
    env.update(overrides)
    return env


def enricher_config(nats_url: str, **overrides: str) -> Config:
    """The Config an enricher on the private server runs with."""
    return load(Config, enricher_env(nats_url, **overrides))


def raw_batch(
    *,
    app_id: str = "shop",
    n: int = 1,
    client_ip: str = "81.2.69.142",
    received_s: int | None = None,
    sent_offset_s: int | None = None,
    device_os: str = "iOS 17.2",
    batch_id: str = "",
) -> event_pb2.RawBatch:
    """A raw batch as the gateway publishes it, with `n` events of fresh ids."""
    received = int(time.time()) if received_s is None else received_s
    raw = event_pb2.RawBatch()
    ctx = raw.context
    ctx.received_at.seconds = received
    if sent_offset_s is not None:
        ctx.sent_at.seconds = received + sent_offset_s
    ctx.client_ip = client_ip
    ctx.app_id = app_id
    ctx.request_id = f"req-{uuid.uuid4().hex[:8]}"
    ctx.batch_id = batch_id or uuid.uuid4().hex
    for i in range(n):
        event = raw.events.add(
            event_id=str(uuid.uuid4()),
            session_id="s1",
            user_id="u1",
            event_name="item_purchased",
            app_version="1.0",
            device_os=device_os,
        )
        event.client_timestamp.seconds = received - i
        event.metadata["sku"] = f"A-{i}"
    return raw


async def publish_raw(
    js: JetStreamContext,
    raw: event_pb2.RawBatch | bytes,
    *,
    app_id: str = "shop",
    headers: Mapping[str, str] | None = None,
) -> int:
    """Publishes a raw message as the gateway would; returns its stream sequence."""
    data = raw if isinstance(raw, bytes) else raw.SerializeToString()
    out = {subjects.SCHEMA_HEADER: subjects.RAW_SCHEMA}
    out.update(headers or {})
    ack = await js.publish(
        subjects.raw_subject(app_id), data, stream=subjects.RAW_STREAM, headers=out
    )
    return int(ack.seq)


async def stream_count(js: JetStreamContext, stream: str) -> int:
    """Messages stored in `stream`."""
    info = await js.stream_info(stream)
    return int(info.state.messages)


async def wait_for_count(
    js: JetStreamContext, stream: str, expected: int, *, timeout_s: float = 60.0
) -> int:
    """Waits until `stream` holds at least `expected` messages; returns the count."""
    deadline = time.monotonic() + timeout_s
    count = await stream_count(js, stream)
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        count = await stream_count(js, stream)
    return count


FILLER_SUBJECT = "telemetry.enriched.v1.filler"


async def refuse_enriched(js: JetStreamContext) -> js_api.StreamConfig:
    """Makes the enriched stream refuse every new message (full at one filler message on
    FILLER_SUBJECT, discard new) while the raw one works; returns the configuration to put
    back. Call it after the enricher started: its start sets the streams' configuration."""
    await js.publish(FILLER_SUBJECT, b"", stream=subjects.ENRICHED_STREAM)
    config = (await js.stream_info(subjects.ENRICHED_STREAM)).config
    await js.update_stream(
        dataclasses.replace(config, max_msgs=1, discard=js_api.DiscardPolicy.NEW)
    )
    return config


async def read_stream(js: JetStreamContext, stream: str) -> list[js_api.RawStreamMsg]:
    """Every message stored in `stream`, in order."""
    info = await js.stream_info(stream)
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    if info.state.messages == 0:
        return []
    return [await js.get_msg(stream, seq) for seq in range(first, last + 1)]


async def settle(js: JetStreamContext, consumer: str = "enricher") -> js_api.ConsumerInfo:
    """Waits until the raw consumer has nothing pending or unacked; returns its info."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        info: js_api.ConsumerInfo = await js.consumer_info(subjects.RAW_STREAM, consumer)
        if (info.num_pending == 0 and info.num_ack_pending == 0) or time.monotonic() > deadline:
            return info
        await asyncio.sleep(POLL_S)


class EnricherProcess:
    """`python -m enricher` as a subprocess, with its observability port known."""

    def __init__(self, nats_url: str, log_path: Path, **overrides: str) -> None:
        self.http_port = free_port()
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"}
        env.update(enricher_env(nats_url, ENRICHER_HTTP_PORT=str(self.http_port), **overrides))
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enricher"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self) -> None:
        """Waits until /readyz says ready; fails when the process exits first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"enricher exited with {self.proc.returncode}")
                try:
                    resp = await client.get(f"http://127.0.0.1:{self.http_port}/readyz")
                    if resp.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(POLL_S)
        raise AssertionError("enricher not ready in time")

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of the process's /metrics."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.http_port}/metrics")).text
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        raise AssertionError(f"{wanted} not in /metrics")

    def kill(self) -> None:
        """SIGKILL: no chance to ack, flush or drain."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM, then wait for the graceful stop; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


async def wait_until_ready(service: Enricher) -> None:
    """Waits until the in-process enricher reports ready (connected, consumer bound)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ok, reason = await service.ready()
    while not ok:
        if time.monotonic() > deadline:
            raise AssertionError(f"enricher not ready: {reason}")
        await asyncio.sleep(POLL_S)
        ok, reason = await service.ready()
