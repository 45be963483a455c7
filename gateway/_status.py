"""The one table from canonical gRPC codes to HTTP statuses and Connect code names.

Every route uses it: the JSON routes, the Connect route and the mapping of the
QueryService's errors. The JSON routes refine two client errors further (413, 415),
declared on the exception classes in `errors`.
"""

from __future__ import annotations

from typing import NamedTuple

import grpc

from gateway.errors import GatewayError, UpstreamError


class Status(NamedTuple):
    """How one canonical code is spoken over HTTP."""

    http: int
    connect: str


TABLE: dict[grpc.StatusCode, Status] = {
    grpc.StatusCode.OK: Status(200, "ok"),
    grpc.StatusCode.CANCELLED: Status(499, "canceled"),
    grpc.StatusCode.UNKNOWN: Status(500, "unknown"),
    grpc.StatusCode.INVALID_ARGUMENT: Status(400, "invalid_argument"),
    grpc.StatusCode.DEADLINE_EXCEEDED: Status(504, "deadline_exceeded"),
    grpc.StatusCode.NOT_FOUND: Status(404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: Status(409, "already_exists"),
    grpc.StatusCode.PERMISSION_DENIED: Status(403, "permission_denied"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: Status(429, "resource_exhausted"),
    grpc.StatusCode.FAILED_PRECONDITION: Status(400, "failed_precondition"),
    grpc.StatusCode.ABORTED: Status(409, "aborted"),
    grpc.StatusCode.OUT_OF_RANGE: Status(400, "out_of_range"),
    grpc.StatusCode.UNIMPLEMENTED: Status(501, "unimplemented"),
    grpc.StatusCode.INTERNAL: Status(500, "internal"),
    grpc.StatusCode.UNAVAILABLE: Status(503, "unavailable"),
    grpc.StatusCode.DATA_LOSS: Status(500, "data_loss"),
    grpc.StatusCode.UNAUTHENTICATED: Status(401, "unauthenticated"),
}

# Statuses that tell the client to come back later; their answers carry Retry-After.
RETRY_LATER = frozenset({429, 503})


def code_of(err: GatewayError) -> grpc.StatusCode:
    """The canonical code of a gateway error (an upstream error keeps the upstream's code)."""
    return err.upstream_code if isinstance(err, UpstreamError) else err.code


def http_status(err: GatewayError, *, refined: bool = True) -> int:
    """The HTTP status for an error; `refined` uses 413/415 where the error declares them."""
    if refined and err.http_status is not None:
        return err.http_status
    return TABLE[code_of(err)].http


def connect_code(err: GatewayError) -> str:
    """The Connect protocol's name for the error's code."""
    return TABLE[code_of(err)].connect
