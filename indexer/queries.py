"""QueryService requests -> OpenSearch search bodies, and search responses -> replies.

Callers never send DSL: every clause is built here from typed fields. Free text uses
a `match` query with operator `and` over event_message, which has no syntax at all.
Results are newest first by corrected_timestamp with event_id as the tiebreak, paged
with search_after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import query_service_pb2 as qs

from indexer import documents, paging
from indexer.errors import InvalidArgumentError

# What the response mappers below read; the rest of OpenSearch's answer is not sent.
_SHARDS_FILTER = "_shards.total,_shards.successful,_shards.failures.index"
EVENTS_FILTER_PATH = f"{_SHARDS_FILTER},hits.total.value,hits.hits._source,hits.hits.sort"
AGGREGATE_FILTER_PATH = (
    f"{_SHARDS_FILTER},hits.total.value,aggregations.*.buckets.key,aggregations.*.buckets.doc_count,"
    "aggregations.by_field.doc_count_error_upper_bound"
)
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
# How many values of group_by each daily index (one shard) hands in to be summed: the counts
# are exact while no index holds more distinct values than this. OpenSearch's own default
# (limit * 1.5 + 10) made the top values of a range of days approximate as soon as one day
# held a few dozen distinct values.
MIN_SHARD_SIZE = 1000
SHARD_SIZE_PER_LIMIT = 10
MAX_FILTER_VALUES = 1000  # values per repeated filter field
MAX_TEXT_CHARS = 1000
# Free text in which the analyser finds no word: refused, not a search that matches nothing.
# Beyond ASCII, which characters make words is the analyser's (Unicode's word rules as its
# version knows them, emoji included): a search with such text that answers nothing asks it.
NO_WORDS = "has no words to search for"
# The largest QueryEvents reply: gRPC clients refuse a message over 4 MiB unless told
# otherwise (the gateway's and tpipe's channels among them). A page of large events
# (metadata near its limits) is cut short of it and goes on with a next_page_token.
MAX_REPLY_BYTES = 4 * 1024 * 1024 - 64 * 1024
# A page is fetched in parts, so that OpenSearch sends (and the indexer holds) little more than
# the reply can carry: first at most FIRST_FETCH events (the default page, in one request),
# then each time as many more as the reply's room holds at the largest event seen so far, and
# at most FETCH_GROWTH times as many as the fetch before (events seen small may be followed
# by large ones). Fetched whole, a page of 1,000 events near the gateway's limits (140 KB to
# 560 KB each) would be hundreds of MB, of which 4 MiB are sent.
FIRST_FETCH = paging.DEFAULT_PAGE_SIZE
FETCH_GROWTH = 4

_TERMS = (
    ("user_ids", "user_id"),
    ("session_ids", "session_id"),
    ("event_names", "event_name"),
    ("app_versions", "app_version"),
    ("country_codes", "geo_country"),
    ("app_ids", "app_id"),
)
# `unmapped_type`: an index searched that lacks a field's mapping sorts as if it had it
# (with no values) rather than failing the search.
SORT: list[dict[str, Any]] = [
    {"corrected_timestamp": {"order": "desc", "missing": "_last", "unmapped_type": "date"}},
    {"event_id": {"order": "desc", "unmapped_type": "keyword"}},
]
_GROUP_FIELDS = {
    qs.AGGREGATION_FIELD_EVENT_NAME: "event_name",
    qs.AGGREGATION_FIELD_USER_ID: "user_id",
    qs.AGGREGATION_FIELD_SESSION_ID: "session_id",
    qs.AGGREGATION_FIELD_APP_VERSION: "app_version",
    qs.AGGREGATION_FIELD_DEVICE_OS: "device_os",
    qs.AGGREGATION_FIELD_OS_NAME: "os_name",
    qs.AGGREGATION_FIELD_GEO_COUNTRY: "geo_country",
    qs.AGGREGATION_FIELD_APP_ID: "app_id",
}
_INTERVALS = {
    qs.HISTOGRAM_INTERVAL_MINUTE: "minute",
    qs.HISTOGRAM_INTERVAL_HOUR: "hour",
    qs.HISTOGRAM_INTERVAL_DAY: "day",
}
_INTERVAL_MILLIS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
# A histogram over a filter's whole time range (empty buckets at its edges included) has at
# most this many buckets; over a longer range it spans the events found, as OpenSearch does.
MAX_FILLED_BUCKETS = 10_000


def _millis(stamp: Timestamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


# What google.protobuf.Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _check_time(name: str, stamp: Timestamp) -> None:
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgumentError(
            f"filter.{name}", "is not a valid time (0001-01-01 to 9999-12-31, nanos 0 to 999999999)"
        )


# Every event has an id: a document without one is not ours, in an index whose name is like
# a daily index's (`<prefix>2024-archive`, say), and is neither answered nor counted.
_EVENTS_ONLY = {"exists": {"field": "event_id"}}


def filter_query(flt: qs.EventFilter) -> dict[str, Any]:
    """The bool query selecting the events `flt` selects (all of them when it is empty)."""
    clauses: list[dict[str, Any]] = [_EVENTS_ONLY]
    for name, field in (*_TERMS, ("device_os", "device_os")):
        values = list(getattr(flt, name))
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidArgumentError(
                f"filter.{name}", f"has {len(values)} values, more than {MAX_FILTER_VALUES}"
            )
        if not values:
            continue
        if "" in values:  # matches nothing, which no caller means: "any" is the field left out
            raise InvalidArgumentError(
                f"filter.{name}[{values.index('')}]", "is empty: leave it out to match any value"
            )
        if name == "device_os":
            clauses.append(
                {
                    "bool": {
                        "should": [
                            {"terms": {"device_os": values}},
                            {"terms": {"os_name": values}},
                        ],
                        "minimum_should_match": 1,
                    }
                }
            )
        else:
            clauses.append({"terms": {field: values}})
    has_start, has_end = flt.HasField("start_time"), flt.HasField("end_time")
    if has_start:
        _check_time("start_time", flt.start_time)
    if has_end:
        _check_time("end_time", flt.end_time)
    if (
        has_start
        and has_end
        and (flt.end_time.seconds, flt.end_time.nanos)
        < (
            flt.start_time.seconds,
            flt.start_time.nanos,
        )
    ):
        raise InvalidArgumentError("filter.end_time", "is before filter.start_time")
    if has_start or has_end:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if has_start:
            bounds["gte"] = _millis(flt.start_time)
        if has_end:
            bounds["lt"] = _millis(flt.end_time)
        clauses.append({"range": {"corrected_timestamp": bounds}})
    query: dict[str, Any] = {"bool": {"filter": clauses}}
    text = flt.text.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgumentError("filter.text", f"is longer than {MAX_TEXT_CHARS} characters")
    if flt.text and text.isascii() and not any(char.isalnum() for char in text):
        # ASCII punctuation and spaces make no word: `match` would silently match nothing
        # (and spaces alone, stripped, everything). Other text the analyser finds no word in
        # (symbols it drops) is told apart once its search answers nothing: see NO_WORDS.
        raise InvalidArgumentError("filter.text", NO_WORDS)
    if text:
        query["bool"]["must"] = [{"match": {"event_message": {"query": text, "operator": "and"}}}]
    return query


def search_body(request: qs.QueryEventsRequest) -> tuple[dict[str, Any], int]:
    """The `_search` body of a page's first fetch, and the page size; it fetches one extra
    hit, to know whether more follow. `Page` makes the bodies of the next fetches."""
    size = paging.page_size(request.page_size)
    body: dict[str, Any] = {
        "query": filter_query(request.filter),
        "sort": SORT,
        "size": min(size, FIRST_FETCH) + 1,
        "track_total_hits": True,
    }
    if request.page_token:
        body["search_after"] = paging.decode_token(request.page_token, request.filter)
    return body, size


class Page:
    """A QueryEvents page, built from the answers to `first` (from `search_body`) and to the
    bodies `add` returns, each fetching after the last event of the one before."""

    def __init__(self, first: Mapping[str, Any], *, size: int, flt: qs.EventFilter) -> None:
        self._first = first
        self._size = size
        self._flt = flt
        self._asked = int(first["size"]) - 1  # events the last fetch asked for, the extra aside
        self._room = MAX_REPLY_BYTES
        self._largest = 0  # the largest event seen, with its key and length in the reply
        self._last_sort: list[Any] | None = None  # of the last event in the reply
        self.reply = qs.QueryEventsResponse()
        self._fetches = 0

    def add(self, response: Mapping[str, Any]) -> dict[str, Any] | None:
        """Adds the events of the answer to the last body; returns the next body to fetch,
        or None once `reply` is the whole page (with a next_page_token when more follow)."""
        hits = response.get("hits", {})
        found = hits.get("hits", [])
        part = found[: self._asked]
        # Dicts, which protobuf builds into messages in place (the stubs only name messages).
        chunk = qs.QueryEventsResponse(
            events=[documents.event_fields(hit["_source"]) for hit in part]  # type: ignore[misc]
        )
        self._fetches += 1
        if self._fetches == 1:
            self.reply.total_size = int(hits.get("total", {}).get("value", 0))
        used = chunk.ByteSize()
        if used > self._room:
            kept = _fitting(chunk.events, self._room, at_least=1 if self._fetches == 1 else 0)
            del chunk.events[kept:]
            self._take(chunk, part[:kept])
            self._end_with_token()
            return None
        self._take(chunk, part)
        self._room -= used
        if len(found) <= self._asked or not part:
            return None  # nothing after these
        wanted = self._size - len(self.reply.events)
        if wanted > 0:
            largest = max(event.ByteSize() for event in chunk.events) + _EVENT_OVERHEAD
            self._largest = max(self._largest, largest)
            wanted = min(wanted, self._room // self._largest, self._asked * FETCH_GROWTH)
        if wanted <= 0:
            self._end_with_token()
            return None
        self._asked = wanted
        # Counted again (the first fetch's total is the one answered): with track_total_hits
        # false, OpenSearch may skip shards and segments by their time range when it searches
        # after a sort value, a shortcut that has lost hits (OpenSearch issues 8212, 14824).
        return {**self._first, "size": wanted + 1, "search_after": self._last_sort}

    def _take(self, chunk: qs.QueryEventsResponse, hits: Sequence[Mapping[str, Any]]) -> None:
        if not hits:
            return
        if self.reply.events:
            self.reply.events.extend(chunk.events)
        else:
            total = self.reply.total_size
            self.reply = chunk
            self.reply.total_size = total
        self._last_sort = list(hits[-1]["sort"])

    def _end_with_token(self) -> None:
        if self._last_sort is not None:
            self.reply.next_page_token = paging.encode_token(self._last_sort, self._flt)


def events_response(
    response: Mapping[str, Any], *, size: int, flt: qs.EventFilter
) -> qs.QueryEventsResponse:
    """The page of events in one `_search` answer that fetched the whole page (`size` + 1
    hits at most), as `Page` makes it."""
    page = Page({"size": size + 1}, size=size, flt=flt)
    page.add(response)
    return page.reply


_EVENT_OVERHEAD = 6  # an event's field key and length in the reply


def _fitting(events: Sequence[Any], room: int, *, at_least: int) -> int:
    """How many of the first `events` fit in `room` bytes of the reply (`at_least`, even if
    they do not: an event the gateway accepted is far smaller than a reply)."""
    total = 0
    for count, event in enumerate(events):
        total += event.ByteSize() + _EVENT_OVERHEAD
        if total > room:
            return max(count, at_least)
    return len(events)


def aggregate_body(request: qs.AggregateEventsRequest) -> dict[str, Any]:
    """The `_search` body counting events by a field and over time."""
    if request.limit < 0:
        raise InvalidArgumentError("limit", "must not be negative")
    limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
    aggs: dict[str, Any] = {}
    if request.group_by != qs.AGGREGATION_FIELD_UNSPECIFIED:
        field = _GROUP_FIELDS.get(request.group_by)
        if field is None:
            raise InvalidArgumentError("group_by", f"unknown field {request.group_by}")
        aggs["by_field"] = {
            "terms": {
                "field": field,
                "size": limit,
                "shard_size": max(limit * SHARD_SIZE_PER_LIMIT, MIN_SHARD_SIZE),
            }
        }
    if request.interval != qs.HISTOGRAM_INTERVAL_UNSPECIFIED:
        interval = _INTERVALS.get(request.interval)
        if interval is None:
            raise InvalidArgumentError("interval", f"unknown interval {request.interval}")
        histogram: dict[str, Any] = {
            "field": "corrected_timestamp",
            "calendar_interval": interval,
            "time_zone": "UTC",
        }
        flt = request.filter
        if flt.HasField("start_time") and flt.HasField("end_time"):
            first, end = _millis(flt.start_time), _millis(flt.end_time)
            if 0 < end - first <= MAX_FILLED_BUCKETS * _INTERVAL_MILLIS[interval]:
                # Buckets from the range's start to its end, not only between the first and
                # the last event found: an hour with no events is a bucket of 0.
                histogram["extended_bounds"] = {"min": first, "max": end - 1}
        aggs["over_time"] = {"date_histogram": histogram}
    body: dict[str, Any] = {
        "query": filter_query(request.filter),
        "size": 0,
        "track_total_hits": True,
    }
    if aggs:
        body["aggs"] = aggs
    return body


def aggregate_response(
    response: Mapping[str, Any], body: Mapping[str, Any] | None = None
) -> qs.AggregateEventsResponse:
    """The counts in a `_search` response to `body`, made by `aggregate_body`."""
    reply = qs.AggregateEventsResponse(
        total_count=int(response.get("hits", {}).get("total", {}).get("value", 0))
    )
    aggs = response.get("aggregations", {})
    by_field = aggs.get("by_field", {})
    reply.count_error_upper_bound = max(0, int(by_field.get("doc_count_error_upper_bound", 0)))
    for bucket in by_field.get("buckets", []):
        reply.counts.add(value=str(bucket["key"]), count=int(bucket["doc_count"]))
    buckets = aggs.get("over_time", {}).get("buckets")
    if buckets is None and body is not None:
        # No index searched (none made yet, or all deleted): OpenSearch answers without the
        # aggregation, and the range's buckets of 0 are made here.
        buckets = _empty_buckets(body.get("aggs", {}).get("over_time", {}))
    for bucket in buckets or ():
        item = reply.histogram.add(count=int(bucket["doc_count"]))
        item.start_time.FromMilliseconds(int(bucket["key"]))
    return reply


def _empty_buckets(over_time: Mapping[str, Any]) -> list[dict[str, int]]:
    """The buckets of 0 that `over_time` (a date_histogram of `aggregate_body`) asks for over
    its `extended_bounds`; none without them. Minutes, hours and days in UTC have fixed
    lengths, so the buckets start at multiples of the interval since the epoch."""
    histogram = over_time.get("date_histogram", {})
    bounds = histogram.get("extended_bounds")
    if bounds is None:
        return []
    step = _INTERVAL_MILLIS[histogram["calendar_interval"]]
    first = bounds["min"] - bounds["min"] % step
    return [{"key": key, "doc_count": 0} for key in range(first, bounds["max"] + 1, step)]


def unanswered_shards(response: Mapping[str, Any]) -> int:
    """How many of the searched shards did not answer; OpenSearch answers from the others.

    Not only the `failed` ones: a shard with no copy assigned (a red index) is in `total`
    but neither `successful` nor `failed`. Shards skipped as holding nothing that could
    match count as successful.
    """
    shards = response.get("_shards") or {}
    return max(0, int(shards.get("total", 0)) - int(shards.get("successful", 0)))


def failed_indices(response: Mapping[str, Any]) -> set[str]:
    """The indices named by the shard failures of a partial answer."""
    failures = (response.get("_shards") or {}).get("failures") or ()
    return {str(item["index"]) for item in failures if item.get("index")}
