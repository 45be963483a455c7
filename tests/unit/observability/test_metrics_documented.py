"""Each service's metrics are those docs/observability.md lists in its metrics table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from enricher._metrics import Metrics as EnricherMetrics
from gateway._metrics import Metrics as GatewayMetrics
from indexer.metrics import Metrics as IndexerMetrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"


@pytest.mark.parametrize(
    ("service", "registry", "recent"),
    [
        ("gateway", GatewayMetrics().registry, "gateway_publish_seconds"),
        ("enricher", EnricherMetrics().registry, "enricher_event_message_truncated_total"),
        ("indexer", IndexerMetrics().registry, "indexer_dlq_refused_total"),
    ],
)
def test_every_metric_of_a_service_is_in_the_metrics_table(
    service: str, registry: CollectorRegistry, recent: str
) -> None:
    declared = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }
    assert recent in declared  # the registry read is the one the service uses
    table = re.findall(rf"^\| `({service}_[a-z_]+)` \|", DOC.read_text(), re.MULTILINE)
    assert declared == set(table)
