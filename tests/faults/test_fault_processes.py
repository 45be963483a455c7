"""Services killed or stopped under load: nothing that got a 202 is lost or doubled."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import PipelineFactory
from tests.faults.harness import BulkAnswerHolder, LoadGenerator, check
from tests.servers import NatsProcess

# Longer than the suite's 300 s: a fault test's own waits (accepted, settled) add up to more.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

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
    """Killed after OpenSearch wrote a bulk and before the indexer read the answer: the
    messages were never acked, come back, and their documents answer 409, not a second copy."""
    holder = BulkAnswerHolder(opensearch_url).start()
    pipeline = make_pipeline(
        nats_url=nats_server.url,
        opensearch_url=opensearch_url,
        index_prefix=prefix,
        # A short ack wait brings the killed bulk's messages back soon after the restart.
        overrides={"indexer": {"OPENSEARCH_URL": holder.url, "INDEXER_ACK_WAIT_S": "5"}},
    )
    try:
        pipeline.start()
        load = _load(pipeline.gateway.base_url, "indexer-kill")
        load.wait_accepted(500)

        holder.arm()
        assert holder.held.wait(timeout=30), "no bulk request went through the proxy"
        time.sleep(0.5)  # the whole answer, in case it came in pieces
        assert holder.held_answer.startswith(b"HTTP/1.1 200"), holder.held_answer[:200]
        assert pipeline.indexer.kill() == -9
        time.sleep(DOWN_S)
        pipeline.indexer.start()
        load.wait_accepted(load.accepted_count() + 500)
        result = load.stop()

        # The held bulk's messages come back, unacked, and their documents find themselves.
        deadline = time.monotonic() + 60
        while (duplicates := _documents(pipeline.indexer.metrics(), "duplicate")) == 0:
            assert time.monotonic() < deadline, "the killed bulk's messages never came back"
            time.sleep(0.5)
        check(
            "SIGKILL indexer mid-bulk, restart",
            result,
            opensearch_url,
            prefix,
            extra=f"duplicates_after_restart={duplicates:.0f}",
        )
    finally:
        holder.stop()


def _documents(metrics: str, outcome: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'indexer_documents_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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

    # Every answer is a 202 or a retryable 429/503, never another status. A connection error
    # (refused while the gateway is down, or a keep-alive connection closed as a request went
    # out) is not an answer: the client sends the same batch again, and if the gateway had
    # stored it, JetStream's duplicate window keeps one copy (check() counts them).
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
