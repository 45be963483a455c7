"""The gateway's exceptions. Each carries its canonical gRPC code; `_status` maps codes to HTTP.

Retryable versus permanent is decided here, once: `Unavailable` and `Overloaded` are the
retryable ones (the answer carries Retry-After); every other error is the caller's mistake
and is never retried as it is.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class GatewayError(Exception):
    """Root of every error the gateway raises."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retryable: ClassVar[bool] = False
    # A more specific HTTP status than the code's, for the JSON routes only (413, 415).
    http_status: ClassVar[int | None] = None
    # Seconds a retryable error knows the client must wait (a rate limit's next token).
    wait_s: int | None = None

    def retry_after(self, default_s: int) -> int:
        """The seconds to send as Retry-After: the error's own wait, else `default_s`."""
        return default_s if self.wait_s is None else self.wait_s


class InvalidRequest(GatewayError):
    """The request is not a batch: not JSON, wrong shape, empty, bad parameter."""

    code = grpc.StatusCode.INVALID_ARGUMENT


# What a TooLarge batch's message tells the client to do: its events fit, the batch does not.
SEND_SMALLER = "split the batch and send the parts"


class TooLarge(GatewayError):
    """The body, its decompressed size or its number of events is past a limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 413


class UnsupportedMedia(GatewayError):
    """The Content-Type or Content-Encoding is not one the route speaks."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 415


class Unauthenticated(GatewayError):
    """No key, or a key nobody configured."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GatewayError):
    """A valid key of the wrong kind (a read key on a write route or the reverse)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(GatewayError):
    """Too many requests in flight, or a principal past its rate; try again shortly."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(self, message: str, *, wait_s: int | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class Unavailable(GatewayError):
    """The broker (or the query service) is down, slow or refused the batch; the batch is not
    accepted (see Unconfirmed for one that may be stored all the same)."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


# What an Unconfirmed batch's message tells the client to do: the retry says what happened.
RETRY_TELLS = (
    "it may be stored: retry it with the same Idempotency-Key (or the same events), and a"
    " stored batch answers duplicate: true"
)


class Unconfirmed(Unavailable):
    """The broker got the batch, or may have, but did not confirm storing it: no ack in time,
    or the connection lost after the publish was written; or it stored some parts of a split
    batch, not the rest. Answered as Unavailable (the client retries), with a message that
    says it may be stored: its retry answers duplicate if so (or stores only the rest)."""


class UpstreamError(GatewayError):
    """The query service answered with an error code; it is passed on through the table."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.upstream_code = code
