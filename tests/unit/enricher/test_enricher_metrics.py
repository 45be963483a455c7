"""The enricher's metrics are those docs/observability.md lists."""

from __future__ import annotations

import re
from pathlib import Path

from enricher._metrics import Metrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"


def test_every_metric_of_the_enricher_is_in_the_metrics_table() -> None:
    declared = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    assert "enricher_event_message_truncated_total" in declared
    listed = set(re.findall(r"^\| `(enricher_[a-z_]+)` \|", DOC.read_text(), re.MULTILINE))
    assert declared == listed
