"""Observability traces: OpenTelemetry per service, W3C trace context in NATS headers.

Each service gets its own `Tracing` (its own tracer provider, named after the service),
so several services can run in one process, as the tests do. With the exporter `none`
(the default) the tracer is OpenTelemetry's no-op one and `span()` does nothing at all.

Spans are made per request, per NATS message or per bulk request, never per event. The
trace context travels from stage to stage in the `traceparent` header of the messages.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from pipeline.errors import ConfigError
from pipeline.settings import TracingSettings

__all__ = [
    "INVALID_SPAN",
    "NEW_TRACE",
    "Link",
    "Span",
    "SpanContext",
    "SpanKind",
    "Tracing",
    "current_ids",
    "extract",
    "inject",
    "link_of",
    "setup",
]

INSTRUMENTATION_NAME = "telemetry-pipeline"
INVALID_SPAN = trace.INVALID_SPAN  # what a disabled `Tracing` hands out: every call a no-op
# A span's `parent` when it starts a trace of its own whatever is current: work spawned from
# inside a span (a retry scheduled by a failed request) would otherwise inherit it.
NEW_TRACE = Context()
# How long a stop waits for the last spans to be exported: a collector that is away would
# hold it for the exporter's own timeouts (seconds, retried).
SHUTDOWN_TIMEOUT_S = 3.0

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C trace context: a tracer SHOULD pass on at least 512 characters of tracestate, and may
# drop a longer one.
MAX_TRACESTATE_CHARS = 512
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}", re.ASCII)
# Links one span may hold unless the environment says (OpenTelemetry's own default, 128,
# would silently drop most of a bulk request's messages).
MAX_LINKS = 10_000
_LINK_LIMIT_ENV = "OTEL_SPAN_LINK_COUNT_LIMIT"
# Spans per export unless the environment says: a bulk span of 1,000 links is about 35 KB
# encoded, and the SDK's own 512 would make a request past an OTLP collector's usual 4 MiB
# limit, which refuses it whole.
EXPORT_BATCH_SPANS = 32
_EXPORT_BATCH_ENV = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"


class Tracing:
    """One service's tracer; `shutdown()` flushes and closes what the service owns."""

    def __init__(self, tracer: trace.Tracer, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self._provider = provider

    @classmethod
    def disabled(cls) -> Tracing:
        """No spans at all (the exporter `none`)."""
        return cls(trace.NoOpTracer())

    @classmethod
    def exporting(cls, service: str, exporter: SpanExporter, *, batch: bool = True) -> Tracing:
        """Spans of `service` sent to `exporter` (batched, or one by one for tests)."""
        try:
            # A bulk span links every message it carries: up to one per document.
            limits = SpanLimits(max_links=None if _LINK_LIMIT_ENV in os.environ else MAX_LINKS)
        except ValueError as err:  # an OTEL_*_LIMIT variable that is not a count; it names it
            raise ConfigError(str(err)) from None
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service}), span_limits=limits
        )
        processor = (
            BatchSpanProcessor(
                exporter,
                max_export_batch_size=None
                if _EXPORT_BATCH_ENV in os.environ
                else EXPORT_BATCH_SPANS,
            )
            if batch
            else SimpleSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
        return cls(provider.get_tracer(INSTRUMENTATION_NAME), provider)

    @property
    def enabled(self) -> bool:
        """True when spans are recorded and exported."""
        return self._provider is not None

    def incoming(self, headers: Mapping[str, str] | None) -> Context | None:
        """The caller's trace context from request or message headers (None when disabled)."""
        return extract(headers) if self._provider is not None else None

    def incoming_link(self, headers: Mapping[str, str] | None) -> SpanContext | None:
        """The span context of a message's headers, to link to (None when disabled)."""
        return link_of(headers) if self._provider is not None else None

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        links: Sequence[Link] = (),
        attributes: Attributes = None,
    ) -> Iterator[Span]:
        """A span made current for the block; an exception marks it failed with its type.

        Only the exception's type is recorded: messages may carry what a client sent.
        """
        if self._provider is None:
            yield INVALID_SPAN
            return
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as err:
                status = getattr(span, "status", None)
                if status is None or status.is_unset:  # keep what the code already said
                    failed(span, type(err).__name__)
                raise

    def start(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
        attributes: Attributes = None,
    ) -> Span:
        """A span the caller ends (not made current): for work that is not one block."""
        if self._provider is None:
            return INVALID_SPAN
        return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Exports what is buffered and closes the exporter, waiting at most `timeout_s`
        (idempotent): spans a collector that is away did not take are left behind."""
        provider, self._provider = self._provider, None
        if provider is None:
            return
        # On a daemon thread: the exporter's own timeouts and retries are not this stop's.
        closing = threading.Thread(target=provider.shutdown, name="tracing-shutdown", daemon=True)
        closing.start()
        closing.join(timeout_s)
        if closing.is_alive():
            log.warning(
                "spans not exported within %.0f s of the stop (collector away?); left behind",
                timeout_s,
            )


def failed(span: Span, error_type: str) -> None:
    """Marks a span failed, naming the kind of error (never its message)."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def setup(service: str, settings: TracingSettings) -> Tracing:
    """The tracing the settings ask for; `none` costs nothing."""
    exporter: SpanExporter
    if settings.traces_exporter == "console":
        exporter = ConsoleSpanExporter(service_name=service)
    elif settings.traces_exporter == "otlp":
        # Imported here: the gRPC exporter is heavy and most runs do not export.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if _has_path(settings.otlp_endpoint):
            # Not quoted: the setting is secret. A path is the mark of an OTLP/HTTP address.
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT has a path, which OTLP/gRPC does not use: spans go"
                " to its host and port alone (an OTLP/HTTP address, such as .../v1/traces on"
                " port 4318, is the wrong kind)"
            )
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    else:
        return Tracing.disabled()
    return Tracing.exporting(service, exporter)


