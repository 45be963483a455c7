"""End to end, as a client would: POST a batch, then find it by every read path."""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx
import orjson
import pytest
from telemetry.v1 import query_service_pb2, query_service_pb2_grpc

from tests.procs import READ_KEY, WRITE_KEY, Pipeline

pytestmark = pytest.mark.e2e

SEARCHABLE_TIMEOUT_S = 60.0
T = TypeVar("T")


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sample_batch(user_id: str = "user-123") -> list[dict[str, Any]]:
    """Two events shaped exactly as the Swift client sends them, with fresh ids."""
    now = datetime.now(UTC)
    session = f"sess-{uuid.uuid4().hex[:8]}"
    return [
        {
            "event_id": str(uuid.uuid4()),
            "session_id": session,
            "user_id": user_id,
            "event_name": "item_purchased",
            "client_timestamp": _rfc3339(now - timedelta(seconds=5)),
            "app_version": "2.3.1",
            "device_os": "iOS 17.2",
            "metadata": {"item_id": "sku-991", "price": "19.99"},
        },
        {
            "event_id": str(uuid.uuid4()),
            "session_id": session,
            "user_id": user_id,
            "event_name": "screen_view",
            "client_timestamp": _rfc3339(now),
            "app_version": "2.3.1",
            "device_os": "iOS 17.2",
            "metadata": {"screen": "checkout"},
        },
    ]


def eventually(probe: Callable[[], T | None], what: str) -> T:
    """Polls `probe` until it returns something, within the searchable timeout."""
    deadline = time.monotonic() + SEARCHABLE_TIMEOUT_S
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.25)
    raise AssertionError(f"not within {SEARCHABLE_TIMEOUT_S} s: {what}")


def post(pipeline: Pipeline, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{pipeline.gateway.base_url}/v1/track",
        content=body,
        headers={"Authorization": f"Bearer {WRITE_KEY}", "Content-Type": "application/json"}
        | headers,
        timeout=30,
    )


def query_events(pipeline: Pipeline, **filters: Any) -> query_service_pb2.QueryEventsResponse:
    """One QueryEvents call; UNAVAILABLE (e.g. a daily index still being created) is retried."""
    with grpc.insecure_channel(f"127.0.0.1:{pipeline.indexer_grpc_port}") as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        request = query_service_pb2.QueryEventsRequest(
            filter=query_service_pb2.EventFilter(**filters), page_size=1000
        )

        def call() -> query_service_pb2.QueryEventsResponse | None:
            try:
                response: query_service_pb2.QueryEventsResponse = stub.QueryEvents(
                    request, timeout=10
                )
            except grpc.RpcError as err:
                if err.code() is grpc.StatusCode.UNAVAILABLE:
                    return None
                raise
            return response

        return eventually(call, "QueryService available")


def documents_by_id(pipeline: Pipeline, event_ids: list[str]) -> dict[str, int]:
    """How many documents each event id has across all the pipeline's indices."""
    body = {"size": 0, "query": {"terms": {"event_id": event_ids}}}
    body["aggs"] = {"ids": {"terms": {"field": "event_id", "size": len(event_ids) + 10}}}
    response = httpx.post(
        f"{pipeline.opensearch_url}/telemetry-*/_search?request_cache=false", json=body, timeout=30
    )
    response.raise_for_status()
    buckets = response.json()["aggregations"]["ids"]["buckets"]
    return {bucket["key"]: bucket["doc_count"] for bucket in buckets}


def wait_indexed(pipeline: Pipeline, event_ids: list[str]) -> dict[str, int]:
    def probe() -> dict[str, int] | None:
        httpx.post(f"{pipeline.opensearch_url}/telemetry-*/_refresh", timeout=30)
        counts = documents_by_id(pipeline, event_ids)
        return counts if set(counts) == set(event_ids) else None

    return eventually(probe, f"{len(event_ids)} events searchable")


def test_the_swift_sample_batch_is_found_by_every_read_path(pipeline: Pipeline) -> None:
    user = f"user-{uuid.uuid4().hex[:10]}"
    batch = sample_batch(user)
    ids = [event["event_id"] for event in batch]

    response = post(pipeline, orjson.dumps(batch))

    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
    assert response.json()["rejected"] == []

    # gRPC QueryEvents, newest first.
    def by_grpc() -> query_service_pb2.QueryEventsResponse | None:
        found = query_events(pipeline, user_ids=[user])
        return found if len(found.events) == 2 else None

    found = eventually(by_grpc, "QueryEvents finds both events")
    assert [e.event.event_id for e in found.events] == [ids[1], ids[0]]
    first = found.events[1]
    assert first.event.metadata == {"item_id": "sku-991", "price": "19.99"}
    assert first.os_name == "iOS"
    assert first.os_version == "17.2"
    assert first.app_id == "e2e-app"

    # The JSON query route, with a read key.
    listed = httpx.get(
        f"{pipeline.gateway.base_url}/v1/events",
        params={"user_id": user},
        headers={"Authorization": f"Bearer {READ_KEY}"},
        timeout=30,
    )
    assert listed.status_code == 200, listed.text
    assert sorted(e["event_id"] for e in listed.json()["events"]) == sorted(ids)


