"""The typed client against the real services: ingest over gRPC, page through 1,000+ events."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import query_service_pb2

from tests.integration.tpipe.conftest import INDEXED_TIMEOUT_S, Running
from tests.procs import APP_ID, WRITE_KEY
from tpipe import errors
from tpipe.client import ClientSettings, Event, EventFilter, TelemetryClient

pytestmark = pytest.mark.integration

TOTAL = 1234
BATCH = 400


def events_of(user: str, count: int) -> list[Event]:
    now = time.time()
    out = []
    for i in range(count):
        stamp = Timestamp()
        stamp.FromNanoseconds(int((now - count + i) * 1e9))
        out.append(
            Event(
                event_id=str(uuid.uuid4()),
                session_id=f"{user}-s",
                user_id=user,
                event_name="screen_view" if i % 2 else "app_open",
                client_timestamp=stamp,
                app_version="1.0.0",
                device_os="iOS 18.0",
                metadata={"i": str(i)},
            )
        )
    return out


async def test_client_pages_through_more_than_a_thousand_events_exactly_once(
    running: Running,
) -> None:
    user = f"client-user-{uuid.uuid4().hex[:12]}"
    events = events_of(user, TOTAL)
    settings = ClientSettings(
        query_target=running.query_target,
        ingest_target=running.ingest_target,
        write_key=WRITE_KEY,
    )
    flt = EventFilter(user_ids=[user])
    async with TelemetryClient(settings) as client:
        accepted = 0
        for start in range(0, TOTAL, BATCH):
            receipt = await client.ingest(events[start : start + BATCH])
            assert not receipt.rejected
            accepted += receipt.accepted
        assert accepted == TOTAL

        deadline = time.monotonic() + INDEXED_TIMEOUT_S
        while (await client.aggregate(flt)).total_count < TOTAL:
            assert time.monotonic() < deadline, "events not indexed in time"
            await asyncio.sleep(0.3)

        seen = [item async for item in client.query_events(flt, page_size=100)]

        counts = await client.aggregate(
            flt, group_by=query_service_pb2.AGGREGATION_FIELD_EVENT_NAME
        )
        first = await client.query_page(flt, page_size=10)

    ids = [item.event.event_id for item in seen]
    assert len(ids) == TOTAL
    assert len(set(ids)) == TOTAL
    assert set(ids) == {event.event_id for event in events}
    assert all(item.app_id == APP_ID for item in seen)
    # Newest first, across page boundaries.
    stamps = [item.corrected_timestamp.ToNanoseconds() for item in seen]
    assert stamps == sorted(stamps, reverse=True)
    assert {c.value: c.count for c in counts.counts} == {"app_open": 617, "screen_view": 617}
    assert first.total_size == TOTAL
    assert len(first.events) == 10
    assert first.next_page_token


async def test_server_errors_arrive_as_the_clients_own_types(running: Running) -> None:
    settings = ClientSettings(
        query_target=running.query_target, ingest_target=running.ingest_target, write_key="bad"
    )
    async with TelemetryClient(settings) as client:
        with pytest.raises(errors.InvalidArgument, match="page_token"):
            await client.query_page(EventFilter(user_ids=["x"]), page_token="not-a-token")
        with pytest.raises(errors.Unauthenticated):
            await client.ingest(events_of("x", 1))


async def test_an_unreachable_service_is_unavailable_after_retries() -> None:
    from tests.servers import free_port

    settings = ClientSettings(query_target=f"127.0.0.1:{free_port()}", max_retries=1, deadline_s=2)
    async with TelemetryClient(settings) as client:
        with pytest.raises(errors.Unavailable):
            await client.query_page()
