"""The /v1/track poster against a small in-process HTTP server: gzip, key, retries, receipts."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.servers import free_port
from tests.unit.tpipe.send_support import ndjson_file, send_args, track_server
from tpipe import _cmd_send, cli, errors
from tpipe._backoff import Backoff
from tpipe._cmd_send import summary
from tpipe._track import (
    Receipt,
    Rejection,
    Tally,
    TrackPoster,
    check_gateway_url,
    retry_after_s,
)

RECEIPT = {
    "accepted": 1,
    "rejected": [{"index": 1, "event_id": "b", "reason": "R_MISSING", "detail": "user_id"}],
    "duplicate": False,
    "batch_id": "batch-1",
}


class Gateway:
    """Answers POST /v1/track with the queued (status, headers) answers (202: RECEIPT), then
    202 RECEIPT."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.bodies: list[object] = []
        self.headers: list[dict[str, str]] = []
        self.raw_sizes: list[int] = []

    async def track(self, request: web.Request) -> web.Response:
        # aiohttp's server undoes Content-Encoding: gzip; the raw size shows it was compressed.
        body = await request.read()
        self.headers.append(dict(request.headers))
        self.raw_sizes.append(int(request.headers["Content-Length"]))
        self.bodies.append(orjson.loads(body))
        status, headers = self.answers.pop(0) if self.answers else (202, {})
        if status == 202:
            return web.json_response(RECEIPT, status=202)
        return web.json_response({"message": "busy"}, status=status, headers=headers)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    fake = Gateway()
    async with track_server(fake.track) as url:
        yield fake, url


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def poster(url: str, sleeps: Sleeps, *, retries: int = 3) -> TrackPoster:
    return TrackPoster(
        url,
        write_key="wk",
        max_retries=retries,
        backoff=Backoff(initial_s=0.1, max_s=1.0, rand=lambda: 1.0),
        sleep=sleeps,
    )


async def test_posts_gzip_with_the_key_and_reads_the_receipt(gateway: tuple[Gateway, str]) -> None:
    fake, url = gateway
    events = [{"event_id": "a", "metadata": {"k": "v" * 500}}, {"event_id": "b"}]
    async with poster(url, Sleeps()) as send:
        receipt = await send.post(events, sent_at=lambda: "2026-01-01T00:00:00Z")

    assert receipt == Receipt(
        accepted=1,
        rejected=(Rejection(index=1, event_id="b", reason="R_MISSING", detail="user_id"),),
        duplicate=False,
        batch_id="batch-1",
    )
    assert fake.bodies == [{"sent_at": "2026-01-01T00:00:00Z", "events": events}]
    assert fake.raw_sizes[0] < len(orjson.dumps(events))
    assert fake.headers[0]["Authorization"] == "Bearer wk"
    assert fake.headers[0]["Content-Encoding"] == "gzip"


async def test_429_and_503_are_retried_no_sooner_than_retry_after(
    gateway: tuple[Gateway, str],
) -> None:
    fake, url = gateway
    fake.answers = [(503, {"Retry-After": "2"}), (429, {})]
    sleeps = Sleeps()
    async with poster(url, sleeps) as send:
        receipt = await send.post([{"event_id": "a"}])

    assert receipt.retries == 2
    assert sleeps.delays == [2.0, 0.2]
    assert len(fake.bodies) == 3


async def test_each_attempt_carries_its_own_sent_at_under_one_idempotency_key(
    gateway: tuple[Gateway, str],
) -> None:
    fake, url = gateway
    fake.answers = [(503, {"Retry-After": "1"})] * 2
    clock = iter(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:03Z"])
    async with poster(url, Sleeps()) as send:
        await send.post([{"event_id": "a"}], sent_at=lambda: next(clock))
        await send.post([{"event_id": "b"}], sent_at=lambda: "2026-01-01T00:01:00Z")

    assert [body["sent_at"] for body in fake.bodies] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:03Z",
        "2026-01-01T00:01:00Z",
    ]
    keys = [headers["Idempotency-Key"] for headers in fake.headers]
    assert keys[0] == keys[1] == keys[2] != keys[3]


async def test_without_sent_at_every_attempt_is_the_same_body_without_a_key(
    gateway: tuple[Gateway, str],
) -> None:
    # The gateway knows a retry, and a file sent again, by its content.
    fake, url = gateway
    fake.answers = [(503, {"Retry-After": "1"})]
    async with poster(url, Sleeps()) as send:
        await send.post([{"event_id": "a"}])

    assert fake.bodies == [[{"event_id": "a"}]] * 2
    assert all("Idempotency-Key" not in headers for headers in fake.headers)


