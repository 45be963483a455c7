"""`tpipe tail` across a NATS restart, on a private NATS the test stops and starts again
(the package's pipeline keeps its own): it goes on after the messages stored before it
started, and nats-py still has the private state it relies on to do so."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import nats
import orjson
import pytest
from telemetry.v1 import event_pb2

from pipeline import subjects
from tests.integration.tpipe.conftest import ROOT, tpipe_env
from tests.servers import NatsProcess
from tpipe import _cmd_tail

pytestmark = pytest.mark.integration

APP_ID = "tail-app"
LINE_TIMEOUT_S = 60.0


def _publish(url: str, event_ids: list[str]) -> None:
    """One enriched batch per event, as the enricher publishes them."""

    async def publish() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for event_id in event_ids:
                item = event_pb2.EnrichedEvent(
                    event=event_pb2.Event(event_id=event_id, event_name="app_open"), app_id=APP_ID
                )
                batch = event_pb2.EnrichedBatch(events=[item], batch_id=event_id, app_id=APP_ID)
                await js.publish(
                    subjects.enriched_subject(APP_ID),
                    batch.SerializeToString(),
                    headers={subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA},
                )
        finally:
            await nc.close()

    asyncio.run(publish())


def _stderr_line(tail: subprocess.Popen[str], starts: str) -> str:
    """The next line tail writes on stderr, which must start with `starts`."""
    assert tail.stderr is not None
    said = tail.stderr.readline()
    assert said.startswith(f"tpipe tail: {starts}"), said
    return said


def test_tail_after_a_nats_restart_prints_only_what_came_after_it_started(
    nats_server: NatsProcess,
) -> None:
    _publish(nats_server.url, [f"old-{i}" for i in range(3)])
    tail = subprocess.Popen(
        [sys.executable, "-m", "tpipe", "tail", "--format", "jsonl", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tpipe_env({"NATS_URL": nats_server.url}),
        cwd=ROOT,
    )
    new = f"new-{uuid.uuid4().hex[:8]}"
    try:
        _stderr_line(tail, "following telemetry.enriched.v1.>")
        nats_server.stop()
        _stderr_line(tail, "lost NATS: waiting for NATS at")
        nats_server.start()  # the same port and store: the stream and its messages are kept
        _stderr_line(tail, "NATS is back at")
        _publish(nats_server.url, [new])
        out, err = tail.communicate(timeout=LINE_TIMEOUT_S)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()

    assert tail.returncode == 0, err
    assert [orjson.loads(line)["event"]["event_id"] for line in out.splitlines()] == [new]


def test_an_ordered_subscription_keeps_the_stream_sequence_tail_resumes_after(
    nats_server: NatsProcess,
) -> None:
    """`resume_after` sets nats-py's private `_sub._jsi._sseq`: a nats-py without it fails
    here rather than letting tail start over from the stream's first message after a
    reconnect."""
    _publish(nats_server.url, ["one", "two"])

    async def subscribe() -> tuple[int, int]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(
                subjects.ENRICHED_SUBJECTS,
                stream=subjects.ENRICHED_STREAM,
                ordered_consumer=True,
                config=_cmd_tail.start_config(0),
            )
            before = sub._sub._jsi._sseq  # type: ignore[union-attr]
            _cmd_tail.resume_after(sub, 2)
            after = sub._sub._jsi._sseq  # type: ignore[union-attr]
            await sub.unsubscribe()
            return before, after
        finally:
            await nc.close()

    before, after = asyncio.run(subscribe())

    assert (before, after) == (0, 2)
