"""The one code table: every canonical code has an HTTP status and a Connect name."""

from __future__ import annotations

import grpc
import pytest

from gateway import _status
from gateway._responses import error_response
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMedia,
    UpstreamError,
)


def test_every_code_is_in_the_table() -> None:
    assert set(_status.TABLE) == set(grpc.StatusCode)


@pytest.mark.parametrize(
    ("err", "http", "connect"),
    [
        (InvalidRequest("x"), 400, "invalid_argument"),
        (TooLarge("x"), 413, "invalid_argument"),
        (UnsupportedMedia("x"), 415, "invalid_argument"),
        (Unauthenticated("x"), 401, "unauthenticated"),
        (PermissionDenied("x"), 403, "permission_denied"),
        (Overloaded("x"), 429, "resource_exhausted"),
        (Unavailable("x"), 503, "unavailable"),
        (UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), 504, "deadline_exceeded"),
        (UpstreamError(grpc.StatusCode.NOT_FOUND, "x"), 404, "not_found"),
    ],
)
def test_errors_map_through_the_table(err: GatewayError, http: int, connect: str) -> None:
    assert _status.http_status(err) == http
    assert _status.connect_code(err) == connect


def test_a_401_names_the_bearer_scheme_and_only_retryable_errors_say_when() -> None:
    denied = error_response(Unauthenticated("a valid API key is required"), retry_after_s=1)
    busy = error_response(Overloaded("x"), retry_after_s=3)

    assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Bearer")
    assert "retry-after" not in denied.headers
    assert (busy.headers["retry-after"], "www-authenticate" in busy.headers) == ("3", False)


def test_unrefined_statuses_are_the_tables() -> None:
    assert _status.http_status(TooLarge("x"), refined=False) == 400


def test_only_broker_and_overload_errors_are_retryable() -> None:
    retryable = {cls for cls in GatewayError.__subclasses__() if cls.retryable}
    assert retryable == {Overloaded, Unavailable}
