"""pipeline.tracing and its use by the stages, with an in-memory span exporter and fake ports."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from telemetry.v1 import event_pb2

from enricher._enrich import EnrichOptions
from enricher._geo import OfflineGeo
from enricher._handler import Delivery, Handler
from enricher._metrics import Metrics as EnricherMetrics
from enricher._policy import RetryPolicy
from indexer.bulk import BulkItem, BulkWriter, ItemResult, render
from indexer.errors import SearchUnavailableError
from indexer.outcomes import Outcome
from pipeline import logs, subjects, tracing
from pipeline.config import load
from pipeline.errors import ConfigError
from pipeline.logs import JsonFormatter, TextFormatter
from pipeline.settings import TracingSettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _tracing(exporter: InMemorySpanExporter, service: str = "test") -> tracing.Tracing:
    return tracing.Tracing.exporting(service, exporter, batch=False)


# --- settings and setup -------------------------------------------------------------------


def test_tracing_is_off_by_default() -> None:
    settings = load(TracingSettings, {})
    assert settings.traces_exporter == "none"
    assert not tracing.setup("gateway", settings).enabled


def test_an_unknown_exporter_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        load(TracingSettings, {"OTEL_TRACES_EXPORTER": "jaeger"})


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("http://tracer:s3cret@collector:4317", "holds a user name or password"),
        ("tracer:s3cret@collector:4317", "holds a user name or password"),
        ("https://collector:4317/?token=s3cret", "has a query string or fragment"),
        ("https://collector:4317#s3cret", "has a query string or fragment"),
        ("http://s3cret:99999", "is not a URL with a valid host and port"),
        ("http://[s3cret::1", "is not a URL with a valid host and port"),
        ("http://:4317", "has no host"),
    ],
)
def test_an_otlp_endpoint_the_exporter_cannot_use_is_refused_without_quoting_it(
    endpoint: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(TracingSettings, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})

    assert str(err.value).startswith(f"OTEL_EXPORTER_OTLP_ENDPOINT: {problem}")
    assert "s3cret" not in str(err.value)
    assert "4317" not in str(err.value)


@pytest.mark.parametrize(
    "endpoint",
    ["http://collector:4317", "https://[::1]:4317", "collector:4317", "127.0.0.1:4317"],
)
def test_an_otlp_endpoint_as_the_exporter_reads_it_is_taken(endpoint: str) -> None:
    settings = load(TracingSettings, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})

    assert settings.otlp_endpoint == endpoint


@pytest.mark.parametrize("exporter_name", ["console", "otlp"])
def test_console_and_otlp_record_spans(exporter_name: str) -> None:
    settings = load(
        TracingSettings,
        {
            "OTEL_TRACES_EXPORTER": exporter_name,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
        },
    )
    made = tracing.setup("indexer", settings)
    try:
        assert made.enabled
        with made.span("work") as span:
            assert span.is_recording()
    finally:
        made.shutdown()
    assert not made.enabled


def test_disabled_tracing_records_nothing_and_injects_nothing() -> None:
    off = tracing.Tracing.disabled()
    headers: dict[str, str] = {}
    with off.span("request") as span:
        assert not span.is_recording()
        assert tracing.inject(headers) is False
    assert headers == {}
    assert off.incoming({"traceparent": TRACEPARENT}) is None
    assert off.incoming_link({"traceparent": TRACEPARENT}) is None


# --- propagation --------------------------------------------------------------------------


def test_a_span_continues_the_trace_of_incoming_headers(exporter: InMemorySpanExporter) -> None:
    on = _tracing(exporter)
    out: dict[str, str] = {}
    with on.span("child", parent=on.incoming({subjects.TRACEPARENT_HEADER: TRACEPARENT})) as span:
        assert tracing.inject(out) is True
    (finished,) = exporter.get_finished_spans()
    assert format_trace_id(finished.context.trace_id) == TRACE_ID
    assert finished.parent is not None
    assert format_span_id(finished.parent.span_id) == PARENT_ID
    # The outgoing header names the child, in the same trace.
    version, trace_id, span_id, flags = out[subjects.TRACEPARENT_HEADER].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id == format_span_id(span.get_span_context().span_id)


def test_a_tracestate_too_long_to_pass_on_is_dropped(exporter: InMemorySpanExporter) -> None:
    on = _tracing(exporter)
    kept, dropped = (
        "vendor=" + "k" * 250 + ",b=" + "v" * 240,
        "a=1," + ",".join(f"v{n}=" + "x" * 240 for n in range(31)),
    )
    for state, expected in ((kept, kept), (dropped, None)):
        out: dict[str, str] = {}
        headers = {subjects.TRACEPARENT_HEADER: TRACEPARENT, "tracestate": state}
        with on.span("child", parent=on.incoming(headers)):
            tracing.inject(out)
        assert out.get("tracestate") == expected
        # The trace goes on either way.
        assert out[subjects.TRACEPARENT_HEADER].split("-")[1] == TRACE_ID
    assert len(dropped) > 7000


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"traceparent": "garbage"}, {"traceparent": f"00-{'0' * 32}-{'0' * 16}-01"}],
)
def test_missing_or_invalid_traceparent_starts_no_trace(headers: Mapping[str, str] | None) -> None:
    assert tracing.extract(headers) is None
    assert tracing.link_of(headers) is None


def test_a_failing_block_marks_the_span_with_the_error_type_only(
    exporter: InMemorySpanExporter,
) -> None:
    on = _tracing(exporter)
    with pytest.raises(ValueError, match="secret-key"), on.span("request"):
        raise ValueError("secret-key")
    (finished,) = exporter.get_finished_spans()
    assert finished.attributes is not None
    assert finished.attributes["error.type"] == "ValueError"
    assert not finished.status.is_ok
    assert "secret-key" not in str(finished.to_json())


# --- logs ---------------------------------------------------------------------------------


def _log_line(formatter: logging.Formatter) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("observability-test")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.warning("nats disconnected", extra={"server": "127.0.0.1:4222"})
    line: dict[str, object] = orjson.loads(stream.getvalue())
    return line


def test_json_logs_carry_trace_and_span_ids_inside_a_span(exporter: InMemorySpanExporter) -> None:
    with _tracing(exporter).span("request") as span:
        line = _log_line(JsonFormatter("gateway"))
    context = span.get_span_context()
    assert line["trace_id"] == format_trace_id(context.trace_id)
    assert line["span_id"] == format_span_id(context.span_id)
    assert line["server"] == "127.0.0.1:4222"


def test_json_logs_outside_a_span_have_no_trace_ids() -> None:
    line = _log_line(JsonFormatter("gateway"))
    assert "trace_id" not in line
    assert "span_id" not in line


# --- enricher: one span per raw message, its traceparent onto the enriched message -------


@dataclass
class _Delivery:
    data: bytes
    headers: Mapping[str, str]
    subject: str = "telemetry.raw.v1.shop"
    stream_seq: int = 41
    deliveries: int = 1
    stored_ns: int = 1_700_000_000_000_000_000

    async def ack(self) -> None:
        return None

    async def nak(self, delay_s: float) -> None:
        return None

    async def term(self) -> None:
        return None


@dataclass
class _Sink:
    published: list[dict[str, str]] = field(default_factory=list)
    dead: int = 0

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str]) -> bool:
        self.published.append(dict(headers))
        return False

    async def dead_letter(self, delivery: Delivery, *, reason: str, detail: str) -> None:
        self.dead += 1


def _handler(sink: _Sink, tracer: tracing.Tracing) -> Handler:
    return Handler(
        sink=sink,
        geo=OfflineGeo(),
        options=EnrichOptions(),
        retry=RetryPolicy(max_deliver=3, base_delay_s=1.0, max_delay_s=8.0),
        metrics=EnricherMetrics(),
        tracer=tracer,
    )


def _raw(events: int) -> bytes:
    raw = event_pb2.RawBatch()
    raw.context.app_id = "shop"
    raw.context.client_ip = "81.2.69.142"
    for n in range(events):
        raw.events.add(event_id=f"e{n}", event_name="open")
    return raw.SerializeToString()


async def test_enricher_makes_one_child_span_per_message_not_per_event(
    exporter: InMemorySpanExporter,
) -> None:
    sink = _Sink()
    headers = {subjects.TRACEPARENT_HEADER: TRACEPARENT, subjects.MSG_ID_HEADER: "raw-1"}
    await _handler(sink, _tracing(exporter, "enricher")).handle(
        [_Delivery(_raw(5), headers), _Delivery(b"\xff not a batch", {}, stream_seq=42)]
    )
    spans = {span.attributes["pipeline.stream_sequence"]: span for span in _attributed(exporter)}
    assert sorted(spans) == [41, 42]
    good = spans[41]
    assert good.kind is SpanKind.CONSUMER
    assert format_trace_id(good.context.trace_id) == TRACE_ID
    assert good.parent is not None
    assert format_span_id(good.parent.span_id) == PARENT_ID
    assert good.attributes is not None
    assert good.attributes["pipeline.events"] == 5
    assert good.attributes["pipeline.outcome"] == "enriched"
    assert "81.2.69.142" not in str(good.to_json())
    # The enriched message carries the enricher's span, no longer the gateway's.
    (out,) = sink.published
    assert out[subjects.TRACEPARENT_HEADER] == (
        f"00-{TRACE_ID}-{format_span_id(good.context.span_id)}-01"
    )
    bad = spans[42]
    assert sink.dead == 1
    assert bad.attributes is not None
    assert bad.attributes["pipeline.outcome"] == "dead_lettered"
    assert not bad.status.is_ok


async def test_untraced_enricher_passes_the_raw_traceparent_on() -> None:
    sink = _Sink()
    headers = {subjects.TRACEPARENT_HEADER: TRACEPARENT, "tracestate": "vendor=abc"}
    await _handler(sink, tracing.Tracing.disabled()).handle([_Delivery(_raw(1), headers)])
    assert sink.published[0][subjects.TRACEPARENT_HEADER] == TRACEPARENT
    assert sink.published[0]["tracestate"] == "vendor=abc"  # a vendor's state goes on too
    too_long = {**headers, "tracestate": "v=" + "x" * tracing.MAX_TRACESTATE_CHARS}
    await _handler(sink, tracing.Tracing.disabled()).handle([_Delivery(_raw(1), too_long)])
    assert "tracestate" not in sink.published[1]


def _attributed(exporter: InMemorySpanExporter) -> Sequence[ReadableSpan]:
    spans = exporter.get_finished_spans()
    assert all(span.attributes is not None for span in spans)
    return spans


# --- indexer: one bulk span linked to every message it carries ----------------------------


class _Store:
    def __init__(self) -> None:
        self.requests = 0
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}

    async def bulk(self, body: bytes) -> Sequence[ItemResult]:
        self.requests += 1
        lines = body.splitlines()
        for head, doc in zip(lines[::2], lines[1::2], strict=True):
            action = orjson.loads(head)["create"]
            self.docs[(action["_index"], action["_id"])] = orjson.loads(doc)
        return [ItemResult(201 if n else 409) for n in range(len(lines) // 2)]

    async def sources(
        self, keys: Sequence[tuple[str, str]], fields: Sequence[str]
    ) -> list[Mapping[str, Any] | None]:
        # The 409s: a copy of the same event, stored before.
        return [{f: self.docs[key].get(f) for f in fields} for key in keys]


def _bulk_writer(
    tracer: tracing.Tracing, *, store: _Store | None = None, max_docs: int = 100
) -> BulkWriter:
    """A bulk writer on a fake store that flushes when full (or drained), never on a timer."""
    return BulkWriter(
        store or _Store(),
        max_docs=max_docs,
        max_bytes=10_000_000,
        flush_interval_s=60,
        concurrency=1,
        retry_base_s=0.01,
        retry_max_s=0.01,
        tracer=tracer,
    )


async def test_bulk_span_links_each_message_once(exporter: InMemorySpanExporter) -> None:
    store = _Store()
    writer = _bulk_writer(_tracing(exporter, "indexer"), store=store)
    done: list[Outcome] = []

    async def on_done(_: BulkItem, outcome: Outcome, reason: str) -> None:
        done.append(outcome)

    parents = [f"00-{n:032x}-{n:016x}-01" for n in (1, 2)]
    for number in range(6):
        link = tracing.link_of({"traceparent": parents[number % 2]})
        payload = render(index="t-x", doc_id=f"e{number}", source={"n": number})
        await writer.add(BulkItem(payload=payload, on_done=on_done, link=link))
    await writer.drain()
    assert store.requests == 1
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.CLIENT
    assert sorted(link.context.trace_id for link in span.links) == [1, 2]
    assert span.attributes is not None
    assert span.attributes["pipeline.documents"] == 6
    assert span.attributes["pipeline.messages"] == 2
    assert span.attributes["pipeline.documents.created"] == 5
    assert span.attributes["pipeline.documents.duplicate"] == 1
    assert sorted(done, key=lambda o: o.value) == [Outcome.CREATED] * 5 + [Outcome.DUPLICATE]


async def test_a_bulk_span_keeps_a_link_for_each_of_many_messages(
    exporter: InMemorySpanExporter,
) -> None:
    writer = _bulk_writer(_tracing(exporter, "indexer"), max_docs=1000)

    async def on_done(_: BulkItem, outcome: Outcome, reason: str) -> None:
        return None

    for number in range(1, 1001):  # single-event messages, each its own trace
        link = tracing.link_of({"traceparent": f"00-{number:032x}-{number:016x}-01"})
        payload = render(index="t-x", doc_id=f"e{number}", source={"n": number})
        await writer.add(BulkItem(payload=payload, on_done=on_done, link=link))
    await writer.drain()
    (span,) = exporter.get_finished_spans()
    assert len(span.links) == 1000


def test_a_log_line_about_a_message_names_its_trace() -> None:
    assert tracing.trace_id_of({"traceparent": TRACEPARENT}) == {"trace_id": TRACE_ID}
    for headers in (None, {}, {"traceparent": "garbage"}, {"traceparent": f"00-{'0' * 32}-1-01"}):
        assert tracing.trace_id_of(headers) == {}
    assert tracing.trace_id_of({"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"}) == {}
    assert tracing.trace_id_of({"traceparent": f"00-{'_' * 32}-{PARENT_ID}-01"}) == {}


async def test_an_untraced_enricher_logs_a_dead_letter_with_the_message_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = _Sink()
    poison = _Delivery(b"\xff not a batch", {subjects.TRACEPARENT_HEADER: TRACEPARENT})
    with caplog.at_level(logging.WARNING, logger="enricher._handler"):
        await _handler(sink, tracing.Tracing.disabled()).handle([poison])
    assert sink.dead == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "raw message dead-lettered"]
    assert record.__dict__["trace_id"] == TRACE_ID


class _CountingTracing(tracing.Tracing):
    """Tracing switched off (as by default), counting the spans asked of it."""

    def __init__(self) -> None:
        super().__init__(tracing.Tracing.disabled().tracer)
        self.spans = 0

    def span(self, *args: Any, **kwargs: Any) -> Any:
        self.spans += 1
        return super().span(*args, **kwargs)


async def test_untraced_bulk_makes_no_span() -> None:
    # Tracing off: not even a no-op span per bulk request, though the messages carry traces.
    counting = _CountingTracing()
    writer = _bulk_writer(counting)
    done: list[Outcome] = []

    async def on_done(_: BulkItem, outcome: Outcome, reason: str) -> None:
        done.append(outcome)

    link = tracing.link_of({"traceparent": f"00-{1:032x}-{1:016x}-01"})
    for number in range(2):
        payload = render(index="t", doc_id=f"a{number}", source={})
        await writer.add(BulkItem(payload=payload, on_done=on_done, link=link))
    await writer.drain()
    assert sorted(done, key=lambda o: o.value) == [Outcome.CREATED, Outcome.DUPLICATE]
    assert counting.spans == 0


async def test_a_retried_bulk_request_starts_a_trace_of_its_own(
    exporter: InMemorySpanExporter,
) -> None:
    # The retry is spawned from inside the failed request's span; it must not become its child.
    class FailingOnce(_Store):
        async def bulk(self, body: bytes) -> Sequence[ItemResult]:
            if not self.requests:
                self.requests += 1
                raise SearchUnavailableError("connection refused")
            return await super().bulk(body)

    store = FailingOnce()
    writer = _bulk_writer(_tracing(exporter, "indexer"), store=store)
    done: list[Outcome] = []

    async def on_done(_: BulkItem, outcome: Outcome, reason: str) -> None:
        done.append(outcome)

    link = tracing.link_of({"traceparent": TRACEPARENT})
    await writer.add(
        BulkItem(payload=render(index="t", doc_id="a", source={}), on_done=on_done, link=link)
    )
    await writer.drain()

    failed, retried = exporter.get_finished_spans()
    assert done == [Outcome.DUPLICATE]  # the fake store answers 409 to a request's first item
    for span in (failed, retried):
        assert span.parent is None
        assert [link.context.trace_id for link in span.links] == [int(TRACE_ID, 16)]
    assert failed.context is not None
    assert retried.context is not None
    assert failed.context.trace_id != retried.context.trace_id


def test_an_otel_limit_that_is_not_a_count_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "abc")
    settings = load(TracingSettings, {"OTEL_TRACES_EXPORTER": "console"})
    with pytest.raises(ConfigError, match="OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"):
        tracing.setup("gateway", settings)


def test_a_stop_waits_a_bounded_time_for_a_collector_that_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = threading.Event()

    class Stuck(InMemorySpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> Any:
            released.wait(30)  # an exporter retrying a collector that is away
            return super().export(spans)

    made = tracing.Tracing.exporting("gateway", Stuck())
    with made.span("work"):
        pass
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.tracing"):
            made.shutdown(timeout_s=0.2)
        assert not made.enabled
        assert "spans not exported within 0 s of the stop" in caplog.text
    finally:
        released.set()


class _Batches(InMemorySpanExporter):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        self.sizes.append(len(spans))
        return super().export(spans)


def test_spans_are_exported_32_at_a_time_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bulk span of 1,000 links is ~35 KB: 512 a request would pass a collector's 4 MiB.
    for env, most in ((None, 32), ("100", 100)):
        if env is not None:
            monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", env)
        exporter = _Batches()
        made = tracing.Tracing.exporting("indexer", exporter)
        for n in range(100):
            with made.span(f"s{n}"):
                pass
        made.shutdown()
        assert sum(exporter.sizes) == 100
        assert max(exporter.sizes) == most


@pytest.mark.parametrize(
    ("endpoint", "warned"),
    [
        ("http://127.0.0.1:4318/v1/traces", True),
        ("http://127.0.0.1:4317/", False),
        ("http://127.0.0.1:4317", False),
        ("127.0.0.1:4317", False),
    ],
)
def test_an_otlp_endpoint_with_a_path_is_warned_of_without_quoting_it(
    endpoint: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The gRPC exporter drops the path: an OTLP/HTTP address would get no span, silently.
    settings = load(
        TracingSettings,
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.tracing"):
        made = tracing.setup("indexer", settings)
    made.shutdown()
    lines = [
        r.getMessage() for r in caplog.records if "OTEL_EXPORTER_OTLP_ENDPOINT" in r.getMessage()
    ]
    assert bool(lines) is warned
    assert all(
        "v1/traces" not in line.split("such as")[0] and "127.0.0.1" not in line for line in lines
    )


def test_json_logs_leave_out_uvicorns_coloured_copy_of_the_message() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "", 0, "Started server process [%d]", (7,), None
    )
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    line = json.loads(JsonFormatter("gateway").format(record))
    assert line["msg"] == "Started server process [7]"
    assert "color_message" not in line


def _text_line(formatter: logging.Formatter, **extra: object) -> str:
    record = logging.LogRecord(
        "indexer.service", logging.WARNING, "", 0, "%s not ready", ("indexer",), None
    )
    record.__dict__.update(extra)
    return formatter.format(record)


def test_text_logs_carry_the_context_fields_json_logs_do() -> None:
    line = _text_line(
        TextFormatter("indexer"),
        reason="nats not connected",
        messages=3,
        subject="a=b",
        quoted='say "hi"',
        empty="",
        color_message="\x1b[36mx\x1b[0m",
    )
    assert line.endswith(
        ' indexer WARNING indexer.service: indexer not ready reason="nats not connected"'
        ' messages=3 subject="a=b" quoted="say \\"hi\\"" empty=""'
    )
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line)


def test_text_logs_carry_trace_and_span_ids_inside_a_span(exporter: InMemorySpanExporter) -> None:
    with _tracing(exporter).span("request") as span:
        line = _text_line(TextFormatter("gateway"))
    context = span.get_span_context()
    assert line.endswith(
        f"trace_id={format_trace_id(context.trace_id)} span_id={format_span_id(context.span_id)}"
    )


def test_the_text_log_format_is_the_text_formatter() -> None:
    logs.configure("gateway", fmt="text")
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, TextFormatter)


def test_the_opensearch_clients_warning_per_failed_request_is_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("indexer", fmt="json")
    try:
        raise ConnectionRefusedError("connect failed")
    except OSError:
        logging.getLogger("opensearch").warning(
            "HEAD http://127.0.0.1:9200/ [status:N/A]", exc_info=True
        )
    logging.getLogger("indexer.bulk").warning("opensearch unavailable, holding intake")
    lines = capsys.readouterr().err.splitlines()
    assert [orjson.loads(line)["msg"] for line in lines] == [
        "opensearch unavailable, holding intake"
    ]
