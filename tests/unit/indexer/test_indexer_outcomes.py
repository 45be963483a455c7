"""The one decision table: done, retry or dead letter."""

from __future__ import annotations

from typing import Any

import pytest
from opensearchpy import exceptions as os_errors

from indexer.errors import (
    DocumentError,
    SearchLimitError,
    SearchRequestError,
    SearchUnavailableError,
)
from indexer.outcomes import Outcome, backoff_s, failure_outcome, item_outcome, item_reason
from indexer.store import _call as store_call
from indexer.store import _translate


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (201, Outcome.CREATED),
        (200, Outcome.CREATED),
        (409, Outcome.DUPLICATE),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
        (400, Outcome.REJECTED),
        (413, Outcome.REJECTED),
        # The cluster's set-up, not the document: retried, never dead-lettered.
        (401, Outcome.RETRY),
        (403, Outcome.RETRY),
        (404, Outcome.RETRY),
        (408, Outcome.RETRY),
    ],
)
def test_item_outcome(status: int, outcome: Outcome) -> None:
    assert item_outcome(status) is outcome


@pytest.mark.parametrize(
    ("error_type", "outcome"),
    [
        ("mapper_parsing_exception", Outcome.REJECTED),
        ("illegal_argument_exception", Outcome.REJECTED),
        ("strict_dynamic_mapping_exception", Outcome.REJECTED),
        # The cluster's state, not the document: the shard limit, a closed or blocked index,
        # an index missing or being created at the same moment.
        ("validation_exception", Outcome.RETRY),
        ("index_closed_exception", Outcome.RETRY),
        ("cluster_block_exception", Outcome.RETRY),
        ("index_not_found_exception", Outcome.RETRY),
        ("resource_already_exists_exception", Outcome.RETRY),
    ],
)
def test_a_400_is_judged_by_its_error_type(error_type: str, outcome: Outcome) -> None:
    assert item_outcome(400, {"type": error_type, "reason": "..."}) is outcome


def test_only_retry_is_not_done() -> None:
    assert [o for o in Outcome if not o.done] == [Outcome.RETRY]


def test_failure_outcome() -> None:
    assert failure_outcome(SearchUnavailableError("down")) is Outcome.RETRY
    assert failure_outcome(SearchRequestError(400, "bad")) is Outcome.REJECTED
    assert failure_outcome(DocumentError("no id")) is Outcome.REJECTED
    assert failure_outcome(RuntimeError("surprise")) is Outcome.RETRY


def test_reason_includes_type_and_cause() -> None:
    reason = item_reason(
        {
            "type": "mapper_parsing_exception",
            "reason": "failed to parse field [client_timestamp]",
            "caused_by": {"type": "illegal_argument_exception", "reason": "bad date"},
        }
    )
    assert reason.startswith("mapper_parsing_exception: failed to parse field [client_timestamp]")
    assert "illegal_argument_exception: bad date" in reason


def test_backoff_is_exponential_and_capped() -> None:
    delays = [backoff_s(n, base_s=0.1, max_s=1.0) for n in range(6)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.0])
    assert backoff_s(10_000, base_s=0.1, max_s=1.0) == 1.0


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.REJECTED),  # a malformed request: each document is then tried alone
        (413, Outcome.REJECTED),
        (401, Outcome.RETRY),  # credentials changed: hold and retry, never dead-letter
        (403, Outcome.RETRY),
        (404, Outcome.RETRY),  # a wrong path or proxy
        (429, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_a_whole_request_refused_is_rejected_only_when_the_request_is_wrong(
    status: int, outcome: Outcome
) -> None:
    refused = os_errors.TransportError(status, "security_exception", {"error": "no"})

    assert failure_outcome(_translate(refused)) is outcome


def _search_failed(status: int, cause: dict[str, Any]) -> os_errors.TransportError:
    """OpenSearch 2.19's answer to a search that failed on every shard for `cause`."""
    info = {
        "error": {"type": "search_phase_execution_exception", "reason": "", "caused_by": cause},
        "status": status,
    }
    return os_errors.TransportError(status, "search_phase_execution_exception", info)


def test_too_many_buckets_is_a_limit_and_causes_reach_the_message() -> None:
    # A histogram past search.max_buckets (a 503).
    limit = _translate(
        _search_failed(
            503,
            {
                "type": "too_many_buckets_exception",
                "reason": "Trying to create too many buckets. Must be less than or equal to: "
                "[65535] but was [65536]. This limit can be set by changing the "
                "[search.max_buckets] cluster level setting.",
            },
        )
    )
    assert isinstance(limit, SearchLimitError)
    assert (limit.limit, limit.most) == (SearchLimitError.BUCKETS, 65535)
    assert str(limit).startswith("Trying to create too many buckets")

    down = _translate(
        _search_failed(503, {"type": "node_closed_exception", "reason": "node closed"})
    )
    assert isinstance(down, SearchUnavailableError)
    assert "node_closed_exception: node closed" in str(down)


def test_too_many_clauses_is_a_limit_not_a_malformed_request() -> None:
    # Free text of more words than max_clause_count (a 400).
    limit = _translate(
        _search_failed(
            400,
            {
                "type": "query_shard_exception",
                "reason": "failed to create query: maxClauseCount is set to 5",
                "caused_by": {"type": "too_many_clauses", "reason": "maxClauseCount is set to 5"},
            },
        )
    )
    assert isinstance(limit, SearchLimitError)
    assert (limit.limit, limit.most) == (SearchLimitError.CLAUSES, 5)


def test_a_retryable_answer_keeps_its_status_and_no_answer_has_none() -> None:
    # The bulk writer splits a request refused again and again only for an answered status.
    answered = _translate(os_errors.TransportError(403, "security_exception", {"error": "no"}))
    assert isinstance(answered, SearchUnavailableError)
    assert answered.status == 403
    unreachable = _translate(os_errors.ConnectionError("N/A", "refused", OSError("refused")))
    assert isinstance(unreachable, SearchUnavailableError)
    assert unreachable.status is None


async def test_an_answer_that_is_not_json_is_opensearch_unavailable() -> None:
    # A proxy in front of OpenSearch answering 200 with an HTML page: retried (bulk), UNAVAILABLE
    # (queries), a warning (retention), not an unexpected error.
    async def request() -> None:
        raise os_errors.SerializationError("<html>maintenance</html>", ValueError("no JSON"))

    with pytest.raises(SearchUnavailableError, match="not JSON") as raised:
        await store_call(request)

    assert failure_outcome(raised.value) is Outcome.RETRY


def test_opensearch_not_reachable_says_the_cause_once() -> None:
    # opensearch-py's text repeats it: "ConnectionError(Cannot connect to host ...) caused by:
    # ClientConnectorError(Cannot connect to host ...)", in `holding intake` and retention lines.
    said = "Cannot connect to host 127.0.0.1:12200 ssl:default [Connect call failed]"
    refused = os_errors.ConnectionError("N/A", said, OSError(said))
    assert str(_translate(refused)) == f"opensearch not reachable: OSError: {said}"

    slow = os_errors.ConnectionTimeout("TIMEOUT", "", TimeoutError())
    assert str(_translate(slow)) == "opensearch not reachable: TimeoutError"

    # An outer message of its own is kept, the cause after it.
    other = os_errors.ConnectionError("N/A", "pool closed", OSError("socket gone"))
    assert str(_translate(other)) == "opensearch not reachable: pool closed (OSError: socket gone)"
