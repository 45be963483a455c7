"""TelemetryClient against a fake grpc.aio channel: retries, backoff, errors, paging, metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from telemetry.v1 import event_pb2, ingest_service_pb2, query_service_pb2

from tpipe import _grpcerrors, errors
from tpipe._backoff import Backoff
from tpipe.client import ClientSettings, TelemetryClient

Handler = Callable[[str, Any], Awaitable[Any]]


def rpc_error(
    code: grpc.StatusCode, details: str = "", retry_after: str = ""
) -> grpc.aio.AioRpcError:
    trailing = (
        grpc.aio.Metadata(("retry-after", retry_after)) if retry_after else grpc.aio.Metadata()
    )
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


class FakeChannel:
    """Answers unary calls with `handler`, recording (method, request, timeout, metadata)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, Any, float | None, Any]] = []

    def unary_unary(self, method: str, **_: Any) -> Callable[..., Awaitable[Any]]:
        # `timeout` is grpc.aio's per-call deadline parameter, recorded to check the deadline.
        async def call(
            request: Any,
            *,
            timeout: float | None = None,  # noqa: ASYNC109
            metadata: Any = None,
        ) -> Any:
            self.calls.append((method, request, timeout, metadata))
            return await self.handler(method, request)

        return call


def failing_then(codes: list[grpc.StatusCode], answer: Any, **kw: str) -> Handler:
    remaining = list(codes)

    async def handler(method: str, request: Any) -> Any:
        if remaining:
            raise rpc_error(remaining.pop(0), "boom", **kw)
        return answer

    return handler


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(
    channel: FakeChannel, sleeps: Sleeps, *, retries: int = 3, write_key: str = ""
) -> TelemetryClient:
    settings = ClientSettings(
        max_retries=retries,
        deadline_s=4.0,
        write_key=write_key,
        backoff=Backoff(initial_s=0.1, max_s=0.4, rand=lambda: 1.0),
    )
    return TelemetryClient(
        settings,
        query_channel=channel,
        ingest_channel=channel,
        sleep=sleeps,  # type: ignore[arg-type]
    )


def page(*ids: str, token: str = "", total: int = 0) -> query_service_pb2.QueryEventsResponse:
    events = [event_pb2.EnrichedEvent(event=event_pb2.Event(event_id=i)) for i in ids]
    return query_service_pb2.QueryEventsResponse(
        events=events, next_page_token=token, total_size=total
    )


async def test_unavailable_is_retried_with_growing_capped_delays() -> None:
    codes = [grpc.StatusCode.UNAVAILABLE] * 3
    channel, sleeps = FakeChannel(failing_then(codes, page("a"))), Sleeps()

    found = await client(channel, sleeps).query_page()

    assert [e.event.event_id for e in found.events] == ["a"]
    assert len(channel.calls) == 4
    assert sleeps.delays == [0.1, 0.2, 0.4]
    assert all(timeout == 4.0 for _, _, timeout, _ in channel.calls)


async def test_retries_stop_at_the_maximum_and_raise_unavailable() -> None:
    codes = [grpc.StatusCode.UNAVAILABLE] * 10
    channel, sleeps = FakeChannel(failing_then(codes, page())), Sleeps()

    with pytest.raises(errors.Unavailable, match="UNAVAILABLE: boom") as caught:
        await client(channel, sleeps, retries=2).query_page()

    assert len(channel.calls) == 3
    assert caught.value.exit_code == errors.EXIT_UNAVAILABLE


async def test_deadline_exceeded_is_retried_for_reads_only() -> None:
    codes = [grpc.StatusCode.DEADLINE_EXCEEDED]
    read_channel, sleeps = FakeChannel(failing_then(codes, page("a"))), Sleeps()
    await client(read_channel, sleeps).query_page()
    assert len(read_channel.calls) == 2

    receipt = ingest_service_pb2.IngestEventsResponse(accepted=1)
    write_channel = FakeChannel(failing_then(list(codes), receipt))
    with pytest.raises(errors.DeadlineExceeded):
        await client(write_channel, Sleeps(), write_key="k").ingest([event_pb2.Event()])
    assert len(write_channel.calls) == 1


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.INTERNAL, errors.ServerError),
    ],
)
async def test_permanent_errors_are_translated_and_not_retried(
    code: grpc.StatusCode, kind: type[errors.ClientError]
) -> None:
    channel, sleeps = FakeChannel(failing_then([code], page())), Sleeps()

    with pytest.raises(kind):
        await client(channel, sleeps).query_page()

    assert len(channel.calls) == 1
    assert sleeps.delays == []


