"""The indexer's metrics are those docs/observability.md lists."""

from __future__ import annotations

import re
from pathlib import Path

from indexer.metrics import Metrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"


def test_every_metric_of_the_indexer_is_in_the_metrics_table() -> None:
    declared = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    assert "indexer_dlq_refused_total" in declared
    listed = set(re.findall(r"^\| `(indexer_[a-z_]+)` \|", DOC.read_text(), re.MULTILINE))
    assert declared == listed
