"""The gateway's metrics: each rejection reason from the start, in one process or several."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess
from telemetry.v1 import event_pb2

from gateway._metrics import MULTIPROC_DIR_ENV, Metrics

ROOT = Path(__file__).resolve().parents[3]

REJECTION_REASONS = {
    name
    for name, number in event_pb2.RejectionReason.items()
    if number != event_pb2.REJECTION_REASON_UNSPECIFIED
}


def test_the_gateway_exports_each_rejection_reason_at_0() -> None:
    (family,) = [f for f in Metrics().registry.collect() if f.name == "gateway_events"]
    rejected = {
        s.labels["reason"]: s.value
        for s in family.samples
        if s.name == "gateway_events_total" and s.labels["outcome"] == "rejected"
    }
    assert rejected == dict.fromkeys(REJECTION_REASONS, 0.0)


_WORKER = """
from telemetry.v1 import event_pb2
from gateway._metrics import Metrics

rejection = event_pb2.EventRejection(reason=event_pb2.REJECTION_REASON_MISSING_FIELD)
Metrics().rejected([rejection] * {rejected})
"""


def test_gateway_workers_export_the_series_at_0_summed(tmp_path: Path) -> None:
    # GATEWAY_WORKERS=N: each worker writes its values to the shared folder, and /metrics
    # renders the sum over the workers' files; a series made and never counted is there too.
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        MULTIPROC_DIR_ENV: str(tmp_path),
    }
    for rejected in (2, 1):  # two workers
        code = _WORKER.format(rejected=rejected)
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))

    (family,) = [f for f in registry.collect() if f.name == "gateway_events"]
    values = {
        (s.labels["outcome"], s.labels["reason"]): s.value
        for s in family.samples
        if s.name == "gateway_events_total"
    }
    assert values == {
        ("accepted", ""): 0.0,
        ("unconfirmed", ""): 0.0,
        **{("rejected", reason): 0.0 for reason in REJECTION_REASONS},
        ("rejected", "REJECTION_REASON_MISSING_FIELD"): 3.0,
    }
    (publish,) = [f for f in registry.collect() if f.name == "gateway_publish_seconds"]
    counts = {s.labels["outcome"]: s.value for s in publish.samples if s.name.endswith("_count")}
    assert counts == {"acked": 0.0, "failed": 0.0}