async def test_retry_after_from_the_server_is_a_floor() -> None:
    codes = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    receipt = ingest_service_pb2.IngestEventsResponse(accepted=1)
    channel = FakeChannel(failing_then(codes, receipt, retry_after="3"))
    sleeps = Sleeps()

    await client(channel, sleeps, write_key="k").ingest([event_pb2.Event(event_id="e")])

    assert sleeps.delays == [3.0]


async def test_ingest_sends_the_write_key_as_bearer_metadata() -> None:
    receipt = ingest_service_pb2.IngestEventsResponse(accepted=1, batch_id="b")
    channel = FakeChannel(failing_then([], receipt))

    got = await client(channel, Sleeps(), write_key="secret").ingest([event_pb2.Event()])

    method, _, _, metadata = channel.calls[0]
    assert method == "/telemetry.v1.IngestService/IngestEvents"
    assert ("authorization", "Bearer secret") in metadata
    assert got.batch_id == "b"


async def test_ingest_without_a_key_is_a_usage_error() -> None:
    with pytest.raises(errors.UsageError):
        await client(FakeChannel(failing_then([], page())), Sleeps()).ingest([event_pb2.Event()])


async def test_query_events_follows_page_tokens_to_the_end() -> None:
    pages = {"": page("a", "b", token="t1"), "t1": page("c", token="t2"), "t2": page("d")}
    seen_tokens: list[str] = []

    async def handler(method: str, request: Any) -> Any:
        seen_tokens.append(request.page_token)
        assert request.page_size == 2
        return pages[request.page_token]

    flt = query_service_pb2.EventFilter(user_ids=["u"])
    events = [
        e.event.event_id
        async for e in client(FakeChannel(handler), Sleeps()).query_events(flt, page_size=2)
    ]

    assert events == ["a", "b", "c", "d"]
    assert seen_tokens == ["", "t1", "t2"]


async def test_query_events_stops_at_the_limit_without_fetching_more() -> None:
    calls: list[str] = []

    async def handler(method: str, request: Any) -> Any:
        calls.append(request.page_token)
        return page("a", "b", token="more")

    got = [e async for e in client(FakeChannel(handler), Sleeps()).query_events(limit=3)]

    assert len(got) == 3
    assert calls == ["", "more"]


def test_backoff_is_capped_and_jittered_within_half_to_full_cap() -> None:
    low = Backoff(initial_s=1.0, max_s=8.0, rand=lambda: 0.0)
    high = Backoff(initial_s=1.0, max_s=8.0, rand=lambda: 1.0)

    assert [high.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert [low.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert high.delay(1, retry_after_s=5.0) == 5.0
    with pytest.raises(ValueError, match="attempt"):
        high.delay(0)


def test_settings_are_validated() -> None:
    with pytest.raises(errors.UsageError):
        ClientSettings(deadline_s=0)
    with pytest.raises(errors.UsageError):
        ClientSettings(max_retries=-1)


def test_retry_after_metadata_is_finite_and_capped() -> None:
    def wait(value: str) -> float | None:
        return _grpcerrors.retry_after_s(rpc_error(grpc.StatusCode.UNAVAILABLE, retry_after=value))

    assert wait("2.5") == 2.5
    assert wait("86400") == 60.0
    assert wait("inf") is None
    assert wait("nan") is None
    assert wait("soon") is None


def test_settings_do_not_show_the_write_key() -> None:
    settings = ClientSettings(write_key="wk_secret-value")
    assert "wk_secret-value" not in repr(settings)
    assert "query_target='127.0.0.1:50053'" in repr(settings)