async def test_overload_that_lasts_raises_after_the_retries(gateway: tuple[Gateway, str]) -> None:
    fake, url = gateway
    fake.answers = [(503, {"Retry-After": "1"})] * 5
    async with poster(url, Sleeps(), retries=2) as send:
        with pytest.raises(errors.Unavailable, match="HTTP 503: busy"):
            await send.post([{"event_id": "a"}])
    assert len(fake.bodies) == 3


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, errors.Unauthenticated), (403, errors.PermissionDenied), (413, errors.InvalidArgument)],
)
async def test_client_mistakes_are_not_retried(
    gateway: tuple[Gateway, str], status: int, kind: type[errors.ClientError]
) -> None:
    fake, url = gateway
    fake.answers = [(status, {})]
    sleeps = Sleeps()
    async with poster(url, sleeps) as send:
        with pytest.raises(kind):
            await send.post([{"event_id": "a"}])
    assert sleeps.delays == []


async def test_a_batch_too_large_says_which_option_makes_it_smaller(
    gateway: tuple[Gateway, str],
) -> None:
    fake, url = gateway
    fake.answers = [(413, {})]
    async with poster(url, Sleeps()) as send:
        with pytest.raises(errors.InvalidArgument, match=r"HTTP 413: .*--batch-size\)$"):
            await send.post([{"event_id": "a"}])


async def test_an_unreachable_gateway_is_unavailable_after_retries() -> None:
    sleeps = Sleeps()
    async with poster(f"http://127.0.0.1:{free_port()}", sleeps, retries=2) as send:
        with pytest.raises(errors.Unavailable):
            await send.post([{"event_id": "a"}])
    assert len(sleeps.delays) == 2


def test_gateway_urls_are_loopback_only_unless_allowed() -> None:
    assert (
        check_gateway_url("http://127.0.0.1:3000/", allow_remote=False) == "http://127.0.0.1:3000"
    )
    assert check_gateway_url("http://localhost:3000", allow_remote=False)
    assert check_gateway_url("http://[::1]:3000", allow_remote=False)
    with pytest.raises(errors.UsageError, match="--allow-remote"):
        check_gateway_url("https://gw.example.com", allow_remote=False)
    assert check_gateway_url("https://gw.example.com", allow_remote=True)
    with pytest.raises(errors.UsageError):
        check_gateway_url("ftp://127.0.0.1", allow_remote=True)
    for broken in ("http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:abc"):
        with pytest.raises(errors.UsageError, match="is not a valid URL"):
            check_gateway_url(broken, allow_remote=True)


@pytest.mark.parametrize(
    ("url", "what", "base"),
    [
        ("http://127.0.0.1:3000/v1/track", "ends with /v1/track, which the command adds", ""),
        (
            "http://127.0.0.1:3000/tm/v1/track/",
            "ends with /v1/track, which the command adds",
            "/tm",
        ),
        ("http://127.0.0.1:3000/?", "has a query or fragment", ""),
        ("http://127.0.0.1:3000?key=wk", "has a query or fragment", ""),
        ("http://127.0.0.1:3000#top", "has a query or fragment", ""),
        ("http://127.0.0.1:3000#", "has a query or fragment", ""),
    ],
)
def test_a_gateway_url_is_a_base_url(url: str, what: str, base: str) -> None:
    """TrackPoster adds /v1/track: with the path given too it posted to .../v1/track/v1/track."""
    said = f"{url!r} {what}: give the base URL alone, http://127.0.0.1:3000{base}"
    with pytest.raises(errors.UsageError, match=f"^{re.escape(said)}$"):
        check_gateway_url(url, allow_remote=False)


