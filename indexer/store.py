"""The OpenSearch adapter: bulk writes, searches, the index template and retention.

The only module that touches `opensearchpy`. Its errors are translated here into
`SearchUnavailableError` (no answer, timeout, 429, 5xx, and 4xx answers about
credentials, permissions or the address) or `SearchRequestError` (400, 413: the request
itself is wrong); what that means for a document is decided in `outcomes`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

import orjson
from opensearchpy import AsyncOpenSearch, JSONSerializer
from opensearchpy import exceptions as os_errors

from indexer.bulk import ItemResult
from indexer.documents import UNDATED
from indexer.errors import SearchLimitError, SearchRequestError, SearchUnavailableError
from indexer.retention import index_day
from indexer.template import (
    DEFAULT_REFRESH_INTERVAL,
    index_pattern,
    template_body,
    template_name,
)
from pipeline import search as shared_search
from pipeline.settings import OpenSearchSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Documents retention deletes from `<prefix>undated` per search and `_bulk`, and pages per
# run at most (the rest in the next runs: a backlog does not hold one run for long).
DELETE_PAGE_SIZE = 1000
DELETE_PAGES_PER_CALL = 100
_PAGE_OF_IDS = "hits.hits._id,hits.hits.sort"

# What the writer reads of a `_bulk` answer: each item's status and error, with the error's
# cause chain (`caused_by` names an object: filter_path keeps all of it, nested causes too).
_BULK_FILTER = (
    "errors,items.*.status,items.*.error.type,items.*.error.reason,items.*.error.caused_by"
)
_NDJSON = {"content-type": "application/x-ndjson"}
_PLAIN_RESULTS = {status: ItemResult(status) for status in (200, 201, 409)}  # shared, immutable


class OrjsonSerializer(JSONSerializer):
    """orjson in and out: bulk answers and search hits are parsed several times faster."""

    def loads(self, s: str | bytes) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError as err:
            raise os_errors.SerializationError(s, err) from err

    def dumps(self, data: Any) -> Any:
        if isinstance(data, str | bytes):
            return data
        try:
            return orjson.dumps(data).decode()
        except TypeError as err:
            raise os_errors.SerializationError(data, err) from err


def client(settings: OpenSearchSettings, *, connections: int = 10) -> AsyncOpenSearch:
    """An async client with the shared connection options and the orjson serializer, keeping
    at most `connections` open to each node (a request past them waits for one, and that
    wait counts towards its timeout)."""
    return AsyncOpenSearch(
        **shared_search.client_options(settings),
        serializer=OrjsonSerializer(),
        maxsize=connections,
    )


# Whole-request answers that say the request itself is wrong. Any other 4xx (401, 403,
# 404, 408...) is about credentials, permissions or the address, not the documents:
# treated like an outage (retried, intake held, logged), never as rejected documents.
_REQUEST_ERRORS = frozenset({400, 413})


def _causes(info: object) -> list[tuple[str, str]]:
    """(type, reason) of an error answer's cause chain, outermost first."""
    out: list[tuple[str, str]] = []
    error = info.get("error") if isinstance(info, dict) else None
    while isinstance(error, dict) and len(out) < 8:
        out.append((str(error.get("type", "")), str(error.get("reason", ""))))
        error = error.get("caused_by")
    return out


# The limit in OpenSearch's words: "Trying to create too many buckets. Must be less than or
# equal to: [65535] but was [65536]. ...", "maxClauseCount is set to 1024".
_MOST_BUCKETS = re.compile(r"less than or equal to: \[(\d+)\]")
_MOST_CLAUSES = re.compile(r"maxClauseCount is set to (\d+)")


def _number(pattern: re.Pattern[str], reason: str) -> int | None:
    found = pattern.search(reason)
    return int(found.group(1)) if found else None


