"""A lost durable consumer, through a private NATS: created again, and nothing published is lost.

The first test needs NATS only (the writer and intake are stand-ins); the second runs the
whole indexer and needs the real OpenSearch too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest
from indexer_support import NOW, IndexerFactory, enriched, publish, wait_count, wait_for
from nats.aio.client import Client
from nats.js import api as js_api
from opensearchpy import AsyncOpenSearch

from indexer.bulk import BulkWriter
from indexer.consumer import EnrichedConsumer
from indexer.intake import Intake
from indexer.metrics import Metrics
from pipeline import natsconn, subjects

pytestmark = pytest.mark.integration

NAME = "indexer"


class AckingIntake:
    """Acks every message and keeps its bytes."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.in_progress = 0

    def received(self, deliveries: Sequence[natsconn.JetStreamDelivery]) -> None:
        return None

    async def handle(self, delivery: natsconn.JetStreamDelivery) -> None:
        self.data.append(delivery.data)
        await delivery.ack()

    async def touch(self) -> None:
        return None


class HealthyWriter:
    """Never holds intake: the intake stand-in writes nothing."""

    healthy = True

    async def wait_healthy(self) -> None:
        return None


async def test_a_deleted_consumer_is_created_again_and_fetching_goes_on(nc: Client) -> None:
    js = nc.jetstream()
    intake = AckingIntake()
    fetcher = EnrichedConsumer(
        js,
        cast(Intake, intake),
        cast(BulkWriter, HealthyWriter()),
        name=NAME,
        fetch_batch=10,
        max_ack_pending=100,
        ack_wait_s=30.0,
        pending_refresh_s=60.0,
        metrics=Metrics(),
    )
    await fetcher.start()
    try:
        before = await js.consumer_info(subjects.ENRICHED_STREAM, NAME)
        await js.publish(subjects.enriched_subject("shop"), b"one")

        async def got(count: int) -> bool:
            return len(intake.data) >= count

        await wait_for(lambda: got(1), timeout_s=15, what="the first message")
        await js.delete_consumer(subjects.ENRICHED_STREAM, NAME)
        await js.publish(subjects.enriched_subject("shop"), b"two")

        await wait_for(lambda: got(3), timeout_s=15, what="messages after the loss")
        # The new consumer reads the stream from its start: "one" again, then "two".
        assert intake.data == [b"one", b"one", b"two"]
        after = await js.consumer_info(subjects.ENRICHED_STREAM, NAME)
        for field in ("durable_name", "ack_policy", "ack_wait", "max_ack_pending", "max_deliver"):
            assert getattr(after.config, field) == getattr(before.config, field), field
        assert after.config.filter_subject == subjects.ENRICHED_SUBJECTS
        assert after.config.ack_policy == js_api.AckPolicy.EXPLICIT.value

        async def answered() -> bool:
            await asyncio.sleep(0)
            return fetcher.problem is None

        await wait_for(answered, timeout_s=15, what="fetches answered again")
    finally:
        await fetcher.close()


async def test_the_indexer_indexes_events_published_after_its_consumer_was_deleted(
    start_indexer: IndexerFactory, nc: Client, os_client: AsyncOpenSearch, prefix: str
) -> None:
    indexer = await start_indexer()
    await publish(nc, [enriched("before-loss", when=NOW)], msg_id="lost-a")
    await wait_count(os_client, prefix, 1)
    await nc.jetstream().delete_consumer(subjects.ENRICHED_STREAM, NAME)
    await publish(nc, [enriched("after-loss", when=NOW)], msg_id="lost-b")
    await wait_count(os_client, prefix, 2)

    async def ready() -> bool:
        ok, _ = await indexer.ready()
        return ok

    await wait_for(ready, what="ready again")
    # The first event came again with the new consumer: a duplicate, not a second document.
    duplicates = indexer.metrics.documents.labels(outcome="duplicate")

    async def counted() -> bool:
        return float(duplicates._value.get()) >= 1

    await wait_for(counted, what="the redelivered event counted as a duplicate")