@pytest.mark.parametrize("prefix", ["/telemetry", "/api/v1", "/v1/events"])
def test_a_gateway_url_may_have_a_proxy_prefix(prefix: str) -> None:
    url = f"http://127.0.0.1:3000{prefix}/"
    assert check_gateway_url(url, allow_remote=False) == f"http://127.0.0.1:3000{prefix}"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["send", "f.json", "--gateway", "http://127.0.0.1:9/v1/track"], {}),
        (["send", "f.json", "--target-url", "http://127.0.0.1:9/v1/track"], {}),
        (["send", "f.json"], {"TPIPE_GATEWAY_URL": "http://127.0.0.1:9/v1/track"}),
        (["loadgen", "--target-url", "http://127.0.0.1:9/v1/track", "--duration", "1"], {}),
    ],
)
def test_send_and_loadgen_refuse_a_gateway_url_with_a_path(
    argv: list[str],
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.json").write_text('[{"event_id": "a"}]')
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    # The discard port: a send to it would fail with exit 3.
    assert cli.main([*argv, "--key", "k", "--retries", "0"]) == 2
    assert capsys.readouterr().err == (
        f"tpipe {argv[0]}: 'http://127.0.0.1:9/v1/track' ends with /v1/track, which the command"
        " adds: give the base URL alone, http://127.0.0.1:9\n"
    )


def test_retry_after_values() -> None:
    assert retry_after_s("3") == 3.0
    assert retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s(None) is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_s("inf") is None
    assert retry_after_s("nan") is None
    assert retry_after_s("-3") == 0.0
    assert retry_after_s("86400") == 60.0


async def test_a_long_retry_after_is_capped_and_said(
    gateway: tuple[Gateway, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, url = gateway
    fake.answers = [(429, {"Retry-After": "86400"}), (503, {"Retry-After": "1"})]
    sleeps = Sleeps()
    monkeypatch.setattr(_cmd_send, "TrackPoster", functools.partial(TrackPoster, sleep=sleeps))

    code = await _cmd_send.run(send_args(url, ndjson_file(tmp_path / "e.ndjson", 1), retries=3))

    assert code == 1  # the receipt lists a rejection
    assert sleeps.delays[0] == 60.0
    assert 1.0 <= sleeps.delays[1] <= 1.2
    err = capsys.readouterr().err
    said = f"tpipe send: {url}/v1/track: HTTP 429: busy; waiting 60 s (Retry-After) before retry"
    assert f"{said} 1 of 3\n" in err
    assert "retry 2" not in err  # a short wait goes unsaid


def test_summary_counts_rejections_by_reason_with_input_positions() -> None:
    tally = Tally()
    reject = Rejection(index=1, event_id="b", reason="R_MISSING", detail="user_id is required")
    tally.add(Receipt(accepted=1, rejected=(reject,), duplicate=False, batch_id="1"), size=2)
    tally.add(Receipt(accepted=2, rejected=(), duplicate=True, batch_id="2"), size=2, offset=2)
    tally.add(
        Receipt(accepted=1, rejected=(reject,), duplicate=False, batch_id="3", retries=2),
        size=2,
        offset=4,
    )
    tally.fail(size=3)

    lines = summary(tally, url="http://gw/v1/track")

    assert lines[0] == "sent 9 events in 4 batches to http://gw/v1/track"
    assert "accepted: 4" in lines
    assert "rejected: 2" in lines
    assert "  R_MISSING: 2" in lines
    assert "  event #5 (b): user_id is required" in lines
    assert "duplicate batches: 1" in lines
    assert "retries: 2" in lines
    assert "failed batches: 1 (3 events)" in lines


def test_the_summary_says_one_event_and_one_batch_in_the_singular() -> None:
    tally = Tally()
    tally.fail(size=1)

    lines = summary(tally, url="http://gw/v1/track")

    assert lines[0] == "sent 1 event in 1 batch to http://gw/v1/track"
    assert "failed batches: 1 (1 event)" in lines
    assert _cmd_send.not_sent(1, first=7).startswith("tpipe send: not sent: 1 event, from event #7")
    assert _cmd_send._so_far(1, None) == "1 event"
    assert _cmd_send._so_far(0, 1) == "0/1 event"
    assert _cmd_send._so_far(1, 2) == "1/2 events"


async def test_a_send_stopped_by_an_outage_says_what_was_not_sent(
    gateway: tuple[Gateway, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = gateway
    fake.answers = [(202, {})] + [(503, {"Retry-After": "0"})] * 10  # the first batch only
    args = send_args(url, ndjson_file(tmp_path / "events.ndjson", 250))

    with pytest.raises(errors.Unavailable):
        await _cmd_send.run(args)

    out, err = capsys.readouterr()
    assert "sent 100 events in 1 batch" in out
    assert "tpipe send: not sent: 150 events, from event #100 on" in err
    # Not "duplicates": past the duplicate window a batch sent again is accepted again.
    assert "finishes it (what the gateway has is stored once)" in err


async def test_send_without_a_key_says_so_before_reading_the_file(tmp_path: Path) -> None:
    args = send_args("http://127.0.0.1:3000", tmp_path / "not-there.json", key="")
    with pytest.raises(errors.UsageError, match="a write key is needed"):
        await _cmd_send.run(args)
