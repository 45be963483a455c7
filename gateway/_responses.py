"""JSON answers and the error answer shared by the HTTP routes."""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from gateway import _status
from gateway.errors import GatewayError

log = logging.getLogger(__name__)


def json_response(data: object, *, status: int = 200) -> Response:
    """A JSON answer serialised with orjson."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(err: GatewayError, *, retry_after_s: int, refined: bool = True) -> Response:
    """{"code", "message"} with the status from the one table; Retry-After on 429/503
    (`retry_after_s`, or the wait the error knows)."""
    status = _status.http_status(err, refined=refined)
    response = json_response(
        {"code": _status.connect_code(err), "message": str(err)}, status=status
    )
    if status in _status.RETRY_LATER:
        response.headers["Retry-After"] = str(err.retry_after(retry_after_s))
    elif status == 401:  # RFC 9110: a 401 names the scheme it wants
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def internal_error() -> Response:
    """A 500 for a bug (logged with its traceback by the caller)."""
    return json_response({"code": "internal", "message": "internal error"}, status=500)
