"""The enricher as real processes (`python -m enricher`): SIGKILL and restart, and two sharing
one consumer. Every raw event must reach the enriched stream exactly once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nats.js import JetStreamContext
from telemetry.v1 import event_pb2

from pipeline import subjects
from tests.integration.enricher.helpers import (
    EnricherProcess,
    publish_raw,
    raw_batch,
    read_stream,
    settle,
    stream_count,
    wait_for_count,
)

pytestmark = pytest.mark.integration


async def _publish_many(js: JetStreamContext, messages: int, events: int) -> set[str]:
    """Publishes `messages` raw batches; returns every event id."""
    ids: set[str] = set()
    for _ in range(messages):
        raw = raw_batch(n=events)
        ids.update(e.event_id for e in raw.events)
        await publish_raw(js, raw)
    return ids


async def _enriched_event_ids(js: JetStreamContext) -> tuple[int, list[str]]:
    """(enriched messages, every event id in them, repeats kept)."""
    msgs = await read_stream(js, subjects.ENRICHED_STREAM)
    ids = [
        e.event.event_id
        for msg in msgs
        for e in event_pb2.EnrichedBatch.FromString(msg.data or b"").events
    ]
    return len(msgs), ids


async def test_sigkill_mid_stream_then_restart_loses_and_repeats_nothing(
    js: JetStreamContext, spawn: Callable[..., EnricherProcess]
) -> None:
    messages, events = 3000, 10
    sent_ids = await _publish_many(js, messages, events)
    # Small fetches from several loops keep messages fetched-but-unacked at each kill;
    # a short ack wait brings them back quickly to the next process.
    settings = {
        "ENRICHER_FETCH_BATCH": "8",
        "ENRICHER_CONCURRENCY": "4",
        "ENRICHER_ACK_WAIT_S": "2",
        "ENRICHER_PUBLISH_TIMEOUT_S": "1",
    }
    for fraction in (0.1, 0.4, 0.7):
        victim = spawn(**settings)
        await victim.wait_ready()
        await wait_for_count(js, subjects.ENRICHED_STREAM, int(messages * fraction))
        victim.kill()
        at_kill = await stream_count(js, subjects.ENRICHED_STREAM)
        assert at_kill < messages, "each kill must land mid-stream"

    last = spawn(**settings)
    await last.wait_ready()
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, messages, timeout_s=120) == messages
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)

    count, ids = await _enriched_event_ids(js)
    assert count == messages
    assert len(ids) == messages * events
    assert set(ids) == sent_ids
    assert last.terminate() == 0


async def test_two_processes_share_the_consumer_and_enrich_each_batch_once(
    js: JetStreamContext, spawn: Callable[..., EnricherProcess]
) -> None:
    settings = {"ENRICHER_FETCH_BATCH": "4", "ENRICHER_CONCURRENCY": "2"}
    one, two = spawn(**settings), spawn(**settings)
    await one.wait_ready()
    await two.wait_ready()
    messages, events = 2000, 5
    sent_ids = await _publish_many(js, messages, events)
    assert await wait_for_count(js, subjects.ENRICHED_STREAM, messages, timeout_s=120) == messages
    info = await settle(js)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)

    count, ids = await _enriched_event_ids(js)
    assert count == messages
    assert len(ids) == len(set(ids)) == messages * events
    assert set(ids) == sent_ids
    # The stream alone cannot tell: JetStream drops a second publish of a batch by its id.
    # Each raw message enriched by exactly one of the two, and none published again.
    done_one = await one.metric("enricher_messages_total", outcome="enriched")
    done_two = await two.metric("enricher_messages_total", outcome="enriched")
    assert done_one > 0
    assert done_two > 0
    assert done_one + done_two == messages
    assert await one.metric("enricher_duplicates_total") == 0
    assert await two.metric("enricher_duplicates_total") == 0
    assert one.terminate() == 0
    assert two.terminate() == 0
