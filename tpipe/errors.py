"""The exception root of `tpipe`: the client's translated gRPC errors and the CLI's errors.

`TpipeError` is the root. Each error knows the CLI exit code it maps to, so a command
turns any of them into one line on stderr and a documented exit code in one place.
"""

from __future__ import annotations

from typing import ClassVar

# Exit codes of the people commands (documented in `tpipe --help` and docs/cli.md).
EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and something failed: a rejection, a partial send
EXIT_USAGE = 2  # bad arguments or bad input
EXIT_UNAVAILABLE = 3  # a server could not be reached or stayed unavailable


class TpipeError(Exception):
    """Root of every error raised by `tpipe`."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class UsageError(TpipeError):
    """Bad arguments or bad input: nothing was sent."""

    exit_code = EXIT_USAGE


class ClientError(TpipeError):
    """A call to a pipeline service failed; `code` is the canonical gRPC code name."""

    code: ClassVar[str] = "UNKNOWN"
    retryable: ClassVar[bool] = False


class InvalidArgument(ClientError):
    """The server refused the request as malformed (a bad filter, page size or page token)."""

    code = "INVALID_ARGUMENT"
    exit_code = EXIT_USAGE


class Unauthenticated(ClientError):
    """No key, or a key the server does not know."""

    code = "UNAUTHENTICATED"
    exit_code = EXIT_USAGE


class PermissionDenied(ClientError):
    """A known key that may not do this (a read key on a write call or the reverse)."""

    code = "PERMISSION_DENIED"
    exit_code = EXIT_USAGE


class ResourceExhausted(ClientError):
    """The server is overloaded or the key is over its rate; try again later."""

    code = "RESOURCE_EXHAUSTED"
    retryable = True
    exit_code = EXIT_UNAVAILABLE


class Unavailable(ClientError):
    """The server could not be reached, or its backend is down."""

    code = "UNAVAILABLE"
    retryable = True
    exit_code = EXIT_UNAVAILABLE


class PartialAnswer(Unavailable):
    """Part of the event store did not answer, and the call did not accept a partial answer
    (`partial=True`); the message names the indices that did not answer."""


class DeadlineExceeded(ClientError):
    """The call did not finish within its deadline."""

    code = "DEADLINE_EXCEEDED"
    retryable = True
    exit_code = EXIT_UNAVAILABLE


class ServerError(ClientError):
    """Any other failure of the server (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)."""

    code = "INTERNAL"


def describe(err: BaseException) -> str:
    """A third-party exception's text on one line (aiohttp's span several), or its type's name
    when it has none (a TimeoutError)."""
    return " ".join(str(err).split()) or type(err).__name__
