"""Helpers for the indexer's integration tests: events, publishing, counting, waiting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client
from opensearchpy import AsyncOpenSearch, TransportError
from telemetry.v1 import event_pb2
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import Config, Indexer
from pipeline import subjects
from pipeline.config import load

READY_TIMEOUT_S = 30.0
APP_ID = "shop"


def indexer_config(nats_url: str, opensearch_url: str, prefix: str, **extra: str) -> Config:
    env = {
        "NATS_URL": nats_url,
        "OPENSEARCH_URL": opensearch_url,
        "INDEXER_INDEX_PREFIX": prefix,
        "INDEXER_GRPC_PORT": "0",
        "INDEXER_HTTP_PORT": "0",
        "INDEXER_RETENTION_DAYS": "0",
        "INDEXER_FLUSH_INTERVAL_S": "0.05",
        "INDEXER_GRACEFUL_STOP_S": "10",
        **extra,
    }
    return load(Config, env)


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = READY_TIMEOUT_S, what: str = ""
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


async def wait_ready(indexer: Indexer) -> None:
    async def ready() -> bool:
        ok, _ = await indexer.ready()
        return ok

    await wait_for(ready, what="indexer readiness")


IndexerFactory = Callable[..., Awaitable[Indexer]]


def stamp(when: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


def enriched(
    event_id: str,
    *,
    when: datetime,
    corrected: datetime | None = None,
    received: datetime | None = None,
    user_id: str = "user-1",
    event_name: str = "app_opened",
    device_os: str = "iOS 17.2",
    os_name: str = "iOS",
    country: str = "GB",
    app_version: str = "1.0.0",
    session_id: str = "s-1",
    message: str = "",
    metadata: dict[str, str] | None = None,
    app_id: str = APP_ID,
) -> event_pb2.EnrichedEvent:
    corrected = corrected or when
    received = received or when + timedelta(seconds=1)
    return event_pb2.EnrichedEvent(
        event=event_pb2.Event(
            event_id=event_id,
            session_id=session_id,
            user_id=user_id,
            event_name=event_name,
            client_timestamp=stamp(when),
            metadata=metadata or {},
            app_version=app_version,
            device_os=device_os,
        ),
        received_at=stamp(received),
        enriched_at=stamp(received + timedelta(milliseconds=5)),
        corrected_timestamp=stamp(corrected),
        clock_status=event_pb2.CLOCK_STATUS_CORRECTED,
        os_name=os_name,
        os_version=device_os.split(" ")[-1],
        geo=event_pb2.Geo(country_code=country),
        event_message=message or event_name,
        app_id=app_id,
        request_id="r-1",
    )


async def publish(nc: Client, events: list[event_pb2.EnrichedEvent], *, msg_id: str = "") -> None:
    batch = event_pb2.EnrichedBatch(events=events, batch_id=msg_id, app_id=APP_ID)
    headers = {subjects.SCHEMA_HEADER: subjects.ENRICHED_SCHEMA}
    if msg_id:
        headers[subjects.MSG_ID_HEADER] = msg_id
    await nc.jetstream().publish(
        subjects.enriched_subject(APP_ID), batch.SerializeToString(), headers=headers
    )


async def publish_many(
    nc: Client, events: list[event_pb2.EnrichedEvent], *, per_batch: int
) -> None:
    for start in range(0, len(events), per_batch):
        await publish(nc, events[start : start + per_batch], msg_id=f"b{start}-{uuid.uuid4().hex}")


async def count(client: AsyncOpenSearch, prefix: str, query: dict[str, Any] | None = None) -> int:
    """Documents under the prefix; waits out the moment a new index's shard is starting (503)."""
    body = {"query": query or {"match_all": {}}}
    for _ in range(100):
        try:
            await client.indices.refresh(index=f"{prefix}*", allow_no_indices=True)
            answer = await client.count(index=f"{prefix}*", body=body, allow_no_indices=True)
            return int(answer["count"])
        except TransportError as err:
            if err.status_code != 503:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("OpenSearch kept answering 503")


async def wait_count(
    client: AsyncOpenSearch, prefix: str, expected: int, timeout_s: float = 60
) -> None:
    async def reached() -> bool:
        return await count(client, prefix) >= expected

    await wait_for(reached, timeout_s=timeout_s, what=f"{expected} documents")


def query_stub(indexer: Indexer) -> tuple[grpc.aio.Channel, qs_grpc.QueryServiceAsyncStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{indexer.grpc_port}")
    return channel, qs_grpc.QueryServiceStub(channel)


NOW = datetime.now(UTC).replace(microsecond=0)
