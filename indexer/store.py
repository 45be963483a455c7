"""The OpenSearch adapter: bulk writes, searches, the index template and retention.

The only module that touches `opensearchpy`. Its errors are translated here into
`SearchUnavailableError` (no answer, timeout, 429, 5xx) or `SearchRequestError`
(other 4xx); what that means for a document is decided in `outcomes`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from opensearchpy import AsyncOpenSearch, JSONSerializer
from opensearchpy import exceptions as os_errors

from indexer.bulk import ItemResult
from indexer.errors import SearchRequestError, SearchUnavailableError
from indexer.template import index_pattern, template_body, template_name
from pipeline import search as shared_search
from pipeline.settings import OpenSearchSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

_BULK_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"
_NDJSON = {"content-type": "application/x-ndjson"}


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


def client(settings: OpenSearchSettings) -> AsyncOpenSearch:
    """An async client with the shared connection options and the orjson serializer."""
    return AsyncOpenSearch(**shared_search.client_options(settings), serializer=OrjsonSerializer())


def _translate(err: Exception) -> Exception:
    if isinstance(err, os_errors.ConnectionError):  # includes timeouts
        return SearchUnavailableError(f"opensearch not reachable: {err}")
    if isinstance(err, os_errors.TransportError):
        status = err.status_code
        if isinstance(status, int) and 400 <= status < 500 and status != 429:
            return SearchRequestError(status, str(err))
        return SearchUnavailableError(f"opensearch answered {status}: {err}")
    if isinstance(err, OSError | TimeoutError):
        return SearchUnavailableError(f"opensearch not reachable: {err}")
    return err


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except (os_errors.TransportError, OSError, TimeoutError) as err:
        raise _translate(err) from err


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
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._shards = shards
        self._replicas = replicas
        self._priority = priority

    @property
    def pattern(self) -> str:
        """The index pattern searched."""
        return index_pattern(self._prefix)

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
        """Installs the index template unless one of this or a later version is there.

        Returns True when it wrote the template.
        """
        name = template_name(self._prefix)
        body = template_body(
            prefix=self._prefix,
            shards=self._shards,
            replicas=self._replicas,
            priority=self._priority,
        )
        installed = await self.template_version()
        if installed is not None and installed >= body["version"]:
            return False
        await _call(lambda: self._client.indices.put_index_template(name=name, body=body))
        log.info(
            "index template installed",
            extra={"template": name, "version": body["version"], "previous": installed},
        )
        return True

    async def template_version(self) -> int | None:
        """The version of the installed template, None when there is none."""
        name = template_name(self._prefix)
        # 404 (no such template) is an answer here, not an error to log.
        found = await _call(
            lambda: self._client.indices.get_index_template(name=name, ignore=[404])
        )
        for entry in found.get("index_templates", []):
            if entry.get("name") == name:
                version = entry.get("index_template", {}).get("version")
                return int(version) if version is not None else 0
        return None

    async def bulk(self, body: bytes) -> Sequence[ItemResult]:
        """Sends one `_bulk` body; one result per item, in order."""
        answer = await _call(
            lambda: self._client.transport.perform_request(
                "POST", "/_bulk", body=body, params={"filter_path": _BULK_FILTER}, headers=_NDJSON
            )
        )
        results: list[ItemResult] = []
        for entry in answer.get("items", []):
            outcome = next(iter(entry.values()))
            results.append(ItemResult(status=int(outcome["status"]), error=outcome.get("error")))
        return results

    async def search(self, body: dict[str, Any], *, filter_path: str = "") -> dict[str, Any]:
        """Runs `_search` over every index of the prefix; no index yet is an empty answer.

        `filter_path` trims the answer to what the caller reads.
        """
        params = {"ignore_unavailable": "true", "allow_no_indices": "true"}
        if filter_path:
            params["filter_path"] = filter_path
        answer: dict[str, Any] = await _call(
            lambda: self._client.transport.perform_request(
                "POST", f"/{self.pattern}/_search", body=body, params=params
            )
        )
        return answer

    async def index_names(self) -> list[str]:
        """The names of the indices matching the prefix."""
        found = await _call(
            lambda: self._client.cat.indices(
                index=self.pattern, h="index", format="json", expand_wildcards="open,closed"
            )
        )
        return sorted(str(row["index"]) for row in found)

    async def delete_index(self, name: str) -> None:
        """Deletes one index by its exact name."""
        await _call(lambda: self._client.indices.delete(index=name))
