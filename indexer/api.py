"""gRPC QueryService over OpenSearch, with health checking and server reflection.

Request validation and query building live in `queries`/`paging`; this module maps
our errors to canonical gRPC codes: InvalidArgumentError -> INVALID_ARGUMENT (the
message names the field), SearchUnavailableError -> UNAVAILABLE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import grpc
from telemetry.v1 import query_service_pb2 as qs
from telemetry.v1 import query_service_pb2_grpc as qs_grpc

from indexer import queries
from indexer.errors import (
    IndexerError,
    InvalidArgumentError,
    SearchLimitError,
    SearchRequestError,
    SearchUnavailableError,
)
from indexer.metrics import Metrics
from pipeline import grpcserver, tracing
from pipeline.query_names import PARTIAL_ANSWER_TRAILER, STORE_UNAVAILABLE_TRAILER

log = logging.getLogger(__name__)

SERVICE_NAME = qs.DESCRIPTOR.services_by_name["QueryService"].full_name


class SearchPort(Protocol):
    """Runs one `_search` over the event indices."""

    @property
    def pattern(self) -> str: ...

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]: ...

    async def red_indices(self) -> list[str]: ...

    async def has_words(self, text: str) -> bool:
        """Whether event_message's analyser makes at least one word of `text`."""
        ...

    async def wait_for_shards(self, timeout_s: float) -> bool: ...


# How long a search whose shards did not all answer waits for them to start before it is
# made again: a daily index is created by its first event, and its shard starts a moment later.
# Once a wait has run out, none is made until a search is answered whole again: the wait is for
# every index of the prefix, so while one stays red no wait can end early, and each query would
# pay all of it.
SHARDS_WAIT_S = 1.0


MAX_NAMED_INDICES = 20  # in the message refusing a partial answer


class PartialAnswerError(IndexerError):
    """Part of the event store did not answer and the caller did not accept a partial answer."""

    def __init__(self, shards: int, indices: list[str]) -> None:
        # Named in a gRPC status message, which travels in a trailer: gRPC drops a call whose
        # trailers pass its metadata limit (16 KiB), which years of daily indices would.
        named = ", ".join(indices[:MAX_NAMED_INDICES])
        if len(indices) > MAX_NAMED_INDICES:
            named += f" and {len(indices) - MAX_NAMED_INDICES} more"
        super().__init__(
            f"{shards} shard(s) of the event store did not answer ({named}): "
            "events in them would be missing; try again later, or set return_partial_success "
            "for what the rest holds"
        )


