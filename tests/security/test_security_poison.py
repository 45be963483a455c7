"""Corrupt and oversized messages on every pipeline subject go to the DLQ with a reason,
and the pipeline keeps flowing: a good batch sent after them is indexed."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import nats
import orjson
import pytest
from telemetry.v1 import event_pb2

from pipeline import subjects
from tests.faults.harness import make_batch, settle
from tests.procs import APP_ID, WRITE_KEY, Pipeline
from tpipe import _cmd_dlq

pytestmark = pytest.mark.integration

OVERSIZED_BYTES = 900 * 1024  # near the broker's 1 MiB max_payload
WAIT_S = 60.0


def _poison(marker: bytes) -> dict[str, list[tuple[bytes, dict[str, str]]]]:
    """Per subject, messages that no stage can use, each carrying `marker`."""
    oversized = b"\xff\xff" + marker + bytes(OVERSIZED_BYTES)
    not_an_app = event_pb2.RawBatch(
        events=[event_pb2.Event(event_id=marker.decode(), event_name="x")],
        context=event_pb2.IngestContext(app_id="not an app id!"),
    ).SerializeToString()
    no_id = event_pb2.EnrichedBatch(
        events=[event_pb2.EnrichedEvent(event=event_pb2.Event(event_name=marker.decode()))]
    ).SerializeToString()
    common: list[tuple[bytes, dict[str, str]]] = [
        (b"\xff\xfe garbage " + marker, {}),
        (b"\x0a\x64" + marker, {}),  # a field claiming 100 bytes that are not there
        (oversized, {}),
    ]
    return {
        subjects.raw_subject(APP_ID): [
            *common,
            (b"", {"X-Marker": marker.decode()}),  # a batch of nothing
            (
                make_raw(marker),
                {subjects.SCHEMA_HEADER: "telemetry.v1.Nonsense", "X-Marker": marker.decode()},
            ),
            (not_an_app, {}),
        ],
        subjects.enriched_subject(APP_ID): [
            *common,
            (b"", {"X-Marker": marker.decode()}),  # a batch of nothing
            (no_id, {}),
        ],
    }


def make_raw(marker: bytes) -> bytes:
    return event_pb2.RawBatch(
        events=[event_pb2.Event(event_id=marker.decode(), event_name="x")]
    ).SerializeToString()


async def _publish(url: str, messages: dict[str, list[tuple[bytes, dict[str, str]]]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, items in messages.items():
            for data, headers in items:
                await js.publish(subject, data, headers=headers or None, timeout=10)
    finally:
        await nc.close()


async def _entries(url: str) -> list[_cmd_dlq.Entry]:
    nc = await nats.connect(url)
    try:
        return await _cmd_dlq.entries(nc.jetstream(), None)
    finally:
        await nc.close()


def _mine(entry: _cmd_dlq.Entry, marker: bytes) -> bool:
    return marker in entry.data or entry.headers.get("X-Marker") == marker.decode()


def test_security_poison_on_every_subject_goes_to_the_dlq(secured: Pipeline) -> None:
    marker = f"poison-{uuid.uuid4().hex[:12]}".encode()
    messages = _poison(marker)
    expected = sum(len(items) for items in messages.values())
    asyncio.run(_publish(secured.nats_url, messages))

    deadline = time.monotonic() + WAIT_S
    while True:
        found = [e for e in asyncio.run(_entries(secured.nats_url)) if _mine(e, marker)]
        if len(found) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    print(f"poison messages sent {expected}, dead-lettered {len(found)}")
    for entry in found:
        print(f"  {entry.stage:<8} {entry.source_subject:<32} {entry.size:>7} B  {entry.reason}")
    assert len(found) == expected
    assert all(entry.reason for entry in found)
    by_subject = {
        subject: sorted(e.stage for e in found if e.source_subject == subject)
        for subject in messages
    }
    assert by_subject == {
        subjects.raw_subject(APP_ID): ["enricher"] * 6,
        subjects.enriched_subject(APP_ID): ["indexer"] * 5,
    }
    # The oversized ones are kept whole, so a replay has what was sent.
    assert sum(1 for e in found if e.size > OVERSIZED_BYTES) == 2

    # The pipeline keeps flowing.
    batch = make_batch(20, "after-poison")
    answer = httpx.post(
        f"{secured.gateway.base_url}/v1/track",
        content=orjson.dumps(batch),
        headers={"Authorization": f"Bearer {WRITE_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    verdict = settle(
        secured.opensearch_url,
        secured.index_prefix,
        {e["event_id"] for e in batch},
        timeout_s=WAIT_S,
    )
    assert verdict.lost == []
    assert verdict.duplicated == {}