def _translate(err: Exception) -> Exception:
    if isinstance(err, os_errors.ConnectionError):  # includes timeouts
        return SearchUnavailableError(f"opensearch not reachable: {_connection_problem(err)}")
    if isinstance(err, os_errors.TransportError):
        causes = _causes(err.info)
        for kind, reason in causes:
            # Answered 503 and 400 by OpenSearch; asking again cannot help either way.
            if kind == "too_many_buckets_exception":
                return SearchLimitError(
                    reason, limit=SearchLimitError.BUCKETS, most=_number(_MOST_BUCKETS, reason)
                )
            if kind in ("too_many_clauses", "too_many_nested_clauses"):
                return SearchLimitError(
                    reason, limit=SearchLimitError.CLAUSES, most=_number(_MOST_CLAUSES, reason)
                )
        # The outer type alone rarely says what went wrong: the whole chain, when there is one.
        text = "; ".join(f"{k}: {r}" for k, r in causes) if len(causes) > 1 else str(err)
        status = err.status_code
        if status in _REQUEST_ERRORS:
            return SearchRequestError(int(status), text)
        return SearchUnavailableError(
            f"opensearch answered {status}: {text}",
            status=status if isinstance(status, int) else None,
        )
    if isinstance(err, OSError | TimeoutError):
        return SearchUnavailableError(f"opensearch not reachable: {err}")
    if isinstance(err, os_errors.SerializationError):  # a proxy's HTML page, say
        return SearchUnavailableError(f"opensearch's answer is not JSON: {str(err)[:200]}")
    return err


def _connection_problem(err: os_errors.ConnectionError) -> str:
    """What went wrong on the way to OpenSearch, said once: opensearch-py's own text repeats
    the cause's message after its own (`ConnectionError(Cannot connect to host ...) caused
    by: ClientConnectorError(Cannot connect to host ...)`), so the cause alone, by its type,
    when the outer message is the cause's or empty."""
    args = err.args  # (status, message, cause), as opensearch-py raises it
    outer = args[1] if len(args) > 1 else ""
    cause = args[2] if len(args) > 2 else None
    if not isinstance(cause, BaseException):
        return str(err)
    said = str(cause)
    if outer not in ("", said):  # the outer message says something of its own
        return f"{outer} ({type(cause).__name__}: {said})" if said else str(err)
    return f"{type(cause).__name__}: {said}" if said else type(cause).__name__


# Index names per request that lists them in its path: OpenSearch refuses a request line
# longer than 4 KB (http.max_initial_line_length).
_NAMES_PER_PATH_CHARS = 3000


def _name_lists(names: Sequence[str]) -> list[list[str]]:
    """`names` in lists short enough to be joined into one request path."""
    lists: list[list[str]] = []
    size = 0
    for name in names:
        if not lists or size + len(name) + 1 > _NAMES_PER_PATH_CHARS:
            lists.append([])
            size = 0
        lists[-1].append(name)
        size += len(name) + 1
    return lists


def _utc_day(epoch_millis: object) -> date | None:
    """The UTC day of `_cat/indices`' `creation.date` (epoch milliseconds as text)."""
    try:
        return datetime.fromtimestamp(int(str(epoch_millis)) / 1000, UTC).date()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except (os_errors.TransportError, os_errors.SerializationError, OSError, TimeoutError) as err:
        raise _translate(err) from err


def _index_not_found(err: SearchUnavailableError) -> bool:
    """Whether OpenSearch itself said the index does not exist (a 404 from a proxy is
    about the address, not the index)."""
    cause = err.__cause__
    return isinstance(cause, os_errors.NotFoundError) and cause.error == "index_not_found_exception"


