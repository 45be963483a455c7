"""A typed async client for the pipeline's gRPC services: QueryService and IngestService.

    async with TelemetryClient(ClientSettings(query_target="127.0.0.1:50053")) as client:
        flt = EventFilter(user_ids=["user-123"])
        async for event in client.query_events(flt, page_size=500):
            print(event.event.event_name)

Messages are the generated `telemetry.v1` classes (typed by mypy-protobuf). Calls carry a
deadline; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with capped exponential backoff and
jitter (honouring the server's `retry-after`), DEADLINE_EXCEEDED only for reads. What still
fails is raised as a `tpipe.errors.ClientError` subclass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import (
    event_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from tpipe import _grpcerrors
from tpipe._backoff import Backoff
from tpipe.errors import ClientError, UsageError

EventFilter = query_service_pb2.EventFilter
EnrichedEvent = event_pb2.EnrichedEvent
Event = event_pb2.Event

DEFAULT_QUERY_TARGET = "127.0.0.1:50053"
DEFAULT_INGEST_TARGET = "127.0.0.1:50051"
DEFAULT_DEADLINE_S = 10.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_PAGE_SIZE = 500  # the server clamps to its maximum (1000)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """Where the services are and how hard to try.

    `deadline_s` bounds each attempt; `max_retries` is the number of retries after the first
    attempt (0: never retry).
    """

    query_target: str = DEFAULT_QUERY_TARGET
    ingest_target: str = DEFAULT_INGEST_TARGET
    write_key: str = field(default="", repr=False)  # a secret: kept out of logs and tracebacks
    deadline_s: float = DEFAULT_DEADLINE_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if self.deadline_s <= 0:
            raise UsageError("deadline_s must be greater than 0")
        if self.max_retries < 0:
            raise UsageError("max_retries must be 0 or greater")


class TelemetryClient:
    """QueryEvents, AggregateEvents and IngestEvents over grpc.aio, with retries and deadlines.

    Use it as an async context manager (or call `close()`); channels open on first use.
    Tests may pass their own channels.
    """

    def __init__(
        self,
        settings: ClientSettings | None = None,
        *,
        query_channel: grpc.aio.Channel | None = None,
        ingest_channel: grpc.aio.Channel | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings or ClientSettings()
        self._query_channel = query_channel
        self._ingest_channel = ingest_channel
        self._owned: list[grpc.aio.Channel] = []
        self._sleep = sleep
        self._query: query_service_pb2_grpc.QueryServiceAsyncStub | None = None
        self._ingest: ingest_service_pb2_grpc.IngestServiceAsyncStub | None = None

    async def __aenter__(self) -> TelemetryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channels this client opened (idempotent)."""
        owned, self._owned = self._owned, []
        for channel in owned:
            await channel.close()
        self._query = self._ingest = None

    def _channel(self, given: grpc.aio.Channel | None, target: str) -> grpc.aio.Channel:
        if given is not None:
            return given
        channel = grpc.aio.insecure_channel(target)
        self._owned.append(channel)
        return channel

    def _query_stub(self) -> query_service_pb2_grpc.QueryServiceAsyncStub:
        if self._query is None:
            channel = self._channel(self._query_channel, self.settings.query_target)
            self._query = query_service_pb2_grpc.QueryServiceStub(channel)
        return self._query

    def _ingest_stub(self) -> ingest_service_pb2_grpc.IngestServiceAsyncStub:
        if self._ingest is None:
            channel = self._channel(self._ingest_channel, self.settings.ingest_target)
            self._ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        return self._ingest

    async def _call(
        self,
        call: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        target: str,
        idempotent: bool,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Resp:
        settings = self.settings
        attempt = 0
        while True:
            try:
                return await call(request, timeout=settings.deadline_s, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                if attempt >= settings.max_retries or not _grpcerrors.retryable(
                    err.code(), idempotent=idempotent
                ):
                    raise _grpcerrors.translate(err, target=target) from None
                attempt += 1
                delay = settings.backoff.delay(
                    attempt, retry_after_s=_grpcerrors.retry_after_s(err)
                )
            await self._sleep(delay)

    async def query_page(
        self,
        flt: query_service_pb2.EventFilter | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        partial: bool = False,
    ) -> query_service_pb2.QueryEventsResponse:
        """One page of events matching `flt`, newest first. With `partial`, a page the event
        store answered without some indices (named in `unreachable`) instead of UNAVAILABLE."""
        request = query_service_pb2.QueryEventsRequest(
            filter=flt, page_size=page_size, page_token=page_token, return_partial_success=partial
        )
        return await self._call(
            self._query_stub().QueryEvents,
            request,
            target=self.settings.query_target,
            idempotent=True,
        )

    async def query_events(
        self,
        flt: query_service_pb2.EventFilter | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        limit: int | None = None,
        unreachable: set[str] | None = None,
    ) -> AsyncIterator[event_pb2.EnrichedEvent]:
        """Every event matching `flt` (at most `limit`), newest first, page after page.

        Given an `unreachable` set, pages the event store answered without some indices are
        accepted and those indices added to it; without one, such a page is UNAVAILABLE.
        """
        if limit is not None and limit < 0:
            raise UsageError("limit must be 0 or greater")
        yielded = 0
        token = ""
        while limit is None or yielded < limit:
            page = await self.query_page(
                flt, page_size=page_size, page_token=token, partial=unreachable is not None
            )
            if unreachable is not None:
                unreachable.update(page.unreachable)
            for event in page.events:
                if limit is not None and yielded >= limit:
                    return
                yielded += 1
                yield event
            token = page.next_page_token
            if not token or not page.events:
                return

    async def aggregate(
        self,
        flt: query_service_pb2.EventFilter | None = None,
        *,
        group_by: query_service_pb2.AggregationField.ValueType = (
            query_service_pb2.AGGREGATION_FIELD_UNSPECIFIED
        ),
        interval: query_service_pb2.HistogramInterval.ValueType = (
            query_service_pb2.HISTOGRAM_INTERVAL_UNSPECIFIED
        ),
        limit: int = 0,
        partial: bool = False,
    ) -> query_service_pb2.AggregateEventsResponse:
        """Counts of events matching `flt`: by a field's values and/or per time bucket. With
        `partial`, counts over what answered (the rest named in `unreachable`)."""
        request = query_service_pb2.AggregateEventsRequest(
            filter=flt,
            group_by=group_by,
            interval=interval,
            limit=limit,
            return_partial_success=partial,
        )
        return await self._call(
            self._query_stub().AggregateEvents,
            request,
            target=self.settings.query_target,
            idempotent=True,
        )

    async def ingest(
        self,
        events: Sequence[event_pb2.Event],
        *,
        sent_at: Timestamp | None = None,
        idempotency_key: str = "",
    ) -> ingest_service_pb2.IngestEventsResponse:
        """Ingests one batch with the settings' write key; returns the receipt.

        A retry sends the same batch again; the gateway stores it once (by `idempotency_key`,
        or by content without one).
        """
        if not self.settings.write_key:
            raise UsageError("a write key is needed to ingest events")
        request = ingest_service_pb2.IngestEventsRequest(
            events=events, sent_at=sent_at, idempotency_key=idempotency_key
        )
        return await self._call(
            self._ingest_stub().IngestEvents,
            request,
            target=self.settings.ingest_target,
            idempotent=False,
            metadata=(("authorization", f"Bearer {self.settings.write_key}"),),
        )


__all__ = [
    "ClientError",
    "ClientSettings",
    "EnrichedEvent",
    "Event",
    "EventFilter",
    "TelemetryClient",
]
