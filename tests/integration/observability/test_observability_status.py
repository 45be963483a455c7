"""`tpipe status --once` against the running pipeline: stages, totals, DLQ size, health."""

from __future__ import annotations

import argparse
import asyncio

import httpx
import nats
import orjson
import pytest

from pipeline import subjects
from tests.integration.observability.observability_support import events, sample, wait_until
from tests.procs import WRITE_KEY, Pipeline
from tests.servers import NatsProcess, free_port
from tpipe._args import Parser
from tpipe._cmd_status import add_parser, run

pytestmark = pytest.mark.integration


def _args(
    pipeline: Pipeline, nats_url: str, opensearch_url: str, *extra: str
) -> argparse.Namespace:
    parser = Parser(prog="tpipe")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(
        [
            "status",
            "--once",
            "--format=json",
            "--sample=0.3",
            f"--gateway={pipeline.gateway.base_url}",
            f"--enricher={pipeline.enricher.base_url}",
            f"--indexer={pipeline.indexer.base_url}",
            f"--nats={nats_url}",
            f"--opensearch={opensearch_url}",
            *extra,
        ]
    )


def _status(
    capsys: pytest.CaptureFixture[str], args: argparse.Namespace
) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = run(args)
    doc: dict[str, object] = orjson.loads(capsys.readouterr().out)
    return code, doc


def _stages(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    rows = doc["stages"]
    assert isinstance(rows, list)
    return {row["stage"]: row for row in rows}


async def _publish_poison(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(subjects.raw_subject("obs-poison"), b"\xff not a batch")
    finally:
        await nc.close()


def test_status_shows_totals_dlq_size_and_health(
    pipeline: Pipeline,
    nats_server: NatsProcess,
    opensearch_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _args(pipeline, nats_server.url, opensearch_url)
    code, before = _status(capsys, args)
    assert code == 0, before
    assert before["healthy"] is True
    assert {name: row["state"] for name, row in _stages(before).items()} == {
        "gateway": "ready",
        "enricher": "ready",
        "indexer": "ready",
    }
    health = before["opensearch"]
    assert isinstance(health, dict)
    assert health["status"] in ("green", "yellow")

    with httpx.Client(base_url=pipeline.gateway.base_url, timeout=10.0) as client:
        answer = client.post("/v1/track", json=events(5), headers={"X-Api-Key": WRITE_KEY})
    assert answer.status_code == 202, answer.text
    dead_before = sample(pipeline.enricher.metrics(), "enricher_dlq_total", reason="undecodable")
    asyncio.run(_publish_poison(nats_server.url))

    def settled() -> bool:
        enricher = pipeline.enricher.metrics()
        stages = _stages(_status(capsys, args)[1])
        indexed = stages["indexer"]["events_total"]
        gateway_before = _stages(before)["indexer"]["events_total"]
        assert isinstance(indexed, float)
        assert isinstance(gateway_before, float)
        dead = sample(enricher, "enricher_dlq_total", reason="undecodable")
        # Every message delivered: each consumer's lag, refreshed every few seconds, is 0.
        lags = (stages["enricher"]["lag"], stages["indexer"]["lag"])
        return indexed >= gateway_before + 5 and dead == dead_before + 1 and lags == (0.0, 0.0)

    wait_until(settled, what="the events indexed and the poison message dead-lettered")
    code, after = _status(capsys, args)
    assert code == 0
    stages_before, stages_after = _stages(before), _stages(after)
    for stage in ("gateway", "enricher", "indexer"):
        moved = float(str(stages_after[stage]["events_total"])) - float(
            str(stages_before[stage]["events_total"])
        )
        assert moved == 5, stage
    dlq_before, dlq_after = before["dlq"], after["dlq"]
    assert isinstance(dlq_before, dict)
    assert isinstance(dlq_after, dict)
    assert dlq_after["stream"] == subjects.DLQ_STREAM
    assert dlq_after["messages"] == dlq_before["messages"] + 1
    # The consumers report their lag, none left once settled; the gateway has none.
    assert stages_after["enricher"]["lag"] == 0.0
    assert stages_after["indexer"]["lag"] == 0.0
    assert stages_after["gateway"]["lag"] is None


def test_status_fails_when_a_part_is_unreachable(
    pipeline: Pipeline,
    nats_server: NatsProcess,
    opensearch_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = _args(pipeline, nats_server.url, opensearch_url, f"--enricher={nowhere}")
    code, doc = _status(capsys, args)
    assert code == 3
    assert doc["healthy"] is False
    assert str(_stages(doc)["enricher"]["state"]).startswith("unreachable")
    assert _stages(doc)["gateway"]["state"] == "ready"


def test_status_table_is_one_screen(
    pipeline: Pipeline,
    nats_server: NatsProcess,
    opensearch_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _args(pipeline, nats_server.url, opensearch_url, "--format=table")
    capsys.readouterr()
    assert run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("telemetry pipeline status at ")
    assert lines[2].split()[:4] == ["STAGE", "STATE", "EVENTS/S", "EVENTS"]
    assert [line.split()[0] for line in lines[3:6]] == ["gateway", "enricher", "indexer"]
    assert lines[7].startswith(f"DLQ {subjects.DLQ_STREAM}: ")
    assert lines[8].startswith("OpenSearch: ")
    assert len(lines) <= 24