class OpenSearchStore:
    """Everything the indexer asks of OpenSearch, over one async client."""

    def __init__(
        self,
        client: AsyncOpenSearch,
        *,
        prefix: str,
        shards: int = 1,
        replicas: int = 0,
        priority: int = 200,
        refresh_interval: str = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._shards = shards
        self._replicas = replicas
        self._priority = priority
        self._refresh_interval = refresh_interval

    @property
    def pattern(self) -> str:
        """The index pattern searched."""
        return index_pattern(self._prefix)

    @property
    def searched(self) -> str:
        """The indices queries read: the daily ones (dated 2000 to 2099) and the undated one,
        not another `<prefix>*` index, whose mapping could fail every search (one whose name
        begins like a daily index's, `<prefix>2024-archive`, is read: the queries' filter
        leaves out its documents, which have no event id)."""
        return f"{self._prefix}20*,{self._prefix}{UNDATED}"

    @property
    def _health_indices(self) -> str:
        """`searched` for `_cluster/health`, which waits for a missing index named in full
        (`<prefix>undated` before its first event) as for one not started yet."""
        return f"{self._prefix}20*,{self._prefix}{UNDATED}*"

    def owns(self, name: str) -> bool:
        """True for the indices this indexer writes: `<prefix>YYYY-MM-DD` and `<prefix>undated`."""
        prefix = self._prefix
        return name == prefix + UNDATED or index_day(name, prefix=prefix) is not None

    async def close(self) -> None:
        """Closes the client's connections."""
        await self._client.close()

    async def ping(self) -> bool:
        """True when the cluster answers."""
        try:
            return bool(await self._client.ping())
        except Exception:
            return False

    async def install_template(self) -> bool:
        """Installs the index template the settings call for, unless it is there already.

        A template of a later version is left alone (a newer indexer owns it). Before the
        template is written, the existing indices this indexer writes (`<prefix>YYYY-MM-DD`,
        `<prefix>undated`; other `<prefix>*` names are left alone) get the settings that can
        change on a live index (replicas, refresh interval) and, when the template is new or
        of an earlier version, its mappings (fields added); shard counts apply to indices
        created from then on. So an upgrade interrupted or failed in between is done again
        on the next try or start: the template written is the mark that it is done. Raises
        `SearchUnavailableError` when OpenSearch does not answer a step (the caller tries the
        whole again); an index refusing a change for good (400: a mapping conflicting with
        its own) is logged and does not stop the rest. Returns True when it wrote the template.
        """
        name = template_name(self._prefix)
        body = template_body(
            prefix=self._prefix,
            shards=self._shards,
            replicas=self._replicas,
            priority=self._priority,
            refresh_interval=self._refresh_interval,
        )
        installed = await self._installed_template()
        previous = None if installed is None else int(installed.get("version") or 0)
        if installed is not None:
            digest = (installed.get("_meta") or {}).get("digest")
            if previous > body["version"] or (
                previous == body["version"] and digest == body["_meta"]["digest"]
            ):
                return False
        new_mappings = previous is None or previous < body["version"]
        await self._update_existing(body["template"]["mappings"] if new_mappings else None)
        await _call(lambda: self._client.indices.put_index_template(name=name, body=body))
        log.info(
            "index template installed",
            extra={
                "template": name,
                "version": body["version"],
                "previous": previous,
                "refresh_interval": self._refresh_interval,
                "replicas": self._replicas,
                "shards": self._shards,
            },
        )
        return True

    async def _update_existing(self, mappings: dict[str, Any] | None) -> None:
        """Brings the existing indices this indexer writes to the new template: its live
        settings, and `mappings` (those of a new template version) when given."""
        # Only the indexer's own indices: `<prefix>*` may match someone else's too.
        own = [name for name in await self.index_names() if self.owns(name)]
        if not own:
            return
        live = {
            "index": {
                "number_of_replicas": self._replicas,
                "refresh_interval": self._refresh_interval,
            }
        }
        try:
            await self._put_on(own, self._client.indices.put_settings, live)
        except SearchRequestError as err:
            log.warning(
                "settings not applied to existing indices; new indices have them: %s",
                err,
                extra={"pattern": self.pattern, **live["index"]},
            )
        if mappings is None:
            return
        # Additive: fields a new version adds reach the existing indices, or their strict
        # mappings would refuse every document that has them (as permanent rejections).
        try:
            await self._put_on(own, self._client.indices.put_mapping, mappings)
        except SearchRequestError as err:
            log.warning(
                "template mappings refused by existing indices; documents with new fields"
                " will be refused there: %s",
                err,
                extra={"pattern": self.pattern},
            )

    async def _put_on(
        self, own: Sequence[str], put: Callable[..., Awaitable[Any]], body: dict[str, Any]
    ) -> None:
        """`put` (settings, mappings) of `body` on the indices `own`, a few per request."""
        for names in _name_lists(own):
            request = functools.partial(
                put,
                index=",".join(names),
                body=body,
                allow_no_indices=True,
                ignore_unavailable=True,  # closed, or deleted meanwhile
            )
            await _call(request)

    async def template_version(self) -> int | None:
        """The version of the installed template, None when there is none."""
        installed = await self._installed_template()
        if installed is None:
            return None
        return int(installed.get("version") or 0)

    async def _installed_template(self) -> dict[str, Any] | None:
        name = template_name(self._prefix)
        # 404 (no such template) is an answer here, not an error to log.
        found = await _call(
            lambda: self._client.indices.get_index_template(name=name, ignore=[404])
        )
        for entry in found.get("index_templates", []):
            if entry.get("name") == name:
                template: dict[str, Any] = entry.get("index_template", {})
                return template
        return None

    async def bulk(self, body: bytes) -> Sequence[ItemResult]:
        """Sends one `_bulk` body; one result per item, in order."""
        answer = await _call(
            lambda: self._client.transport.perform_request(
                "POST", "/_bulk", body=body, params={"filter_path": _BULK_FILTER}, headers=_NDJSON
            )
        )
        results: list[ItemResult] = []
        append = results.append
        plain = _PLAIN_RESULTS
        for entry in answer.get("items", ()):
            outcome = next(iter(entry.values()))
            status = outcome["status"]
            error = outcome.get("error")
            if error is None and status in plain:
                append(plain[status])
            else:
                append(ItemResult(int(status), error))
        return results

    async def sources(
        self, keys: Sequence[tuple[str, str]], fields: Sequence[str]
    ) -> list[Mapping[str, Any] | None]:
        """`fields` of the documents at (index, id) `keys` (`_mget`, real time: a document
        just written is seen), in order; None for one not found (or in an index gone)."""
        if not keys:
            return []
        body = {"docs": [{"_index": index, "_id": doc_id} for index, doc_id in keys]}
        params = {"_source_includes": ",".join(fields), "filter_path": "docs.found,docs._source"}
        answer = await _call(
            lambda: self._client.transport.perform_request(
                "POST", "/_mget", body=body, params=params
            )
        )
        return [
            doc.get("_source") or {} if doc.get("found") else None for doc in answer.get("docs", ())
        ]

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        """Runs `_search` over the indices in `searched`; no index yet is an empty answer.

        `filter_path` trims the answer to what the caller reads.
        """
        params = {"ignore_unavailable": "true", "allow_no_indices": "true"}
        if filter_path:
            params["filter_path"] = filter_path
        answer: dict[str, Any] = await _call(
            lambda: self._client.transport.perform_request(
                "POST", f"/{self.searched}/_search", body=body, params=params
            )
        )
        return answer

    async def wait_for_shards(self, timeout_s: float) -> bool:
        """Waits up to `timeout_s` until every index searched has its primary shards
        started (a daily index just created has none for a moment); True once they have."""
        params = {
            "wait_for_status": "yellow",
            # A new index is yellow while its primary shard is still initializing (and
            # failing searches): wait for that too.
            "wait_for_no_initializing_shards": "true",
            "timeout": f"{max(1, round(timeout_s * 1000))}ms",
            "filter_path": "status,timed_out",
        }
        try:
            answer: dict[str, Any] = await _call(
                lambda: self._client.transport.perform_request(
                    # `timeout` here is the HTTP client's; the one in `params`, OpenSearch's wait.
                    "GET",
                    f"/_cluster/health/{self._health_indices}",
                    params=params,
                    timeout=timeout_s + 10,
                )
            )
        except SearchUnavailableError:  # 408 when the wait timed out
            return False
        return not answer.get("timed_out", True) and answer.get("status") != "red"

    async def red_indices(self) -> list[str]:
        """The indices searched with a primary shard not assigned: a search skips them."""
        answer: dict[str, Any] = await _call(
            lambda: self._client.transport.perform_request(
                "GET",
                f"/_cluster/health/{self._health_indices}",
                params={"level": "indices", "filter_path": "indices.*.status"},
            )
        )
        indices = answer.get("indices") or {}
        return sorted(
            name
            for name, info in indices.items()
            if info.get("status") == "red" and self.owns(name)
        )

    async def has_words(self, text: str) -> bool:
        """Whether the standard analyser, event_message's (the template names no other),
        makes at least one word of `text`."""
        answer: dict[str, Any] = await _call(
            lambda: self._client.transport.perform_request(
                "POST",
                "/_analyze",
                body={"analyzer": "standard", "text": text},
                params={"filter_path": "tokens.token"},
            )
        )
        return bool(answer.get("tokens"))

    async def index_names(self) -> list[str]:
        """The names of the indices matching the prefix."""
        found = await _call(
            lambda: self._client.cat.indices(
                index=self.pattern, h="index", format="json", expand_wildcards="open,closed"
            )
        )
        return sorted(str(row["index"]) for row in found)

    async def index_creation_days(self) -> dict[str, date | None]:
        """The indices matching the prefix, each with the UTC day it was created."""
        found = await _call(
            lambda: self._client.cat.indices(
                index=self.pattern,
                h="index,creation.date",
                format="json",
                expand_wildcards="open,closed",
            )
        )
        return {str(row["index"]): _utc_day(row.get("creation.date")) for row in found}

    async def cluster_day(self) -> date:
        """The UTC day by the clock of the OpenSearch node answering (its node stats' time)."""
        answer: dict[str, Any] = await _call(
            lambda: self._client.transport.perform_request(
                "GET",
                "/_nodes/_local/stats/process",
                params={"filter_path": "nodes.*.timestamp"},
            )
        )
        for node in (answer.get("nodes") or {}).values():
            day = _utc_day(node.get("timestamp"))
            if day is not None:
                return day
        raise SearchUnavailableError(f"opensearch did not say its time: {answer}")

    async def delete_arrived_before(self, name: str, day: date) -> int:
        """Deletes the documents of index `name` that arrived (`ingestion_timestamp`) before
        the start of `day`, UTC, DELETE_PAGES_PER_CALL pages of them at most; returns how
        many. 0 when there is no such index.

        Page by page: a search for their ids (by event_id, `search_after`, so what a page
        deletes does not move the next one), then a `_bulk` of deletes. Core APIs only:
        `_delete_by_query` comes with OpenSearch's reindex module, which a minimal node has not.
        """
        body: dict[str, Any] = {
            "query": {"range": {"ingestion_timestamp": {"lt": day.isoformat()}}},
            "size": DELETE_PAGE_SIZE,
            "_source": False,
            "sort": [{"event_id": "asc"}],
            "track_total_hits": False,
        }
        deleted = 0
        for _ in range(DELETE_PAGES_PER_CALL):
            try:
                answer: dict[str, Any] = await _call(
                    lambda: self._client.search(
                        index=name, body=body, params={"filter_path": _PAGE_OF_IDS}
                    )
                )
            except SearchUnavailableError as err:
                if _index_not_found(err):
                    return deleted
                raise
            hits = (answer.get("hits") or {}).get("hits") or []
            if not hits:
                return deleted
            lines = b"".join(
                orjson.dumps({"delete": {"_index": name, "_id": hit["_id"]}}) + b"\n"
                for hit in hits
            )
            for result in await self.bulk(lines):
                if result.status == 200:
                    deleted += 1
                elif result.status != 404:  # 404: deleted meanwhile
                    raise SearchUnavailableError(
                        f"deleting from {name} failed: {result.status} {result.error}",
                        status=result.status,
                    )
            if len(hits) < DELETE_PAGE_SIZE:
                return deleted
            body["search_after"] = hits[-1]["sort"]
        return deleted

    async def delete_index(self, name: str) -> bool:
        """Deletes one index by its exact name; False when there was no such index (another
        indexer's retention deleted it first, say)."""
        try:
            await _call(lambda: self._client.indices.delete(index=name))
        except SearchUnavailableError as err:
            if _index_not_found(err):
                return False
            raise
        return True
