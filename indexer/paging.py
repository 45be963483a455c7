"""AIP-158 page tokens: opaque, built on search_after, bound to the filter they were made for.

A token is base64url (unpadded) of a small JSON object: a format version, the sort
values of the last event of the page, and a hash of the canonical filter. A token
presented with another filter, or one that does not decode, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import orjson
from telemetry.v1 import query_service_pb2

from indexer.documents import MAX_ID_BYTES
from indexer.errors import InvalidArgumentError

TOKEN_VERSION = 1
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# What the sort values of a page's last event can be: corrected_timestamp as epoch
# milliseconds in a signed 64-bit long (an event without one sorts last with Long.MIN_VALUE),
# and event_id, a document _id (at most MAX_ID_BYTES).
_MIN_LONG, _MAX_LONG = -(2**63), 2**63 - 1

_REPEATED = (
    "user_ids",
    "session_ids",
    "event_names",
    "app_versions",
    "device_os",
    "country_codes",
    "app_ids",
)


def page_size(requested: int) -> int:
    """The page size to use: 0 -> default, above the maximum -> the maximum."""
    if requested < 0:
        raise InvalidArgumentError("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def filter_hash(flt: query_service_pb2.EventFilter) -> str:
    """A hash of the filter's meaning: list order and duplicates do not change it."""
    canonical: dict[str, Any] = {name: sorted(set(getattr(flt, name))) for name in _REPEATED}
    for name in ("start_time", "end_time"):
        if flt.HasField(name):
            stamp = getattr(flt, name)
            canonical[name] = [stamp.seconds, stamp.nanos]
    canonical["text"] = flt.text.strip()  # as the query uses it
    digest = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:32]


def encode_token(search_after: list[Any], flt: query_service_pb2.EventFilter) -> str:
    """The next_page_token continuing after `search_after` for `flt`."""
    raw = orjson.dumps({"v": TOKEN_VERSION, "a": search_after, "f": filter_hash(flt)})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(token: str, flt: query_service_pb2.EventFilter) -> list[Any]:
    """The search_after values of `token`; INVALID_ARGUMENT when it is not ours or not for `flt`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidArgumentError("page_token", "is not a valid page token") from None
    if (
        not isinstance(data, dict)
        or data.get("v") != TOKEN_VERSION
        or not isinstance(data.get("a"), list)
        or not isinstance(data.get("f"), str)
    ):
        raise InvalidArgumentError("page_token", "is not a valid page token")
    after: list[Any] = data["a"]
    if not _sort_values(after):
        raise InvalidArgumentError("page_token", "is not a valid page token")
    if data["f"] != filter_hash(flt):
        raise InvalidArgumentError(
            "page_token", "was made for another filter; start again without a page token"
        )
    return after


def _sort_values(after: list[Any]) -> bool:
    """True when `after` can be the sort values of an event: [millis, event_id]. Anything
    else would reach OpenSearch as search_after, which fails the search or reads it otherwise
    (a boolean or a number past 64 bits, a date as text)."""
    if len(after) != 2:
        return False
    millis, event_id = after
    return (
        type(millis) is int
        and _MIN_LONG <= millis <= _MAX_LONG
        and type(event_id) is str
        and len(event_id.encode(errors="replace")) <= MAX_ID_BYTES
    )
