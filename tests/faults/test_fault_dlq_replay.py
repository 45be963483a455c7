"""Dead letters: a rejected event lands in the DLQ with its reason, `tpipe dlq list` shows
it, and after the fix `tpipe dlq replay` sends it through to OpenSearch, once."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import nats
import orjson
import pytest

from pipeline import natsconn, subjects
from pipeline.config import load
from pipeline.settings import NatsSettings
from tests.faults.conftest import PipelineFactory
from tests.faults.harness import document_counts, make_batch, settle
from tests.procs import APP_ID, WRITE_KEY
from tests.servers import NatsProcess
from tpipe import _cmd_dlq

pytestmark = pytest.mark.integration

WAIT_S = 60.0


def tpipe_dlq(nats_url: str, *argv: str) -> int:
    """`tpipe dlq --nats <url> <argv...>` in this process."""
    parser = argparse.ArgumentParser(prog="tpipe")
    _cmd_dlq.add_parser(parser.add_subparsers(dest="command"))
    return _cmd_dlq.run(parser.parse_args(["dlq", "--nats", nats_url, *argv]))


def dead_letters(nats_url: str, stage: str | None = None) -> list[_cmd_dlq.Entry]:
    async def read() -> list[_cmd_dlq.Entry]:
        nc = await nats.connect(nats_url)
        try:
            return await _cmd_dlq.entries(nc.jetstream(), stage)
        finally:
            await nc.close()

    return asyncio.run(read())


def wait_dead_letters(nats_url: str, count: int, stage: str | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(dead_letters(nats_url, stage)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} dead letters in {WAIT_S} s"
        time.sleep(0.25)


def publish_raw(nats_url: str, subject: str, data: bytes) -> None:
    async def send() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().publish(subject, data, timeout=5)
        finally:
            await nc.close()

    asyncio.run(send())


def test_fault_dlq_list_and_replay_after_fix(
    nats_server: NatsProcess,
    opensearch_url: str,
    prefix: str,
    make_pipeline: PipelineFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = make_pipeline(
        nats_url=nats_server.url, opensearch_url=opensearch_url, index_prefix=prefix
    )
    pipeline.start()
    batch = make_batch(3, "dlq")
    ids = {event["event_id"] for event in batch}
    # A bad mapping someone made by hand: user_id as a number. Every event is rejected. The
    # daily indices of the events' own days (two, should the batch straddle midnight UTC).
    days = sorted({f"{prefix}{event['client_timestamp'][:10]}" for event in batch})
    for day in days:
        created = httpx.put(
            f"{opensearch_url}/{day}",
            json={"mappings": {"properties": {"user_id": {"type": "integer"}}}},
            timeout=30,
        )
        assert created.status_code == 200, created.text
    answer = httpx.post(
        f"{pipeline.gateway.base_url}/v1/track",
        content=orjson.dumps(batch),
        headers={"Authorization": f"Bearer {WRITE_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    wait_dead_letters(nats_server.url, 3, "indexer")
    # And a message no fix will help: bytes that are not a raw batch.
    publish_raw(nats_server.url, subjects.raw_subject(APP_ID), b"\xff\xfe not protobuf")
    wait_dead_letters(nats_server.url, 1, "enricher")
    capsys.readouterr()

    assert tpipe_dlq(nats_server.url, "list") == 0
    table = capsys.readouterr().out
    with capsys.disabled():
        print(table)
    assert table.splitlines()[0].split()[:4] == ["SEQ", "TIME", "STAGE", "SOURCE"]
    assert table.count("indexer") == 3
    assert "mapper_parsing_exception" in table
    assert f"telemetry.enriched.v1.{APP_ID}" in table

    assert tpipe_dlq(nats_server.url, "list", "--stage", "enricher", "--format", "jsonl") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["stage"], e["source_subject"]) for e in lines] == [
        ("enricher", f"telemetry.raw.v1.{APP_ID}")
    ]
    assert lines[0]["reason"]

    # Nothing changes on a dry run.
    assert tpipe_dlq(nats_server.url, "replay", "--stage", "indexer", "--dry-run") == 0
    assert "would replay 3, skipped 0" in capsys.readouterr().err
    assert len(dead_letters(nats_server.url)) == 4

    # The fix: the hand-made indices go; the next ones get the template's mapping.
    for day in days:
        assert httpx.delete(f"{opensearch_url}/{day}", timeout=30).status_code == 200
    code = tpipe_dlq(nats_server.url, "replay", "--stage", "indexer", "--wait", "3")
    summary = capsys.readouterr().err
    with capsys.disabled():
        print(summary)
    assert "replayed 3, skipped 0, failed to publish 0, failed again 0" in summary
    assert code == 0
    verdict = settle(opensearch_url, prefix, ids, timeout_s=WAIT_S)
    assert verdict.lost == []
    assert verdict.duplicated == {}

    # Replaying again finds nothing of the indexer's: replay is idempotent.
    assert tpipe_dlq(nats_server.url, "replay", "--stage", "indexer") == 0
    assert "replayed 0" in capsys.readouterr().err

    # The undecodable message fails again, and says so.
    assert tpipe_dlq(nats_server.url, "replay", "--stage", "enricher", "--wait", "20") == 1
    summary = capsys.readouterr().err
    with capsys.disabled():
        print(summary)
    assert "replayed 1, skipped 0, failed to publish 0, failed again 1" in summary
    again = dead_letters(nats_server.url, "enricher")
    assert len(again) == 1
    assert again[0].headers[_cmd_dlq.REPLAY_OF_HEADER]
    assert {k: v for k, v in document_counts(opensearch_url, prefix).items() if k in ids} == {
        event_id: 1 for event_id in ids
    }


def test_fault_dlq_list_reads_non_ascii_reasons_as_they_were_written(
    nats_server: NatsProcess,
) -> None:
    # nats-py hands such a header over as an email Header, whose str() garbles it.
    reason = "mapper_parsing_exception: failed to parse field [city] value 'São Paulo 東京'"

    async def write() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await natsconn.ensure_streams(js, load(NatsSettings, {}))
            await js.publish(
                subjects.dlq_subject("indexer"),
                b"event",
                headers={subjects.DLQ_STAGE_HEADER: "indexer", subjects.DLQ_REASON_HEADER: reason},
                timeout=5,
            )
        finally:
            await nc.close()

    asyncio.run(write())
    [entry] = dead_letters(nats_server.url)

    assert entry.reason == reason
    assert entry.headers[subjects.DLQ_REASON_HEADER] == reason  # and so sent back on a replay
