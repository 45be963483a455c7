"""Overload for 60 s: 512 clients against a gateway that admits 8 requests at once, new
batches aimed at twice the capacity measured just before. The gateway sheds with 429/503 and
Retry-After, its memory stays bounded, and nothing it accepted is lost.

The load generator shares the machine's two CPUs with the pipeline, so the rate it reaches
varies (0.6x to 2x capacity in new batches, 0.6x to 4.4x with retries, in runs on 2026-11-27):
what overloads the gateway in every run is concurrency, 64 times more clients than it admits.
The figures are printed, the share of capacity still accepted among them; that share is low
(3-5 % here) and not asserted: docs/reliability.md says why.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.faults.conftest import PipelineFactory
from tests.faults.harness import LoadGenerator, LoadResult, check
from tests.servers import NatsProcess

# Longer than the suite's 300 s: a fault test's own waits (accepted, settled) add up to more.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MEASURE_S = 5.0
OVERLOAD_S = 60.0
MAX_IN_FLIGHT = 8
RSS_BOUND_MB = 400.0
# Open connections offering the overload: enough that clients sleeping out a Retry-After
# do not throttle the offered rate.
OVERLOAD_CLIENTS = 512
BATCH_SIZE = 1
# A client under overload gives a batch up after this long (not accepted, so not "lost");
# retrying for ever would only multiply the load.
GIVE_UP_S = 5.0


class RssSampler:
    """Samples a process's resident memory (VmRSS) twice a second."""

    def __init__(self, pid: int) -> None:
        self._status = Path(f"/proc/{pid}/status")
        self.samples_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples_mb.append(self.read())

    def read(self) -> float:
        for line in self._status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS in {self._status}")

    def __enter__(self) -> RssSampler:
        self.samples_mb.append(self.read())
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_fault_overload_512_clients_60s(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url,
        opensearch_url=opensearch_url,
        index_prefix=prefix,
        overrides={"gateway": {"GATEWAY_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}},
    )
    pipeline.start()
    url = pipeline.gateway.base_url
    pid = pipeline.gateway.pid
    assert pid is not None

    # Capacity: as many requests as the gateway takes at once, back to back.
    measure = LoadGenerator(
        lambda: url, tag="capacity", batch_size=BATCH_SIZE, concurrency=MAX_IN_FLIGHT
    ).start()
    time.sleep(MEASURE_S)
    measured = measure.stop()
    capacity = measured.accepted_batches / MEASURE_S
    assert capacity > 0

    with RssSampler(pid) as rss:
        started = time.monotonic()
        overload = LoadGenerator(
            lambda: url,
            tag="overload",
            batch_size=BATCH_SIZE,
            concurrency=OVERLOAD_CLIENTS,
            rate_batches_s=2 * capacity,
            give_up_after_s=GIVE_UP_S,
        ).start()
        time.sleep(OVERLOAD_S)
        elapsed = time.monotonic() - started
        offered = overload.result.offered_batches / elapsed
        requests = sum(overload.result.statuses.values()) / elapsed
        goodput = overload.result.accepted_batches / elapsed
        result = overload.stop()

    shed = result.count_429 + result.count_503
    peak = max(rss.samples_mb)
    print(
        f"capacity {capacity:.0f} batches/s; new batches offered {offered:.0f}/s "
        f"({offered / capacity:.1f}x), requests with retries {requests:.0f}/s "
        f"({requests / capacity:.1f}x); accepted {goodput:.0f}/s ({goodput / capacity:.2f}x); "
        f"given up {result.given_up_batches}; shed {shed} "
        f"(429: {result.count_429}, 503: {result.count_503}); "
        f"gateway RSS {rss.samples_mb[0]:.0f} -> peak {peak:.0f} MB"
    )
    assert shed > 0  # it said no rather than queue without end
    assert result.accepted_batches > 0  # it kept accepting while shedding
    assert result.retry_after_missing == 0
    assert peak < RSS_BOUND_MB
    combined = LoadResult(
        accepted=measured.accepted | result.accepted,
        offered_batches=measured.offered_batches + result.offered_batches,
        accepted_batches=measured.accepted_batches + result.accepted_batches,
        given_up_batches=measured.given_up_batches + result.given_up_batches,
        statuses=measured.statuses + result.statuses,
    )
    check(
        "overload 512 clients 60 s",
        combined,
        opensearch_url,
        prefix,
        extra=f"capacity={capacity:.0f}/s offered={offered:.0f}/s requests={requests:.0f}/s "
        f"accepted={goodput:.0f}/s "
        f"shed={shed} rss_peak={peak:.0f}MB",
    )
