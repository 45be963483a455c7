"""Labelled series of a known set of values are exported from the start, at 0: Prometheus'
increase() over a series that first appears at 1 is nothing, so an alert on dead letters
would miss the first one after each restart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from enricher._metrics import Metrics as EnricherMetrics
from gateway._metrics import Metrics as GatewayMetrics
from indexer.metrics import Metrics as IndexerMetrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"

# Counted by whatever a server answered: their series appear with their first request.
BY_ANSWER = {"gateway_http_requests", "gateway_grpc_requests", "indexer_query_seconds"}
# Named in prose in the table, not listed (see tests/unit/gateway/test_gateway_metrics.py).
OPEN_IN_THE_TABLE = {("gateway_events", "reason")}


def _registries() -> dict[str, CollectorRegistry]:
    return {
        "gateway": GatewayMetrics().registry,
        "enricher": EnricherMetrics().registry,
        "indexer": IndexerMetrics().registry,
    }


def _series(registry: CollectorRegistry) -> dict[str, list[dict[str, str]]]:
    """Each counter's or histogram's series (the labels of its counter or count samples),
    every one of them at 0."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in registry.collect():
        if family.type not in ("counter", "histogram"):
            continue
        counted = f"{family.name}_total" if family.type == "counter" else f"{family.name}_count"
        samples = [s for s in family.samples if s.name == counted]
        assert all(s.value == 0 for s in samples), family.name
        found[family.name] = [dict(s.labels) for s in samples]
    return found


def _documented_values() -> dict[tuple[str, str], set[str]]:
    """(metric, label) -> the values the metrics table lists for it, `label` (a, b, c)."""
    listed: dict[tuple[str, str], set[str]] = {}
    rows = re.findall(r"^\| `([a-z_]+)` \| [a-z]+ \| ([^|]*) \|", DOC.read_text(), re.MULTILINE)
    for name, labels in rows:
        for label, values in re.findall(r"`([a-z_]+)` \(([A-Za-z_]+(?:, [A-Za-z_]+)*)\)", labels):
            listed[(name.removesuffix("_total"), label)] = set(values.split(", "))
    return listed


@pytest.mark.parametrize("service", ["gateway", "enricher", "indexer"])
def test_every_labelled_series_of_a_known_set_is_there_at_0_from_the_start(service: str) -> None:
    series = _series(_registries()[service])
    made = {name for name, found in series.items() if found}
    # Each family has its series before anything was counted, but those by answer.
    assert set(series) - made == BY_ANSWER & set(series)
    documented = _documented_values()
    for name in made - BY_ANSWER:
        for label in {label for labels in series[name] for label in labels}:
            values = {labels[label] for labels in series[name]}
            if (name, label) in OPEN_IN_THE_TABLE:
                continue
            assert values == documented.get((name, label)), (name, label)
