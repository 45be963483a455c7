"""/metrics of each running service moves by exactly the number of events sent."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.observability.observability_support import events, sample, wait_until
from tests.procs import WRITE_KEY, Pipeline

pytestmark = pytest.mark.integration


def _counts(pipeline: Pipeline) -> dict[str, float]:
    gateway, enricher, indexer = (
        pipeline.gateway.metrics(),
        pipeline.enricher.metrics(),
        pipeline.indexer.metrics(),
    )
    return {
        "accepted": sample(gateway, "gateway_events_total", outcome="accepted"),
        "rejected": sample(
            gateway,
            "gateway_events_total",
            outcome="rejected",
            reason="REJECTION_REASON_MISSING_FIELD",
        ),
        "enriched": sample(enricher, "enricher_events_total"),
        "enriched_messages": sample(enricher, "enricher_messages_total", outcome="enriched"),
        "created": sample(indexer, "indexer_documents_total", outcome="created"),
        "duplicate": sample(indexer, "indexer_documents_total", outcome="duplicate"),
        "acked": sample(indexer, "indexer_messages_total", outcome="acked"),
    }


def test_each_stage_counts_exactly_the_events_sent(pipeline: Pipeline) -> None:
    before = _counts(pipeline)
    batches = [events(4), events(3)]
    invalid = {**events(1)[0], "event_name": ""}  # rejected by the gateway, counted apart
    batches[1].append(invalid)
    with httpx.Client(base_url=pipeline.gateway.base_url, timeout=10.0) as client:
        for batch in batches:
            answer = client.post("/v1/track", json=batch, headers={"X-Api-Key": WRITE_KEY})
            assert answer.status_code == 202, answer.text
    sent = 7

    def indexed() -> bool:
        now = _counts(pipeline)
        return now["created"] + now["duplicate"] >= before["created"] + before["duplicate"] + sent

    wait_until(indexed, what=f"{sent} documents indexed")
    after = _counts(pipeline)
    moved = {name: after[name] - before[name] for name in after}
    assert moved == {
        "accepted": sent,
        "rejected": 1,
        "enriched": sent,
        "enriched_messages": 2,
        "created": sent,
        "duplicate": 0,
        "acked": 2,
    }


def test_every_service_exposes_its_lag_and_in_flight_gauges(pipeline: Pipeline) -> None:
    gateway, enricher, indexer = (
        pipeline.gateway.metrics(),
        pipeline.enricher.metrics(),
        pipeline.indexer.metrics(),
    )
    assert "gateway_requests_in_flight " in gateway
    assert "enricher_messages_in_progress " in enricher
    assert "indexer_bulk_requests_in_flight " in indexer
    assert "indexer_messages_in_progress " in indexer
    for text, service in ((enricher, "enricher"), (indexer, "indexer")):
        assert f"{service}_consumer_pending " in text
