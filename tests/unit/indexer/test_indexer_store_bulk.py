"""OpenSearchStore.bulk: what it asks OpenSearch to answer, and what it makes of the answer."""

from __future__ import annotations

from typing import Any

from indexer.outcomes import Outcome, item_outcome, item_reason
from indexer.store import OpenSearchStore

# An item OpenSearch 2.19 answers for a document whose date does not parse (the full answer,
# before any filter_path): a cause chain two deep under the outer error.
_DATE_REJECTED = {
    "create": {
        "_index": "t-2026-11-26",
        "_id": "e-2",
        "status": 400,
        "error": {
            "type": "mapper_parsing_exception",
            "reason": "failed to parse field [client_timestamp] of type [date] in document with"
            " id 'e-2'. Preview of field's value: 'yesterday'",
            "caused_by": {
                "type": "illegal_argument_exception",
                "reason": "failed to parse date field [yesterday] with format"
                " [strict_date_optional_time||epoch_millis]",
                "caused_by": {
                    "type": "date_time_parse_exception",
                    "reason": "Failed to parse with all enclosed parsers",
                },
            },
        },
    }
}
_FULL_ANSWER = {
    "took": 7,
    "errors": True,
    "items": [
        {
            "create": {
                "_index": "t-2026-11-26",
                "_id": "e-1",
                "_version": 1,
                "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": 0,
                "_primary_term": 1,
                "status": 201,
            }
        },
        _DATE_REJECTED,
    ],
}


def _filtered(node: Any, paths: list[list[str]]) -> Any:
    """`node` trimmed as OpenSearch's filter_path does: `*` matches any one key, and a
    path that ends on an object keeps all of that object."""
    if any(not path for path in paths):
        return node
    if isinstance(node, list):
        return [kept for item in node if (kept := _filtered(item, paths)) not in (None, {})]
    if not isinstance(node, dict):
        return None
    out = {}
    for key, value in node.items():
        below = [path[1:] for path in paths if path[0] in ("*", key)]
        if below:
            kept = _filtered(value, below)
            if kept not in (None, {}, []):
                out[key] = kept
    return out


class _Transport:
    def __init__(self) -> None:
        self.params: dict[str, str] = {}

    async def perform_request(self, method: str, url: str, **options: Any) -> Any:
        assert (method, url) == ("POST", "/_bulk")
        self.params = options["params"]
        paths = [path.split(".") for path in self.params["filter_path"].split(",")]
        return _filtered(_FULL_ANSWER, paths)


class _Client:
    def __init__(self) -> None:
        self.transport = _Transport()


async def test_bulk_asks_for_the_cause_chain_and_the_reason_keeps_it() -> None:
    client = _Client()
    store = OpenSearchStore(client, prefix="t-")  # type: ignore[arg-type]
    created, rejected = await store.bulk(b"two documents")
    assert "items.*.error.caused_by" in client.transport.params["filter_path"].split(",")
    assert created.status == 201
    assert rejected.status == 400
    assert item_outcome(rejected.status, rejected.error) is Outcome.REJECTED
    reason = item_reason(rejected.error)
    assert reason.startswith("mapper_parsing_exception: failed to parse field [client_timestamp]")
    assert "caused by illegal_argument_exception: failed to parse date field [yesterday]" in reason
    assert (
        "caused by date_time_parse_exception: Failed to parse with all enclosed parsers" in reason
    )
