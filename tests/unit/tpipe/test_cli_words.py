"""Counts with their nouns, as the people commands print them: "1 event", "2 events"."""

from __future__ import annotations

import pytest

from tpipe import _cmd_loadgen, _cmd_query
from tpipe._cmd_status import Snapshot, render
from tpipe._words import counted


@pytest.mark.parametrize(
    ("args", "spec", "text"),
    [
        ((1, "event"), "", "1 event"),
        ((0, "event"), "", "0 events"),
        ((2, "event"), "", "2 events"),
        ((1, "batch", "batches"), "", "1 batch"),
        ((3, "batch", "batches"), "", "3 batches"),
        ((1, "index", "indices"), "", "1 index"),
        ((1482, "byte"), ",", "1,482 bytes"),
        ((1, "byte"), ",", "1 byte"),
    ],
)
def test_a_count_of_one_takes_the_singular(args: tuple[int, str], spec: str, text: str) -> None:
    assert counted(*args, spec=spec) == text


def test_status_says_one_node_and_one_message() -> None:
    snapshot = Snapshot(
        at="2026-11-26T10:00:00Z",
        window_s=2.0,
        stages=[],
        dlq={"stream": "TELEMETRY_DLQ", "messages": 1, "bytes": 1482},
        opensearch={
            "status": "green",
            "number_of_nodes": 1,
            "active_shards": 1,
            "unassigned_shards": 0,
        },
    )

    lines = render(snapshot)

    assert "DLQ TELEMETRY_DLQ: 1 message, 1,482 bytes" in lines
    assert "OpenSearch: green, 1 node, 1 active shard, 0 unassigned" in lines


def test_status_shows_a_health_value_that_is_no_number_as_it_is() -> None:
    health = {"status": "red", "number_of_nodes": None, "active_shards": 2, "unassigned_shards": 1}
    snapshot = Snapshot(at="", window_s=2.0, stages=[], dlq={"error": "x"}, opensearch=health)

    assert "OpenSearch: red, None nodes, 2 active shards, 1 unassigned" in render(snapshot)


def test_one_unreachable_index_is_one_index(capsys: pytest.CaptureFixture[str]) -> None:
    _cmd_query._warn_unreachable(["telemetry-2026-11-20"])

    assert capsys.readouterr().err == (
        "warning: 1 index did not answer; its events are missing: telemetry-2026-11-20\n"
    )


def test_loadgen_with_one_device_says_one_device() -> None:
    line = _cmd_loadgen.summary_line(_cmd_loadgen.LoadStats(), devices=1, elapsed_s=1.0)

    assert line.startswith("loadgen: 1 device, 1.0 s: ")


def test_unreachable_indices_are_indices(capsys: pytest.CaptureFixture[str]) -> None:
    _cmd_query._warn_unreachable({"telemetry-2026-11-21", "telemetry-2026-11-20"})

    assert capsys.readouterr().err == (
        "warning: 2 indices did not answer; their events are missing: "
        "telemetry-2026-11-20, telemetry-2026-11-21\n"
    )
