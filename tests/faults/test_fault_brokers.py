"""The brokers fail under load: NATS restarted, a cluster node killed, OpenSearch stopped."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import PipelineFactory, remove_prefix
from tests.faults.harness import LoadGenerator, check, post_batch
from tests.opensearch_node import OpenSearchNode
from tests.servers import NatsCluster, NatsProcess

# Longer than the suite's 300 s: a fault test's own waits (accepted, settled) add up to more.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RATE_BATCHES_S = 30.0  # x 10 events: 300 events/s offered
NATS_DOWN_S = 5.0
OPENSEARCH_DOWN_S = 60.0


def test_fault_nats_stopped_and_restarted(
    nats_server: NatsProcess, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url, opensearch_url=opensearch_url, index_prefix=prefix
    )
    pipeline.start()
    url = pipeline.gateway.base_url
    load = LoadGenerator(lambda: url, tag="nats-restart", rate_batches_s=RATE_BATCHES_S).start()
    load.wait_accepted(500)

    nats_server.stop()
    # While the broker is down the gateway says so: 503 with Retry-After, never a 202.
    time.sleep(1.0)
    answer = post_batch(url, tag="nats-down")
    assert answer.status_code == 503, answer.text
    assert "retry-after" in answer.headers
    time.sleep(NATS_DOWN_S)
    nats_server.start()  # same port, same store on disk
    load.wait_accepted(load.accepted_count() + 500)
    result = load.stop()

    assert result.count_503 > 0
    assert result.retry_after_missing == 0
    check(
        "NATS stopped and restarted",
        result,
        opensearch_url,
        prefix,
        extra=f"503s={result.count_503}",
    )


def test_fault_cluster_node_killed_during_ingest(
    tmp_path: Path, opensearch_url: str, prefix: str, make_pipeline: PipelineFactory
) -> None:
    cluster = NatsCluster(tmp_path / "cluster", size=3)
    pipeline = make_pipeline(
        nats_url=cluster.url,
        opensearch_url=opensearch_url,
        index_prefix=prefix,
        env={"STREAM_REPLICAS": "3"},
    )
    try:
        cluster.start()
        pipeline.start()
        replicas = _stream_replicas(cluster)
        assert replicas == {"TELEMETRY_RAW": 3, "TELEMETRY_ENRICHED": 3, "TELEMETRY_DLQ": 3}
        url = pipeline.gateway.base_url
        load = LoadGenerator(lambda: url, tag="cluster", rate_batches_s=RATE_BATCHES_S).start()
        load.wait_accepted(500)

        victim = _raw_stream_leader(cluster)
        victim.kill()
        load.wait_accepted(load.accepted_count() + 1000)
        result = load.stop()

        check(
            "NATS cluster R3, leader node killed",
            result,
            opensearch_url,
            prefix,
            extra=f"killed={victim.server_name}",
        )
    finally:
        pipeline.stop()
        cluster.stop()


def _accounts(jsz: dict[str, Any]) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = jsz.get("account_details", [])
    return details


def _stream_replicas(cluster: NatsCluster) -> dict[str, int]:
    node = next(n for n in cluster.nodes if n.running)
    jsz = node.monitor("/jsz?streams=true&config=true")
    found: dict[str, int] = {}
    for account in _accounts(jsz):
        for stream in account.get("stream_detail", []):
            found[stream["name"]] = stream["config"]["num_replicas"]
    return found


def _raw_stream_leader(cluster: NatsCluster) -> NatsProcess:
    """The node leading TELEMETRY_RAW: killing it forces an election under load."""
    node = next(n for n in cluster.nodes if n.running)
    jsz = node.monitor("/jsz?streams=true")
    for account in _accounts(jsz):
        for stream in account.get("stream_detail", []):
            if stream["name"] == "TELEMETRY_RAW":
                leader = stream["cluster"]["leader"]
                return next(n for n in cluster.nodes if n.server_name == leader)
    raise AssertionError("TELEMETRY_RAW not found on the cluster")


@pytest.mark.timeout(900)
def test_fault_opensearch_stopped_60s(
    nats_server: NatsProcess, make_pipeline: PipelineFactory
) -> None:
    node = OpenSearchNode()
    prefix = "fault-os-"
    pipeline = make_pipeline(nats_url=nats_server.url, opensearch_url=node.url, index_prefix=prefix)
    try:
        node.start()
        pipeline.start()
        url = pipeline.gateway.base_url
        load = LoadGenerator(lambda: url, tag="os-down", rate_batches_s=RATE_BATCHES_S).start()
        load.wait_accepted(500)

        node.stop()
        before = load.accepted_count()
        time.sleep(OPENSEARCH_DOWN_S)
        # Intake went on while OpenSearch was away: JetStream holds the events.
        accepted_while_down = load.accepted_count() - before
        assert accepted_while_down > 0
        # The indexer noticed, and says so, while the gateway stays ready.
        status, body = pipeline.indexer.readiness()
        assert status == 503, body
        assert "opensearch" in body
        assert pipeline.gateway.readiness()[0] == 200
        node.start()
        load.wait_accepted(load.accepted_count() + 500)
        result = load.stop()

        check(
            "OpenSearch stopped 60 s",
            result,
            node.url,
            prefix,
            extra=f"accepted_while_down={accepted_while_down}",
        )
    finally:
        pipeline.stop()
        remove_prefix(node.url, prefix)
        node.remove()
