"""Reading events to send: a JSON array, a {"sent_at", "events"} object, one event object,
or NDJSON.

A JSON document is read whole. NDJSON is read a line at a time, so a file or pipe of any size
is sent with bounded memory: a regular file's lines are checked in a first pass (a broken line
is then found before anything is sent, and the total is known for the progress line); a pipe's
are sent as they come.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from tpipe.errors import UsageError

EXPECTED = "expected a JSON array or one event per line"


class Events:
    """The events of one input, in batches; `total` is None while a pipe is still being read."""

    def __init__(self, total: int | None, values: Iterator[Any]) -> None:
        self.total = total
        self._values = values

    def batches(self, size: int) -> Iterator[list[Any]]:
        """Lists of up to `size` events, in input order."""
        while batch := list(itertools.islice(self._values, size)):
            yield batch


def read_events(stream: IO[bytes], *, source: str) -> Events:
    """The events of `stream` (see `parse_events` for the shapes). NDJSON is streamed; a JSON
    document, one event object and anything whose shape the first two lines leave in doubt
    are read whole."""
    head: list[bytes] = []  # the lines read to decide, blank ones included
    filled: list[bytes] = []
    for line in _lines(stream):
        head.append(line)
        if line.strip():
            filled.append(line)
            if len(filled) == 2:
                break
    if len(filled) < 2 or not _an_object(filled[0]):
        events = parse_events(b"".join(head) + stream.read(), source=source)
        return Events(len(events), iter(events))
    if stream.seekable():
        stream.seek(0)
        total = sum(1 for _ in _values(_lines(stream), source))  # every line checked first
        stream.seek(0)
        return Events(total, _values(_lines(stream), source))
    return Events(None, _values(itertools.chain(head, stream), source))


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's lines, the first without a UTF-8 byte order mark."""
    first = stream.readline()
    if first:
        yield first.removeprefix(codecs.BOM_UTF8)
        # Not `yield from`: closing this generator would then close the stream.
        for line in stream:  # noqa: UP028
            yield line


def _values(lines: Iterable[bytes], source: str) -> Iterator[Any]:
    """One JSON value per non-empty line; a line that does not parse is a UsageError."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise _not_json(source, number, err) from None


def parse_events(data: bytes, *, source: str) -> list[Any]:
    """The events in `data`: the items of a JSON array (or of an object's "events"), one
    event object, or one JSON value per non-empty line. Items are passed on as they are: the
    gateway judges them. An input that is one number, string, boolean or null is refused: it
    holds no event at all. A leading UTF-8 byte order mark is skipped, as the gateway does.
    """
    data = data.removeprefix(codecs.BOM_UTF8)
    text = data.lstrip()
    if not text:
        raise UsageError(f"{source}: no events (the input is empty)")
    if text[:1] in (b"[", b"{") and not _ndjson(text):
        try:
            whole = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise _not_json(source, err.lineno, err) from None
        if isinstance(whole, dict) and isinstance(whole.get("events"), list):
            whole = whole["events"]
        if not isinstance(whole, list):
            return [whole]  # one event object
        if not whole:
            raise UsageError(f"{source}: no events (an empty list)")
        return list(whole)
    events = list(_values(data.splitlines(), source))
    if not events:
        raise UsageError(f"{source}: no events")
    if len(events) == 1 and not isinstance(events[0], dict | list):
        # A lone number, string, boolean or null can never be a batch (sent, it came back
        # NOT_AN_OBJECT); one among the items of an array or the lines of NDJSON is an event
        # like the others, for the gateway to judge.
        raise UsageError(
            f"{source}: the input is one JSON {_kind(events[0])}, not an event; {EXPECTED}"
        )
    return events


def _kind(value: object) -> str:
    """The JSON name of a scalar's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


def _ndjson(text: bytes) -> bool:
    """True for one event per line rather than one JSON document (an array, or an object
    spread over lines): the first line is a whole JSON object and more lines follow, or, the
    first one being broken, the next one is (the error is then told on the first line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].lstrip().startswith(b"{"):
        return False
    return _an_object(lines[0]) or (_an_object(lines[1]) and not _parses(text))


def _an_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _parses(text: bytes) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _not_json(source: str, line: int, err: orjson.JSONDecodeError) -> UsageError:
    """The error for a line that does not parse, its position told once: `<source>:<line>`
    and the column in that line."""
    return UsageError(f"{source}:{line}: not JSON ({err.msg} at column {err.colno}); {EXPECTED}")
