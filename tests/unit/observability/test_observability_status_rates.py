"""`tpipe status` arithmetic: rates from two scrapes, gauges from the last, the table."""

from __future__ import annotations

from tpipe._cmd_status import Scrape, Snapshot, parse_metrics, render, stage_row

BEFORE = """
# TYPE indexer_documents_total counter
indexer_documents_total{outcome="created"} 100.0
indexer_documents_total{outcome="duplicate"} 10.0
indexer_documents_total{outcome="rejected"} 0.0
# TYPE indexer_dlq_total counter
indexer_dlq_total{reason="rejected"} 0.0
# TYPE indexer_consumer_pending gauge
indexer_consumer_pending 40.0
# TYPE indexer_messages_in_progress gauge
indexer_messages_in_progress 3.0
"""

AFTER = """
# TYPE indexer_documents_total counter
indexer_documents_total{outcome="created"} 130.0
indexer_documents_total{outcome="duplicate"} 20.0
indexer_documents_total{outcome="rejected"} 2.0
# TYPE indexer_dlq_total counter
indexer_dlq_total{reason="rejected"} 2.0
indexer_dlq_total{reason="undecodable"} 2.0
# TYPE indexer_consumer_pending gauge
indexer_consumer_pending 7.0
# TYPE indexer_messages_in_progress gauge
indexer_messages_in_progress 1.0
"""


def test_rates_are_deltas_over_the_time_between_scrapes() -> None:
    before = Scrape(at=10.0, ready=True, samples=parse_metrics(BEFORE))
    after = Scrape(at=12.0, ready=True, samples=parse_metrics(AFTER))
    row = stage_row("indexer", before, after)
    assert row.state == "ready"
    assert row.events_per_s == 20.0  # (30 created + 10 duplicate) / 2 s
    assert row.events_total == 150.0
    assert row.rejected_per_s == 1.0
    assert row.dead_lettered_per_s == 2.0  # every reason counts
    assert row.lag == 7.0
    assert row.in_flight == 1.0


def test_a_counter_reset_is_not_a_negative_rate() -> None:
    restarted = Scrape(at=12.0, ready=True, samples=parse_metrics(BEFORE))
    row = stage_row("indexer", Scrape(at=10.0, ready=True, samples=parse_metrics(AFTER)), restarted)
    assert row.events_per_s == 0.0


def test_an_unreachable_service_has_a_state_and_no_numbers() -> None:
    down = Scrape(at=12.0, reason="unreachable (ConnectError)")
    row = stage_row("gateway", Scrape(at=10.0), down)
    assert row.state == "unreachable (ConnectError)"
    assert row.events_per_s is None
    assert row.lag is None


def test_the_screen() -> None:
    before = Scrape(at=10.0, ready=True, samples=parse_metrics(BEFORE))
    after = Scrape(at=12.0, ready=True, samples=parse_metrics(AFTER))
    snapshot = Snapshot(
        at="2026-01-31T12:00:00Z",
        window_s=2.0,
        stages=[stage_row("indexer", before, after)],
        dlq={"stream": "TELEMETRY_DLQ", "messages": 1234, "bytes": 56789},
        opensearch={
            "status": "red",
            "number_of_nodes": 1,
            "active_shards": 5,
            "unassigned_shards": 2,
        },
    )
    lines = render(snapshot)
    assert lines[0] == "telemetry pipeline status at 2026-01-31T12:00:00Z (rates over 2.0 s)"
    assert lines[3].split() == ["indexer", "ready", "20.0", "150", "1.0", "2.0", "7", "1"]
    assert lines[5] == "DLQ TELEMETRY_DLQ: 1,234 messages, 56,789 bytes"
    assert lines[6] == "OpenSearch: red, 1 node, 5 active shards, 2 unassigned"
    assert not snapshot.healthy  # a red cluster is not healthy
