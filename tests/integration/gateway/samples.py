"""The original Swift client's sample batch, and helpers to build batches."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2

SAMPLE_BATCH: list[dict[str, Any]] = [
    {
        "event_id": "7f9c2ba4-e88f-11ed-a05b-0242ac120002",
        "session_id": "sess-42",
        "user_id": "user-123",
        "event_name": "item_purchased",
        "client_timestamp": "2023-10-26T10:00:00Z",
        "app_version": "2.3.1",
        "device_os": "iOS 17.2",
        "metadata": {"item_id": "sku-991", "price": "19.99"},
    },
    {
        "event_id": "8a1d3c55-e88f-11ed-a05b-0242ac120002",
        "session_id": "sess-42",
        "user_id": "user-123",
        "event_name": "screen_view",
        "client_timestamp": "2023-10-26T10:00:05.250Z",
        "app_version": "2.3.1",
        "device_os": "iOS 17.2",
        "metadata": {"screen": "checkout"},
    },
]

# The same two events as messages, built by hand (2023-10-26T10:00:00Z = 1698314400).
SAMPLE_EVENTS = [
    event_pb2.Event(
        event_id="7f9c2ba4-e88f-11ed-a05b-0242ac120002",
        session_id="sess-42",
        user_id="user-123",
        event_name="item_purchased",
        client_timestamp=Timestamp(seconds=1698314400),
        app_version="2.3.1",
        device_os="iOS 17.2",
        metadata={"item_id": "sku-991", "price": "19.99"},
    ),
    event_pb2.Event(
        event_id="8a1d3c55-e88f-11ed-a05b-0242ac120002",
        session_id="sess-42",
        user_id="user-123",
        event_name="screen_view",
        client_timestamp=Timestamp(seconds=1698314405, nanos=250_000_000),
        app_version="2.3.1",
        device_os="iOS 17.2",
        metadata={"screen": "checkout"},
    ),
]


def event(n: int, **overrides: Any) -> dict[str, Any]:
    """A valid event with id evt-<n>."""
    doc: dict[str, Any] = {
        "event_id": f"evt-{n}",
        "session_id": "sess-1",
        "user_id": "user-1",
        "event_name": "tap",
        "client_timestamp": "2024-05-01T12:00:00Z",
        "app_version": "1.0",
        "device_os": "iOS 17.2",
        "metadata": {"n": str(n)},
    }
    doc.update(overrides)
    return doc