class BusyError(IndexerError):
    """As many queries as allowed are being answered already."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the event store answers {limit} queries at once already; try again shortly"
        )


class QueryServicer(qs_grpc.QueryServiceServicer):
    """QueryEvents and AggregateEvents; past `max_in_flight` calls at once (None: no bound),
    a call is answered RESOURCE_EXHAUSTED at once: each holds a page (up to 1,000 events) or
    an aggregation's buckets in memory, beside the bulk indexing."""

    def __init__(
        self,
        search: SearchPort,
        *,
        max_in_flight: int | None = None,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        self._search = search
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._metrics = metrics or Metrics()
        self._tracing = tracer or tracing.Tracing.disabled()
        self._waits_ran_out = False  # the last wait for shards ran out, none whole since

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Holds one of the `max_in_flight` calls; raises BusyError when none is free."""
        if self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
            raise BusyError(self._max_in_flight)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def QueryEvents(
        self, request: qs.QueryEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> qs.QueryEventsResponse:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        with self._span("QueryEvents", context) as span:
            try:
                body, size = queries.search_body(request)
                with self._slot():
                    page = queries.Page(body, size=size, flt=request.filter)
                    unreachable: list[str] = []
                    fetch: dict[str, Any] | None = body
                    while fetch is not None:
                        answer = await self._search_whole(fetch, queries.EVENTS_FILTER_PATH)
                        if not unreachable:
                            # Said, counted (and refused) once per call, not per fetch.
                            unreachable = await self._unreachable(
                                "QueryEvents",
                                answer,
                                span,
                                partial_ok=request.return_partial_success,
                            )
                        elif queries.unanswered_shards(answer):
                            unreachable += sorted(
                                queries.failed_indices(answer).difference(unreachable)
                            )
                        fetch = page.add(answer)
                    response = page.reply
                    if not response.events and not request.page_token:
                        await self._check_words(request.filter.text)
                response.unreachable.extend(unreachable)
                span.set_attribute("pipeline.events", len(response.events))
                return response
            except Exception as err:
                code, detail = _status(err, paged=bool(request.page_token))
                tracing.failed(span, type(err).__name__)
                await context.abort(code, detail, _trailers(err))
                raise  # unreachable: abort raises
            finally:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                self._observe("QueryEvents", code, started)

    async def AggregateEvents(
        self, request: qs.AggregateEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> qs.AggregateEventsResponse:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        with self._span("AggregateEvents", context) as span:
            try:
                body = queries.aggregate_body(request)
                with self._slot():
                    answer = await self._search_whole(body, queries.AGGREGATE_FILTER_PATH)
                    unreachable = await self._unreachable(
                        "AggregateEvents", answer, span, partial_ok=request.return_partial_success
                    )
                    counts = queries.aggregate_response(answer, body)
                    if not counts.total_count:
                        await self._check_words(request.filter.text)
                counts.unreachable.extend(unreachable)
                return counts
            except Exception as err:
                code, detail = _status(err, paged=False)
                tracing.failed(span, type(err).__name__)
                await context.abort(code, detail, _trailers(err))
                raise
            finally:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                self._observe("AggregateEvents", code, started)

    def _span(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AbstractContextManager[tracing.Span]:
        """One span per call, continuing the caller's trace when it sent a traceparent."""
        parent = None
        if self._tracing.enabled:
            metadata = {
                key: value
                for key, value in (context.invocation_metadata() or ())
                if isinstance(value, str)
            }
            parent = self._tracing.incoming(metadata)
        return self._tracing.span(
            f"{SERVICE_NAME}/{method}",
            kind=tracing.SpanKind.SERVER,
            parent=parent,
            attributes={"rpc.system": "grpc", "rpc.method": method},
        )

    async def _search_whole(self, body: dict[str, Any], filter_path: str) -> dict[str, Any]:
        """The search's answer; when some shards did not answer (all of them: OpenSearch's
        503), it is made once more if they start within SHARDS_WAIT_S, as a new index's do."""
        try:
            answer = await self._search.search(body, filter_path=filter_path)
        except SearchUnavailableError as err:
            if err.status != 503 or not await self._shards_started():
                raise
        else:
            if not queries.unanswered_shards(answer):
                self._waits_ran_out = False
                return answer
            if not await self._shards_started():
                return answer
        return await self._search.search(body, filter_path=filter_path)

    async def _check_words(self, text: str) -> None:
        """Raises InvalidArgumentError for free text the analyser finds no word in (a symbol
        it drops, say): its search matches nothing whatever is stored. Asked only once such a
        search answered nothing, so other searches pay nothing for it; when the store cannot
        say, the empty answer stands."""
        if not text:
            return
        try:
            words = await self._search.has_words(text)
        except (SearchUnavailableError, SearchRequestError) as err:
            log.debug("could not analyse free text: %s", err)
            return
        if not words:
            raise InvalidArgumentError("filter.text", queries.NO_WORDS)

    async def _shards_started(self) -> bool:
        """Waits up to SHARDS_WAIT_S for the shards to start; at once False while the last
        wait's shards have not answered since (a red index: waiting again would not help)."""
        if self._waits_ran_out:
            return False
        started = await self._search.wait_for_shards(SHARDS_WAIT_S)
        self._waits_ran_out = not started
        return started

    async def _unreachable(
        self, method: str, answer: dict[str, Any], span: tracing.Span, *, partial_ok: bool
    ) -> list[str]:
        """The indices that did not answer (none: a whole answer). Without `partial_ok` an
        answer missing some raises PartialAnswerError: a page that silently lacks events
        would pass for complete, and so would an export made of such pages."""
        missing = queries.unanswered_shards(answer)
        if not missing:
            return []
        names = queries.failed_indices(answer)
        try:
            names.update(await self._search.red_indices())
        except SearchUnavailableError as err:
            log.warning("could not read which indices are red: %s", err)
        indices = sorted(names) or [self._search.pattern]
        self._metrics.query_partial.labels(method=method, returned=str(partial_ok).lower()).inc()
        span.set_attribute("pipeline.shards.unanswered", missing)
        log.warning(
            "OpenSearch answered without some shards; events in them are missing%s",
            "" if partial_ok else " (refused: the caller did not set return_partial_success)",
            extra={"method": method, "unanswered_shards": missing, "indices": indices},
        )
        if not partial_ok:
            raise PartialAnswerError(missing, indices)
        return indices

    def _observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.query_seconds.labels(method=method, code=code.name).observe(
            time.perf_counter() - started
        )


def _status(err: Exception, *, paged: bool) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, InvalidArgumentError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(err)
    if isinstance(err, SearchLimitError):
        most = "" if err.most is None else f" ({err.most:,})"
        if err.limit == SearchLimitError.CLAUSES:  # only free text makes a clause per word
            return grpc.StatusCode.INVALID_ARGUMENT, (
                f"filter.text: has more words than the event store searches at once{most}; "
                "search for fewer"
            )
        # Only a histogram makes buckets: one per interval from the first event found to the
        # last (or over the filter's range).
        return grpc.StatusCode.INVALID_ARGUMENT, (
            f"interval: makes more buckets than the event store allows{most}; "
            "ask for a narrower time range or a coarser interval"
        )
    if isinstance(err, PartialAnswerError):
        return grpc.StatusCode.UNAVAILABLE, str(err)
    if isinstance(err, BusyError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)
    if isinstance(err, SearchUnavailableError):
        # The caller only learns "retry"; the operator needs the cause.
        log.warning("query answered UNAVAILABLE: %s", err)
        return grpc.StatusCode.UNAVAILABLE, "the event store is unavailable; try again later"
    if isinstance(err, SearchRequestError) and paged:
        # A forged token is what makes our own query invalid, as far as the caller can know;
        # said for the operator too, should the store's state be the cause (a daily index
        # mapped without the template, say).
        log.warning("paged query refused by the event store, answered as a bad token: %s", err)
        return grpc.StatusCode.INVALID_ARGUMENT, "page_token: is not a valid page token"
    log.exception("query failed", exc_info=err)
    return grpc.StatusCode.INTERNAL, "internal error"


def _trailers(err: Exception) -> tuple[tuple[str, str], ...]:
    """Marks a refused partial answer and an unanswering event store, so the gateway may
    pass their details on (a channel failure's it keeps to itself)."""
    if isinstance(err, PartialAnswerError):
        return ((PARTIAL_ANSWER_TRAILER, "refused"),)
    if isinstance(err, SearchUnavailableError):
        return ((STORE_UNAVAILABLE_TRAILER, "unavailable"),)
    return ()


class QueryServer(grpcserver.GrpcServer):
    """The gRPC server: QueryService (at most `max_in_flight` calls at once), grpc.health.v1
    and reflection."""

    def __init__(
        self,
        search: SearchPort,
        *,
        host: str,
        port: int,
        max_in_flight: int | None = None,
        metrics: Metrics | None = None,
        tracer: tracing.Tracing | None = None,
    ) -> None:
        super().__init__(
            service_name=SERVICE_NAME,
            host=host,
            port=port,
            host_setting="INDEXER_GRPC_HOST",
            port_setting="INDEXER_GRPC_PORT",
        )
        self._search = search
        self._max_in_flight = max_in_flight
        self._metrics = metrics
        self._tracing = tracer

    def register(self, server: grpc.aio.Server) -> None:
        servicer = QueryServicer(
            self._search,
            max_in_flight=self._max_in_flight,
            metrics=self._metrics,
            tracer=self._tracing,
        )
        qs_grpc.add_QueryServiceServicer_to_server(servicer, server)
