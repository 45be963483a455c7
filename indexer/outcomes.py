"""The one place that decides what a write result means: done, retry or dead letter.

Every bulk item result and every failed bulk request goes through here. Retryable:
429, 5xx, timeouts and connection errors, and answers about credentials, permissions, a
missing index or a wrong address (401, 403, 404, 408): OpenSearch is overloaded, away or
misconfigured; the event stays un-acked and is sent again after a backoff; so are 4xx item
errors whose type describes the cluster's state (the shard limit, a closed or blocked index).
Permanent: any other 4xx item error (a mapping or parse rejection), a whole request refused
as malformed
(each document is then tried alone), and documents that cannot be built; they go to the
DLQ with OpenSearch's reason and count as done.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from indexer.errors import DocumentError, SearchRequestError, SearchUnavailableError


class Outcome(enum.Enum):
    """What to do with one document after a write attempt."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    RETRY = "retry"
    REJECTED = "rejected"

    @property
    def done(self) -> bool:
        """True when the document needs no further write."""
        return self is not Outcome.RETRY


# Item statuses about the cluster's set-up, not the document: no credentials or
# permission (401, 403: a security plugin), no such index and no auto-creation (404),
# a timeout (408). Retried until someone fixes it, never dead-lettered.
_NOT_THE_DOCUMENT = frozenset({401, 403, 404, 408})


# Item errors answered 400 (or another 4xx) that describe the cluster, not the document:
# the node's shard limit reached when the day's index is created (validation_exception), a
# closed index, a write block, an index being created at the same moment. Dead-lettering
# would send every event of the day to the DLQ for a state someone can fix; they are retried.
_CLUSTER_STATE_ERRORS = frozenset(
    {
        "validation_exception",
        "index_closed_exception",
        "cluster_block_exception",
        "index_not_found_exception",
        "resource_already_exists_exception",
    }
)


def item_outcome(status: int, error: Mapping[str, Any] | None = None) -> Outcome:
    """The outcome of one bulk item from its HTTP status and, for a 4xx, its error type."""
    if status in (200, 201):
        return Outcome.CREATED
    if status == 409:
        return Outcome.DUPLICATE
    if status == 429 or status >= 500 or status in _NOT_THE_DOCUMENT:
        return Outcome.RETRY
    if 400 <= status < 500:
        if error and error.get("type") in _CLUSTER_STATE_ERRORS:
            return Outcome.RETRY
        return Outcome.REJECTED
    return Outcome.RETRY


_MAX_CAUSES = 4  # of an error's cause chain, in a dead letter's reason


def item_reason(error: Mapping[str, Any] | None) -> str:
    """OpenSearch's error type and reason for a failed item, with its causes, for the DLQ."""
    if not error:
        return "unknown error"
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    causes: list[str] = []
    cause = error.get("caused_by")
    while isinstance(cause, Mapping) and len(causes) < _MAX_CAUSES:
        causes.append(f"{cause.get('type', 'error')}: {cause.get('reason', '')}")
        cause = cause.get("caused_by")
    if causes:
        text += f" (caused by {'; caused by '.join(causes)})"
    return text


def failure_outcome(err: Exception) -> Outcome:
    """The outcome for the documents of a request that failed as a whole."""
    if isinstance(err, DocumentError | SearchRequestError):
        return Outcome.REJECTED
    if isinstance(err, SearchUnavailableError):
        return Outcome.RETRY
    # Anything unforeseen is retried: losing an event is worse than trying again.
    return Outcome.RETRY


def backoff_s(failures: int, *, base_s: float, max_s: float) -> float:
    """Capped exponential backoff after `failures` consecutive failures (1 = first)."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, base_s * 2 ** min(failures - 1, 32)))