def _has_path(endpoint: str) -> bool:
    """Whether a URL endpoint names a path beyond `/` (a bare host:port names none)."""
    return "://" in endpoint and urlsplit(endpoint).path not in ("", "/")


def inject(headers: MutableMapping[str, str], span: Span | None = None) -> bool:
    """Writes the W3C `traceparent` of `span` (default: the current one) into `headers`.

    Returns False, writing nothing, when there is no valid span.
    """
    context = trace.set_span_in_context(span) if span is not None else None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    headers.update(carrier)
    return bool(carrier)


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context carried by `headers` (a `traceparent`), or None.

    A `tracestate` longer than MAX_TRACESTATE_CHARS is left out (W3C trace context lets a
    tracer drop it): it is passed on in every message's headers, which a client must not be
    able to grow past what a broker message has room for.
    """
    if not headers:
        return None
    traceparent = headers.get(TRACEPARENT)
    if traceparent is None:
        return None
    carrier = {TRACEPARENT: traceparent}
    state = headers.get(TRACESTATE)
    if state is not None and len(state) <= MAX_TRACESTATE_CHARS:
        carrier[TRACESTATE] = state
    context = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def link_of(headers: Mapping[str, str] | None) -> SpanContext | None:
    """The span context carried by `headers`, to link a span covering many messages to it."""
    context = extract(headers)
    if context is None:
        return None
    return trace.get_current_span(context).get_span_context()


def trace_id_of(headers: Mapping[str, str] | None) -> dict[str, str]:
    """{"trace_id": ...} of the `traceparent` in a message's headers, for a log line about that
    message (whether or not this process records spans); {} when there is none."""
    found = _TRACEPARENT.fullmatch((headers or {}).get(TRACEPARENT, ""))
    if found is None or found[1] == "0" * 32:
        return {}
    return {"trace_id": found[1]}


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, or None outside a recorded span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)
