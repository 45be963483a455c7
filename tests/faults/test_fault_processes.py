"""Services killed or stopped under load: nothing that got a 202 is lost or doubled."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import PipelineFactory
from tests.faults.harness import LoadGenerator, check
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration

RATE_BATCHES_S = 30.0  # x 10 events: 300 events/s offered
DOWN_S = 3.0


def _load(pipeline_url: str, tag: str) -> LoadGenerator:
    return LoadGenerator(lambda: pipeline_url, tag=tag, rate_batches_s=RATE_BATCHES_S).start()


def test_fault_enricher_sigkill_mid_load(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url, opensearch_url=opensearch_url, index_prefix=prefix
    )
    pipeline.start()
    load = _load(pipeline.gateway.base_url, "enricher-kill")
    load.wait_accepted(500)

    assert pipeline.enricher.kill() == -9
    time.sleep(DOWN_S)
    pipeline.enricher.start()
    load.wait_accepted(load.accepted_count() + 500)
    result = load.stop()

    check("SIGKILL enricher, restart", result, opensearch_url, prefix)


def test_fault_indexer_sigkill_mid_bulk(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url, opensearch_url=opensearch_url, index_prefix=prefix
    )
    pipeline.start()
    load = _load(pipeline.gateway.base_url, "indexer-kill")
    load.wait_accepted(500)
    bulks_before = _bulk_requests(pipeline.indexer.metrics())

    assert pipeline.indexer.kill() == -9
    time.sleep(DOWN_S)
    pipeline.indexer.start()
    load.wait_accepted(load.accepted_count() + 500)
    result = load.stop()

    check("SIGKILL indexer, restart", result, opensearch_url, prefix)
    assert bulks_before > 0  # it was writing when it was killed


def _bulk_requests(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("indexer_documents_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_fault_gateway_sigterm_under_load(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url, opensearch_url=opensearch_url, index_prefix=prefix
    )
    pipeline.start()
    load = _load(pipeline.gateway.base_url, "gateway-term")
    load.wait_accepted(500)

    assert pipeline.gateway.terminate() == 0  # a graceful stop exits cleanly
    time.sleep(DOWN_S)
    pipeline.gateway.start()
    load.wait_accepted(load.accepted_count() + 500)
    result = load.stop()

    # In-flight requests either finished (202) or got a retryable answer or a refused
    # connection; never a 500 or a dropped answer for a batch it took.
    unexpected = {s for s in result.statuses if s not in ("202", "429", "503")}
    assert all(s.startswith("conn:") for s in unexpected), result.statuses
    check("SIGTERM gateway, restart", result, opensearch_url, prefix)


def test_fault_two_of_each_one_killed(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url, opensearch_url=opensearch_url, index_prefix=prefix
    )
    second_enricher = pipeline.add_replica("enricher")
    second_indexer = pipeline.add_replica("indexer")
    pipeline.start()
    load = _load(pipeline.gateway.base_url, "replicas")
    load.wait_accepted(500)

    assert pipeline.enricher.kill() == -9
    assert second_indexer.kill() == -9
    # No restart: the survivors take over the durable consumers' work.
    load.wait_accepted(load.accepted_count() + 1000)
    result = load.stop()

    check("2+2 workers, one of each killed", result, opensearch_url, prefix)
    assert second_enricher.pid is not None
    assert pipeline.indexer.pid is not None
