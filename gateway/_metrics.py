"""The gateway's observability metrics, in its own registry.

Under `GATEWAY_WORKERS=N` the supervisor gives its workers a shared
PROMETHEUS_MULTIPROC_DIR: each worker then writes its values to files there, and whichever
worker answers /metrics reports the sum over all of them (the kernel picks the worker, so
a per-worker answer would be a random share).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from telemetry.v1 import event_pb2

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters, gauges and histograms of one gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests answered, by route template and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "gateway_grpc_requests_total",
            "gRPC calls answered, by method and canonical code",
            ["method", "code"],
            registry=self.registry,
        )
        self.events = Counter(
            "gateway_events_total",
            "events judged: accepted (durable), unconfirmed (answered 503 but may be stored,"
            " in whole or in part: no ack in time) or rejected, by rejection reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.duplicate_batches = Counter(
            "gateway_duplicate_batches_total",
            "batches JetStream recognised as retries of stored ones",
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "gateway_publish_seconds",
            "time from publishing a batch to JetStream's answer, seconds, by outcome:"
            " acked, or failed (not acked: refused, not connected, an error, or timed out,"
            " when it may be stored)",
            ["outcome"],
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "ingest requests being handled now",
            registry=self.registry,
            multiprocess_mode="livesum",  # workers' gauges add up; a stopped one's go away
        )
        self._accepted = self.events.labels(outcome="accepted", reason="")
        self._unconfirmed = self.events.labels(outcome="unconfirmed", reason="")
        # Each rejection reason is exported from the start too, at 0: a series that first
        # appears at 1 has no increase() in Prometheus.
        for name, number in event_pb2.RejectionReason.items():
            if number != event_pb2.REJECTION_REASON_UNSPECIFIED:
                self.events.labels(outcome="rejected", reason=name)
        # Both outcomes are exported from the start: a failure rate reads 0, not absent.
        self._acked = self.publish_seconds.labels(outcome="acked")
        self._failed = self.publish_seconds.labels(outcome="failed")
        self.exposed = _exposed(self.registry)

    def accepted(self, count: int) -> None:
        """Counts events made durable."""
        self._accepted.inc(count)

    def unconfirmed(self, count: int) -> None:
        """Counts events of a batch answered 503 that JetStream may have stored all the same
        (in whole or, for a split batch, in part)."""
        self._unconfirmed.inc(count)

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """Times one batch's publish: "acked" when the block returns, "failed" when it raises
        (a cancelled publish, which got no answer, is not observed)."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self._failed.observe(time.perf_counter() - started)
            raise
        self._acked.observe(time.perf_counter() - started)

    def rejected(self, rejections: Iterable[event_pb2.EventRejection]) -> None:
        """Counts rejected events by reason (one increment per reason, not per event)."""
        tally: dict[int, int] = {}
        for rejection in rejections:
            tally[rejection.reason] = tally.get(rejection.reason, 0) + 1
        for reason, count in tally.items():
            name = event_pb2.RejectionReason.Name(reason)  # type: ignore[arg-type]
            self.events.labels(outcome="rejected", reason=name).inc(count)


def _exposed(own: CollectorRegistry) -> CollectorRegistry:
    """What /metrics renders: this process's registry, or every worker's values summed."""
    shared = os.environ.get(MULTIPROC_DIR_ENV)
    if not shared:
        return own
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
    return registry
