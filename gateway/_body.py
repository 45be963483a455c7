"""Request bodies with bounds: declared length, streamed length and decompressed length.

A gzip bomb is stopped after `max_decompressed + 1` bytes of output, never inflated whole.
Bytes are charged to the caller's budget as they are read and inflated, so a request that
does not fit beside the others is refused before the rest of it is in memory.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable

from gateway.errors import SEND_SMALLER, InvalidRequest, TooLarge, UnsupportedMedia

# Output inflated per step, each charged before the next: a refused request holds at most
# this much more than its budget allowed.
INFLATE_STEP_BYTES = 256 * 1024
# Gzip members a body may hold: `cat a.gz b.gz` makes a few; each costs an inflater, so a
# body of thousands of empty members would cost far more than its bytes.
MAX_GZIP_MEMBERS = 32


def _free(size: int) -> None:
    """The charge of a caller without a budget."""


def media_type(content_type: str | None) -> str:
    """The lower-case media type of a Content-Type header ('' when absent)."""
    if not content_type:
        return ""
    media, _, params = content_type.partition(";")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMedia("only UTF-8 bodies are accepted")
    return media.strip().lower()


def check_encoding(content_encoding: str | None) -> bool:
    """True for gzip, False for identity; raises for any other Content-Encoding."""
    if not content_encoding:
        return False
    value = content_encoding.strip().lower()
    if value in ("gzip", "x-gzip"):  # RFC 9110 8.4.1.3: x-gzip is gzip
        return True
    if value in ("identity", ""):
        return False
    raise UnsupportedMedia("Content-Encoding must be gzip (or x-gzip) or identity")


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    content_length: str | None,
    gzip: bool,
    max_body: int,
    max_decompressed: int,
    charge: Callable[[int], None] = _free,
) -> bytes:
    """The whole body, decompressed when `gzip`, within the limits; `charge` is called with
    the size of each piece read or inflated, and refuses the request by raising."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidRequest("Content-Length is not a number") from None
        if declared > max_body:
            raise TooLarge(f"the body is larger than {max_body} bytes; {SEND_SMALLER}")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body:
            raise TooLarge(f"the body is larger than {max_body} bytes; {SEND_SMALLER}")
        charge(len(chunk))
        parts.append(chunk)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if gzip:
        return gunzip(data, limit=max_decompressed, charge=charge)
    if len(data) > max_decompressed:
        raise TooLarge(f"the body is larger than {max_decompressed} bytes; {SEND_SMALLER}")
    return data


def gunzip(data: bytes, *, limit: int, charge: Callable[[int], None] = _free) -> bytes:
    """Decompresses a gzip body, producing at most `limit` bytes or raising TooLarge;
    `charge` is called with each step's output before the next step.

    A gzip file is a series of members (RFC 1952), as `cat a.gz b.gz` makes; all are read,
    up to MAX_GZIP_MEMBERS of them.
    """
    out: list[bytes] = []
    size = 0
    rest = data
    first = True
    members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise InvalidRequest(
                f"the gzip body has more than {MAX_GZIP_MEMBERS} members; "
                "compress the body as one gzip stream"
            )
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        while not inflater.eof:
            try:
                piece = inflater.decompress(pending, min(limit - size + 1, INFLATE_STEP_BYTES))
            except zlib.error:
                if not first:
                    raise InvalidRequest("the body has data after its gzip stream") from None
                raise InvalidRequest("the body is not valid gzip") from None
            size += len(piece)
            if size > limit:
                raise TooLarge(f"the body decompresses to more than {limit} bytes; {SEND_SMALLER}")
            pending = inflater.unconsumed_tail
            if not piece and not pending and not inflater.eof:
                raise InvalidRequest("the gzip body is truncated")
            if piece:
                charge(len(piece))
                out.append(piece)
        first = False
        rest = inflater.unused_data
        if not rest:
            return out[0] if len(out) == 1 else b"".join(out)
