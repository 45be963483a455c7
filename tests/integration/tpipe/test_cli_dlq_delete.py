"""`tpipe dlq delete` against a real NATS, on a private one with the pipeline's streams:
what JetStream answers for a sequence the DLQ does not hold is said as not found."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import nats
import pytest

from pipeline import subjects
from tests.integration.tpipe.conftest import COMMAND_TIMEOUT_S, ROOT, tpipe_env
from tests.servers import NatsProcess
from tpipe import _cmd_dlq

pytestmark = pytest.mark.integration

SOURCE = "telemetry.enriched.v1.shop"


def _dead_letters(url: str, count: int) -> None:
    """`count` dead letters of the indexer, at sequences 1 to `count`."""

    async def publish() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for n in range(count):
                headers = {
                    subjects.DLQ_STAGE_HEADER: "indexer",
                    subjects.DLQ_REASON_HEADER: "mapper_parsing_exception",
                    subjects.DLQ_SUBJECT_HEADER: SOURCE,
                }
                await js.publish(subjects.dlq_subject("indexer"), b"batch %d" % n, headers=headers)
        finally:
            await nc.close()

    asyncio.run(publish())


def _dlq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tpipe", "dlq", "--nats", url, *args],
        capture_output=True,
        text=True,
        env=tpipe_env({}),
        cwd=ROOT,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def test_deleting_an_entry_removes_it_and_one_not_in_the_dlq_exits_1(
    nats_server: NatsProcess,
) -> None:
    _dead_letters(nats_server.url, 2)

    deleted = _dlq(nats_server.url, "delete", "1")
    again = _dlq(nats_server.url, "delete", "1", "9")

    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"deleted seq 1: indexer, {SOURCE}, mapper_parsing_exception\n"
    assert again.returncode == 1, again.stderr
    assert again.stdout == ""
    assert again.stderr.splitlines() == [
        "seq 1: no such dead letter in TELEMETRY_DLQ",
        "seq 9: no such dead letter in TELEMETRY_DLQ",
        "deleted 0, not found 2",
    ]
    listed = _dlq(nats_server.url, "list", "--format", "jsonl")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1  # seq 2, left alone


@pytest.mark.parametrize("seq", [1, 9], ids=["deleted-before", "past-the-end"])
def test_jetstreams_answer_to_deleting_a_sequence_not_held_is_not_found(
    nats_server: NatsProcess, seq: int
) -> None:
    """What `delete` and `replay` meet when another run deleted the entry between their
    read and their delete (nats-server answers 10057, not 404)."""
    _dead_letters(nats_server.url, 2)

    async def delete_twice() -> tuple[bool, bool]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            first = await _cmd_dlq._delete_one(js, 1)
            return first, await _cmd_dlq._delete_one(js, seq)
        finally:
            await nc.close()

    assert asyncio.run(delete_twice()) == (True, False)
