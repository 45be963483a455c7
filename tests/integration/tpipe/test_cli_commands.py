"""Each people command as a process against the running pipeline: output and exit code."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.tpipe.conftest import ROOT, Running, tpipe_env
from tests.servers import NatsProcess, free_port

pytestmark = pytest.mark.integration

Run = Callable[..., subprocess.CompletedProcess[str]]
EVENT_NAMES = ("app_open", "screen_view", "item_purchased")


def make_events(user: str, count: int) -> list[dict[str, Any]]:
    """`count` valid events of one user, spread over three event names, newest last."""
    now = datetime.now(UTC)
    return [
        {
            "event_id": str(uuid.uuid4()),
            "session_id": f"{user}-s{i % 4}",
            "user_id": user,
            "event_name": EVENT_NAMES[i % 3],
            "client_timestamp": (now - timedelta(seconds=count - i))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "app_version": "2.3.1",
            "device_os": "iOS 17.2",
            "metadata": {"screen": "checkout", "n": str(i)},
        }
        for i in range(count)
    ]


def write_ndjson(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    return path


def unique_user() -> str:
    return f"cli-user-{uuid.uuid4().hex[:12]}"


def query_ids(tpipe: Run, user: str) -> list[str]:
    done = tpipe("query", "--user", user, "--all", "--page-size", "40", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line)["event"]["event_id"] for line in done.stdout.splitlines()]


def test_send_then_query_and_aggregate_find_exactly_the_events(
    tpipe: Run, tmp_path: Path, eventually: Any
) -> None:
    user = unique_user()
    events = make_events(user, 130)
    path = write_ndjson(tmp_path / "events.ndjson", events)

    sent = tpipe("send", str(path), "--batch-size", "50")

    assert sent.returncode == 0, sent.stderr
    lines = sent.stdout.splitlines()
    assert lines[0].startswith("sent 130 events in 3 batches to ")
    assert "accepted: 130" in lines
    assert "rejected: 0" in lines
    assert "failed batches: 0 (0 events)" in lines

    # query --all pages (40 a page) through every event exactly once.
    ids = eventually(
        lambda: found if len(found := query_ids(tpipe, user)) >= 130 else None,
        "130 events queryable",
    )
    assert sorted(ids) == sorted(event["event_id"] for event in events)
    assert len(ids) == len(set(ids))

    # The table shows one page and says there is more.
    table = tpipe("query", "--user", user, "--page-size", "5")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split()[:3] == ["TIME", "EVENT", "USER"]
    assert len(rows) == 6
    assert rows[1].endswith(events[-1]["event_id"])  # newest first
    assert "5 events of 130" in table.stderr

    # aggregate: the counts by event name are the ones sent, and the bars are drawn.
    expected = Counter(event["event_name"] for event in events)
    agg = tpipe("aggregate", "--user", user, "--by", "event_name", "--format", "json")
    assert agg.returncode == 0, agg.stderr
    data = orjson.loads(agg.stdout)
    assert int(data["total_count"]) == 130
    assert {c["value"]: int(c["count"]) for c in data["counts"]} == dict(expected)

    text = tpipe("aggregate", "--user", user, "--by", "event_name", "--interval", "day")
    assert text.returncode == 0, text.stderr
    out = text.stdout.splitlines()
    assert out[0] == "total: 130"
    for name, count in expected.items():
        assert any(re.fullmatch(rf"  {name}\s+{count}  █+", line) for line in out), out
    assert "per day:" in out


def test_a_red_index_fails_queries_unless_partial_which_names_it(
    tpipe: Run, running: Running, opensearch_url: str, tmp_path: Path, eventually: Any
) -> None:
    user = unique_user()
    sent = tpipe("send", str(write_ndjson(tmp_path / "e.ndjson", make_events(user, 3))))
    assert sent.returncode == 0, sent.stderr
    eventually(lambda: True if len(query_ids(tpipe, user)) == 3 else None, "3 events queryable")
    # A daily index of this pipeline whose one shard can be assigned nowhere.
    red = f"{running.pipeline.index_prefix}2000-01-01"
    _opensearch(
        opensearch_url,
        "PUT",
        f"/{red}?wait_for_active_shards=0",
        {"settings": {"index.routing.allocation.require._name": "no-such-node"}},
    )
    try:
        refused = tpipe("query", "--user", user, "--retries", "0")
        partial = tpipe("query", "--user", user, "--partial", "--all", "--format", "jsonl")
        counts = tpipe("aggregate", "--user", user, "--partial", "--format", "json")
    finally:
        _opensearch(opensearch_url, "DELETE", f"/{red}", None)

    assert refused.returncode == 3, refused.stderr
    assert red in refused.stderr
    assert "pass --partial" in refused.stderr
    assert partial.returncode == 0, partial.stderr
    assert len(partial.stdout.splitlines()) == 3
    warning = f"warning: 1 index did not answer; its events are missing: {red}"
    assert warning in partial.stderr
    assert counts.returncode == 0, counts.stderr
    assert int(orjson.loads(counts.stdout)["total_count"]) == 3
    assert warning in counts.stderr


def _opensearch(url: str, method: str, path: str, body: dict[str, Any] | None) -> None:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


def test_send_reports_rejections_by_reason_and_exits_1(tpipe: Run, tmp_path: Path) -> None:
    user = unique_user()
    events = make_events(user, 3)
    del events[1]["user_id"]
    path = tmp_path / "events.json"
    path.write_bytes(orjson.dumps(events))

    sent = tpipe("send", str(path))

    assert sent.returncode == 1
    assert "accepted: 2" in sent.stdout
    assert "rejected: 1" in sent.stdout
    assert "  REJECTION_REASON_MISSING_FIELD: 1" in sent.stdout
    assert f"  event #1 ({events[1]['event_id']}): user_id is required" in sent.stdout


def test_send_reads_stdin(tpipe: Run) -> None:
    events = make_events(unique_user(), 4)
    sent = tpipe("send", "-", stdin=orjson.dumps(events).decode())
    assert sent.returncode == 0, sent.stderr
    assert "accepted: 4" in sent.stdout


def test_tail_prints_events_sent_after_it_started_and_stops_after_count(
    running: Running, tpipe: Run
) -> None:
    user = unique_user()
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tpipe",
            "tail",
            "--user",
            user,
            "--count",
            "3",
            "--format",
            "jsonl",
            # A list, as NATS_URL may hold: a server that is down, then the running one.
            "--nats",
            f"nats://127.0.0.1:{free_port()},{running.nats_url}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tpipe_env(running.env),
        cwd=ROOT,
    )
    try:
        assert tail.stderr is not None
        started = tail.stderr.readline()  # written once the consumer is subscribed
        assert started.startswith("tpipe tail: following telemetry.enriched.v1.>"), started
        events = make_events(user, 5)
        sent = tpipe("send", "-", stdin=orjson.dumps(events).decode())
        assert sent.returncode == 0, sent.stderr
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()

    assert tail.returncode == 0, err
    got = [orjson.loads(line) for line in out.splitlines()]
    assert len(got) == 3
    assert [item["event"]["event_id"] for item in got] == [e["event_id"] for e in events[:3]]
    assert all(item["app_id"] == "e2e-app" and item["os_name"] == "iOS" for item in got)


def test_tail_stops_cleanly_on_sigterm(running: Running) -> None:
    tail = subprocess.Popen(
        [sys.executable, "-m", "tpipe", "tail"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tpipe_env(running.env),
        cwd=ROOT,
    )
    try:
        assert tail.stderr is not None
        assert "following" in tail.stderr.readline()
        tail.terminate()
        _, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0, err
    assert "Traceback" not in err


def test_loadgen_runs_for_its_duration_and_reports(tpipe: Run) -> None:
    done = tpipe(
        "loadgen", "--devices", "5", "--rate", "20", "--duration", "2.5", "--flush-interval", "1"
    )

    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    match = re.match(
        r"loadgen: 5 devices, [0-9.]+ s: generated (\d+), accepted (\d+) \([0-9.]+ events/s\), "
        r"rejected 0, duplicate batches 0, failed 0",
        summary,
    )
    assert match, summary
    generated, accepted = int(match.group(1)), int(match.group(2))
    assert accepted > 0
    assert accepted == generated
    rate_line = re.compile(r"loadgen +[0-9.]+s: generated \d+ \(\d+/s\), accepted \d+ \(\d+/s\)")
    assert any(rate_line.match(line) for line in done.stderr.splitlines()), done.stderr


def test_loadgen_stops_at_its_event_budget(tpipe: Run) -> None:
    done = tpipe("loadgen", "--devices", "4", "--rate", "50", "--events", "60", "--duration", "60")
    assert done.returncode == 0, done.stderr
    assert "generated 60, accepted 60 " in done.stdout


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (("send", "-"), "this is not json\n", "stdin:1: not JSON"),
        (("send", "/nonexistent/events.json"), None, "cannot read /nonexistent/events.json"),
        (("query", "--since", "last week"), None, "'last week'"),
        (("aggregate", "--by", "colour"), None, "invalid choice: 'colour'"),
        (("send", "-", "--key", "not-a-key"), "[]", "no events"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tpipe: Run, args: tuple[str, ...], stdin: str | None, needle: str
) -> None:
    done = tpipe(*args, stdin=stdin)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr


def test_a_wrong_write_key_exits_2(tpipe: Run) -> None:
    events = make_events(unique_user(), 1)
    done = tpipe("send", "-", "--key", "not-a-key", stdin=orjson.dumps(events).decode())
    assert done.returncode == 2
    assert "HTTP 401" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("query", "--retries", "1", "--deadline", "2"),
        ("tail",),
        ("send", "-", "--retries", "1"),
    ],
)
def test_unreachable_servers_exit_3_with_one_line(
    tpipe: Run, running: Running, args: tuple[str, ...]
) -> None:
    dead = free_port()
    overrides = {
        "query": ["--target", f"127.0.0.1:{dead}"],
        "tail": ["--nats", f"nats://127.0.0.1:{dead}"],
        "send": ["--gateway", f"http://127.0.0.1:{dead}"],
    }[args[0]]
    stdin = orjson.dumps(make_events(unique_user(), 1)).decode() if args[0] == "send" else None
    done = tpipe(*args, *overrides, stdin=stdin)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert str(dead) in done.stderr


def test_status_once_with_nats_down_shows_it_and_exits(tpipe: Run) -> None:
    dead = free_port()

    done = tpipe("status", "--once", "--nats", f"nats://127.0.0.1:{dead}")

    assert done.returncode == 3, done.stderr
    assert "DLQ: nats unreachable" in done.stdout
    assert "Traceback" not in done.stderr


def test_dlq_on_a_server_without_the_dlq_stream_is_an_error_not_empty(
    tpipe: Run, tmp_path: Path
) -> None:
    bare = NatsProcess(tmp_path / "bare-nats")  # JetStream on, no streams at all
    bare.start()
    try:
        listed = tpipe("dlq", "list", "--nats", bare.url)
        replayed = tpipe("dlq", "replay", "--nats", bare.url)
    finally:
        bare.stop()

    for done in (listed, replayed):
        assert done.returncode == 3, done.stdout + done.stderr
        assert "there is no TELEMETRY_DLQ stream on this server" in done.stderr