def test_the_original_opensearch_query_works_unchanged(pipeline: Pipeline) -> None:
    batch = sample_batch("user-123")
    assert post(pipeline, orjson.dumps(batch)).status_code == 202
    wait_indexed(pipeline, [event["event_id"] for event in batch])

    query = {
        "query": {
            "bool": {
                "must": [
                    {"term": {"user_id": {"value": "user-123"}}},
                    {"term": {"event_name": {"value": "item_purchased"}}},
                ],
                "filter": [{"range": {"client_timestamp": {"gte": "now-1d/d"}}}],
            }
        }
    }
    response = httpx.post(
        f"{pipeline.opensearch_url}/telemetry-*/_search?size=1000", json=query, timeout=30
    )
    response.raise_for_status()
    hits = [hit["_source"]["event_id"] for hit in response.json()["hits"]["hits"]]
    assert batch[0]["event_id"] in hits
    assert batch[1]["event_id"] not in hits  # a screen_view, not a purchase


def test_a_retried_batch_is_stored_once(pipeline: Pipeline) -> None:
    batch = sample_batch(f"user-{uuid.uuid4().hex[:10]}")
    ids = [event["event_id"] for event in batch]
    body = orjson.dumps(batch)
    duplicates_before = _duplicate_count(pipeline)  # the pipeline is shared by the module

    first = post(pipeline, body, **{"Idempotency-Key": f"k-{uuid.uuid4()}"})
    assert first.status_code == 202, first.text
    # The same request again: recognised at the gateway.
    again = post(pipeline, body, **{"Idempotency-Key": first.request.headers["Idempotency-Key"]})
    assert again.status_code == 202, again.text
    assert again.json().get("duplicate") is True
    # The same events under another key: they travel the whole pipeline again.
    other = post(pipeline, body, **{"Idempotency-Key": f"k-{uuid.uuid4()}"})
    assert other.status_code == 202, other.text

    wait_indexed(pipeline, ids)

    # Let the second copy reach OpenSearch too: it is counted as a duplicate there.
    def duplicates_seen() -> bool | None:
        return True if _duplicate_count(pipeline) - duplicates_before >= len(ids) else None

    eventually(duplicates_seen, "the indexer saw the retried events")
    assert documents_by_id(pipeline, ids) == {event_id: 1 for event_id in ids}


def _duplicate_count(pipeline: Pipeline) -> float:
    total = 0.0
    for line in pipeline.indexer.metrics().splitlines():
        if line.startswith("indexer_documents_total") and 'outcome="duplicate"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_gzip_mixed_and_unicode_batches_round_trip(pipeline: Pipeline) -> None:
    user = f"user-{uuid.uuid4().hex[:10]}"
    good = sample_batch(user)
    good[0]["metadata"] = {"greeting": "こんにちは", "emoji": "🚀", "accent": "crème brûlée"}
    bad = dict(good[1], event_id=str(uuid.uuid4()), client_timestamp="yesterday")
    body = gzip.compress(
        orjson.dumps({"sent_at": good[1]["client_timestamp"], "events": [*good, bad]})
    )

    response = post(pipeline, body, **{"Content-Encoding": "gzip"})

    assert response.status_code == 202, response.text
    receipt = response.json()
    assert receipt["accepted"] == 2
    assert [(r["index"], r["event_id"], r["reason"]) for r in receipt["rejected"]] == [
        (2, bad["event_id"], "REJECTION_REASON_INVALID_TIMESTAMP")
    ]

    def by_grpc() -> query_service_pb2.QueryEventsResponse | None:
        found = query_events(pipeline, user_ids=[user])
        return found if len(found.events) == 2 else None

    found = eventually(by_grpc, "both valid events")
    stored = {e.event.event_id: e for e in found.events}
    assert set(stored) == {good[0]["event_id"], good[1]["event_id"]}
    assert dict(stored[good[0]["event_id"]].event.metadata) == good[0]["metadata"]
    # Free text reaches the unicode metadata too.
    assert [e.event.event_id for e in query_events(pipeline, text="こんにちは").events] == [
        good[0]["event_id"]
    ]
