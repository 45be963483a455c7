"""The exception root of the indexer, and the errors adapters translate third-party ones into."""

from __future__ import annotations


class IndexerError(Exception):
    """Root of every error the indexer raises."""


class DocumentError(IndexerError):
    """An event cannot become an OpenSearch document (for example an empty event_id)."""


class DeadLetterRefusedError(IndexerError):
    """NATS refused a dead letter for good (too large for the server, or a JetStream 400 from
    the DLQ stream): publishing it again will be refused again."""


class SearchUnavailableError(IndexerError):
    """OpenSearch did not answer, timed out, or answered 429/5xx or a 4xx about credentials,
    permissions or its address (401, 403, 404...): worth trying again. `status` is the HTTP
    status OpenSearch answered with (None when it did not answer)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SearchLimitError(IndexerError):
    """OpenSearch refused a search for exceeding one of its limits: the same request will be
    refused again. `limit` says which: BUCKETS (a histogram's, `search.max_buckets`) or
    CLAUSES (a query's, `indices.query.bool.max_clause_count`: only free text makes a clause
    per word); `most` is the limit when OpenSearch named it."""

    BUCKETS = "buckets"
    CLAUSES = "clauses"

    def __init__(self, reason: str, *, limit: str, most: int | None = None) -> None:
        super().__init__(reason)
        self.limit = limit
        self.most = most


class SearchRequestError(IndexerError):
    """OpenSearch refused a whole request as malformed or too large (400, 413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class InvalidArgumentError(IndexerError):
    """A query request is invalid; `field` names the offending request field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description
