"""gRPC failures translated into `tpipe.errors` types, and which of them a retry may fix."""

from __future__ import annotations

import grpc

from pipeline.query_names import PARTIAL_ANSWER_TRAILER
from tpipe import errors
from tpipe._backoff import parse_retry_after

_BY_CODE: dict[grpc.StatusCode, type[errors.ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


def translate(err: grpc.aio.AioRpcError, *, target: str) -> errors.ClientError:
    """Our most specific error for a failed call to `target`."""
    code = err.code()
    kind = _BY_CODE.get(code, errors.ServerError)
    if (PARTIAL_ANSWER_TRAILER, "refused") in tuple(err.trailing_metadata() or ()):
        kind = errors.PartialAnswer
    details = err.details() or code.name.lower()
    return kind(f"{target}: {code.name}: {details}")


def retryable(code: grpc.StatusCode, *, idempotent: bool) -> bool:
    """True when trying the same call again may succeed and cannot do harm.

    UNAVAILABLE and RESOURCE_EXHAUSTED mean nothing was done; DEADLINE_EXCEEDED may mean the
    server did the work, so only calls that are safe to repeat (reads) are retried on it.
    """
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return True
    return idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED


def retry_after_s(err: grpc.aio.AioRpcError) -> float | None:
    """The server's `retry-after` trailing metadata in seconds (at most MAX_RETRY_AFTER_S),
    when it sent a number."""
    for key, value in err.trailing_metadata() or ():
        if key == "retry-after" and isinstance(value, str):
            return parse_retry_after(value)
    return None
