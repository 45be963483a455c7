"""OpenSearch as the bench sees it, over one keep-alive aiohttp session: counts, visibility
of marked events, the documents the indexer wrote, raw `_bulk` and raw `_search`.

This is the "optimal client" the pipeline is compared with: pre-rendered bodies, no
per-document work while timing, orjson both ways.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from indexer.template import template_body, template_name

NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}
FETCH_PAGE = 5000  # documents per search_after page when reading the indexer's output


class OpenSearchError(RuntimeError):
    """OpenSearch answered with an error status."""


class Search:
    """A few OpenSearch calls, each a single HTTP request."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty body)."""
        async with self._session.request(
            method, self._url + path, data=body, params=params, headers=headers or JSON
        ) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise OpenSearchError(f"{method} {path}: {resp.status} {raw[:300]!r}")
        return orjson.loads(raw) if raw else None

    async def count(self, pattern: str) -> int:
        """Searchable documents under `pattern` (what a refresh has made visible)."""
        answer = await self.call("GET", f"/{pattern}/_count", params={"allow_no_indices": "true"})
        return int(answer["count"])

    async def wait_count(self, pattern: str, expected: int, *, timeout_s: float) -> float | None:
        """perf_counter when `pattern` first counts `expected` documents (polled every 50 ms)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            try:
                if await self.count(pattern) >= expected:
                    return time.perf_counter()
            except OpenSearchError:
                pass  # a new index whose shard is not started yet answers 503
            await asyncio.sleep(0.05)
        return None

    async def searchable(self, pattern: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` a `_search` finds now (what a user sees)."""
        found: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = list(ids[start : start + 1000])
            body = {"query": {"ids": {"values": chunk}}, "size": len(chunk), "_source": False}
            answer = await self.call(
                "POST",
                f"/{pattern}/_search",
                orjson.dumps(body),
                params={"filter_path": "hits.hits._id", "allow_no_indices": "true"},
            )
            found.update(hit["_id"] for hit in answer.get("hits", {}).get("hits", []))
        return found

    async def stored(self, index: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` a real-time `_mget` finds (indexed, maybe not yet refreshed)."""
        if not ids:
            return set()
        answer = await self.call(
            "POST",
            f"/{index}/_mget",
            orjson.dumps({"ids": list(ids)}),
            params={"_source": "false", "filter_path": "docs._id,docs.found"},
        )
        return {doc["_id"] for doc in answer.get("docs", []) if doc.get("found")}

    async def documents(self, pattern: str, id_prefix: str) -> list[tuple[str, str, bytes]]:
        """(index, _id, _source JSON) of every document whose id starts with `id_prefix`, in
        the order the pipeline received them (receipt time, then id): a raw `_bulk` of them in
        id order would be kinder to OpenSearch's id lookups than what the indexer sent."""
        out: list[tuple[str, str, bytes]] = []
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "query": {"prefix": {"event_id": id_prefix}},
                "sort": [{"ingestion_timestamp": "asc"}, {"event_id": "asc"}],
                "size": FETCH_PAGE,
            }
            if after is not None:
                body["search_after"] = after
            answer = await self.call(
                "POST",
                f"/{pattern}/_search",
                orjson.dumps(body),
                params={
                    "filter_path": "hits.hits._index,hits.hits._id,hits.hits._source,hits.hits.sort"
                },
            )
            hits = answer.get("hits", {}).get("hits", [])
            for hit in hits:
                out.append((hit["_index"], hit["_id"], orjson.dumps(hit["_source"])))
            if len(hits) < FETCH_PAGE:
                return out
            after = hits[-1]["sort"]

    async def install_template(self, prefix: str, refresh_interval: str) -> None:
        """The indexer's own index template for `prefix`, so raw indices map alike."""
        body = template_body(
            prefix=prefix, shards=1, replicas=0, priority=200, refresh_interval=refresh_interval
        )
        await self.call("PUT", f"/_index_template/{template_name(prefix)}", orjson.dumps(body))

    async def bulk(self, bodies: Sequence[bytes], concurrency: int) -> None:
        """Sends pre-rendered `_bulk` bodies, `concurrency` in flight; fails on item errors."""
        pending = iter(bodies)

        async def worker() -> None:
            for body in pending:
                answer = await self.call(
                    "POST", "/_bulk", body, params={"filter_path": "errors"}, headers=NDJSON
                )
                if answer.get("errors"):
                    raise OpenSearchError("raw _bulk had item errors")

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def search_raw(self, pattern: str, body: bytes, filter_path: str) -> Any:
        """`_search` exactly as the indexer's store sends it."""
        return await self.call(
            "POST",
            f"/{pattern}/_search",
            body,
            params={
                "ignore_unavailable": "true",
                "allow_no_indices": "true",
                "filter_path": filter_path,
            },
        )

    async def node_pid(self) -> int:
        """The OpenSearch node's process id (on its own machine)."""
        answer = await self.call(
            "GET", "/_nodes/_local/process", params={"filter_path": "nodes.*.process.id"}
        )
        return int(next(iter(answer["nodes"].values()))["process"]["id"])

    async def cpu_s(self) -> float:
        """CPU seconds the OpenSearch node's process has used so far (its own count, which
        it refreshes about once a second; /proc is read instead when the node is local)."""
        answer = await self.call("GET", "/_nodes/_local/stats/process")
        node = next(iter(answer["nodes"].values()))
        return int(node["process"]["cpu"]["total_in_millis"]) / 1000

    async def drop(self, prefix: str) -> None:
        """Deletes the indices and the template of `prefix` (only ours: prefixes are unique)."""
        await self.call(
            "DELETE",
            f"/{prefix}*",
            params={"expand_wildcards": "all", "ignore_unavailable": "true"},
        )
        try:
            await self.call("DELETE", f"/_index_template/{template_name(prefix)}")
        except OpenSearchError as err:
            if " 404 " not in str(err):
                raise

    async def drop_all(self, prefix: str) -> None:
        """Deletes every index and index template whose name starts with `prefix`."""
        await self.call(
            "DELETE",
            f"/{prefix}*",
            params={"expand_wildcards": "all", "ignore_unavailable": "true"},
        )
        try:
            answer = await self.call("GET", f"/_index_template/{prefix}*")
        except OpenSearchError as err:
            if " 404 " in str(err):
                return
            raise
        for entry in answer.get("index_templates", []):
            await self.call("DELETE", f"/_index_template/{entry['name']}")


def bulk_bodies(
    docs: Sequence[tuple[str, str, bytes]], old_prefix: str, new_prefix: str, per_request: int
) -> list[bytes]:
    """`create` actions for `docs` in `new_prefix`'s indices, `per_request` per body."""
    lines = [
        b'{"create":{"_index":"'
        + (new_prefix + index.removeprefix(old_prefix)).encode()
        + b'","_id":'
        + orjson.dumps(doc_id)
        + b"}}\n"
        + source
        + b"\n"
        for index, doc_id, source in docs
    ]
    return [b"".join(lines[i : i + per_request]) for i in range(0, len(lines), per_request)]
