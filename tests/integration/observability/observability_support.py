"""Helpers of the observability tests: events to send, Prometheus samples, waiting."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

WAIT_TIMEOUT_S = 60.0


def events(count: int, *, name: str = "obs_check") -> list[dict[str, Any]]:
    """`count` valid events in the Swift client's JSON, with fresh ids and the current time."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return [
        {
            "event_id": str(uuid.uuid4()),
            "session_id": "sess-obs",
            "user_id": "user-obs",
            "event_name": name,
            "client_timestamp": now,
            "app_version": "1.0.0",
            "device_os": "iOS 17.2",
            "metadata": {"n": str(n)},
        }
        for n in range(count)
    ]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


def wait_until(check: Callable[[], bool], *, what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    """Polls `check` until it holds; fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
