"""Observability logs: one JSON object a line (or plain text), never one line per event."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from pipeline.tracing import current_ids

# A record's own attributes, and uvicorn's `color_message` extra (its message again, with
# terminal colour codes): every other attribute is an `extra=` field, kept.
_LEFT_OUT = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "color_message",
}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """A line's context: the trace and span ids inside a recorded span, then the record's
    `extra=` fields."""
    fields: dict[str, Any] = {}
    ids = current_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    for key, value in record.__dict__.items():
        if key not in _LEFT_OUT and not key.startswith("_"):
            fields[key] = value
    return fields


def _utc(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; `extra=` fields are kept as keys.

    Inside a recorded span the line carries `trace_id` and `span_id`, so a log line
    can be found from a trace and the other way round.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """Formats a record as a line for people: time, service, level, logger and message, then
    the JSON line's other fields as `key=value` (a value with a space, a quote or an `=` in
    JSON quotes), and the stack below it."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _utc(record),
            self._service,
            record.levelname,
            f"{record.name}:",
            record.getMessage(),
        ]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _context(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if not text or any(c.isspace() or c in '"=' for c in text):
        return orjson.dumps(text).decode()
    return text


class Throttle:
    """At most one line per `interval_s` for one kind of warning that repeats per message
    (a retry, a dead letter not stored) while something downstream is failing: an outage of
    minutes must not write a line for every message and every redelivery.

    `admit()` says whether to write this one, and how many were held back since the last;
    `since_last_line` words that count for the end of the line.
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def admit(self) -> int | None:
        """None: leave this one out. Else write it, with the returned count of lines left
        out since the last one written."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._interval_s
        return held


def since_last_line(held_back: int, *, what: str = "more") -> str:
    """The end of a line `Throttle.admit()` let through: ` (3 more since the last line)` with
    `what` ("more", "more retried"), or nothing when none was held back (the first line, or
    the first after a quiet interval)."""
    return f" ({held_back} {what} since the last line)" if held_back > 0 else ""


def warn_paced(
    logger: logging.Logger,
    throttle: Throttle,
    message: str,
    *,
    what: str = "more",
    extra: Mapping[str, Any],
) -> None:
    """Writes the warning `message` when `throttle` lets it through, ended by how many were
    held back since the last (`since_last_line` with `what`) and with that count in
    `held_back` beside `extra`'s fields: those of the one written, standing for the rest."""
    held_back = throttle.admit()
    if held_back is not None:
        logger.warning(
            "%s%s",
            message,
            since_last_line(held_back, what=what),
            extra={**extra, "held_back": held_back},
            stacklevel=2,
        )


def configure(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Sends the root logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at INFO.
    for noisy in ("urllib3", "uvicorn.access", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # opensearch-py writes a warning with a whole traceback for every request that fails (a
    # readiness ping a second while OpenSearch is away: megabytes an hour); the indexer says
    # what failed itself, once per change or throttled.
    logging.getLogger("opensearch").setLevel(logging.ERROR)
