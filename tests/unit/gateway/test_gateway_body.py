"""Body bounds: declared, streamed and decompressed sizes; content types and encodings."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import pytest

from gateway._body import INFLATE_STEP_BYTES, check_encoding, gunzip, media_type, read_body
from gateway.errors import InvalidRequest, Overloaded, TooLarge, UnsupportedMedia


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(*parts: bytes, length: str | None = None, gz: bool = False) -> bytes:
    return await read_body(
        chunks(*parts), content_length=length, gzip=gz, max_body=100, max_decompressed=1000
    )


async def test_plain_body_within_limits() -> None:
    assert await read(b"[1,", b"2]", length="5") == b"[1,2]"


async def test_declared_length_past_the_limit_is_refused_before_reading() -> None:
    async def exploding() -> AsyncIterator[bytes]:
        raise AssertionError("must not be read")
        yield b""

    with pytest.raises(TooLarge):
        await read_body(
            exploding(), content_length="101", gzip=False, max_body=100, max_decompressed=1
        )


async def test_streamed_body_past_the_limit() -> None:
    with pytest.raises(TooLarge):
        await read(b"x" * 60, b"x" * 60)


async def test_bad_content_length() -> None:
    with pytest.raises(InvalidRequest):
        await read(b"x", length="ten")


async def test_gzip_within_limits() -> None:
    assert await read(gzip.compress(b"a" * 1000), gz=True) == b"a" * 1000


def test_gzip_bomb_stops_after_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(packer.compress(b"\0" * 1_000_000) for _ in range(100)) + packer.flush()
    inflated: list[int] = []
    real = zlib.decompressobj

    class Counting:
        """zlib's inflater, counting what it produces."""

        def __init__(self, wbits: int) -> None:
            self._inner = real(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            piece = self._inner.decompress(data, max_length)
            inflated.append(len(piece))
            return piece

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)

    with pytest.raises(TooLarge):
        gunzip(bomb, limit=1_000_000)
    # It stopped one byte past the limit: the 100 MB were never inflated.
    assert sum(inflated) == 1_000_001


def test_every_gzip_member_is_read() -> None:
    # `cat a.gz b.gz` is one valid gzip file (RFC 1952); other readers take all members.
    data = gzip.compress(b'[{"a": 1},') + gzip.compress(b"") + gzip.compress(b'{"b": 2}]')

    assert gunzip(data, limit=100) == b'[{"a": 1},{"b": 2}]'


def test_a_body_of_more_than_32_gzip_members_is_refused() -> None:
    # Each member costs an inflater: thousands of empty ones cost far more than their bytes.
    data = gzip.compress(b"") * 1000 + gzip.compress(b"[]")

    with pytest.raises(InvalidRequest, match="more than 32 members; compress the body as one"):
        gunzip(data, limit=100)


def test_32_gzip_members_are_read() -> None:
    data = gzip.compress(b"") * 31 + gzip.compress(b"[]")

    assert gunzip(data, limit=100) == b"[]"


def test_the_limit_counts_every_member() -> None:
    data = gzip.compress(b"a" * 60) + gzip.compress(b"b" * 60)

    with pytest.raises(TooLarge):
        gunzip(data, limit=100)
    assert gunzip(data, limit=120) == b"a" * 60 + b"b" * 60


@pytest.mark.parametrize(
    "data",
    [
        b"plain",
        gzip.compress(b"[1]")[:-4],
        gzip.compress(b"[1]") + b"junk",
        gzip.compress(b"[1]") + gzip.compress(b"[2]")[:-4],
        b"",
    ],
)
def test_broken_gzip_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        gunzip(data, limit=100)


@pytest.mark.parametrize(
    ("header", "media"),
    [
        (None, ""),
        ("application/json", "application/json"),
        ("Application/JSON; charset=UTF-8", "application/json"),
        ('application/json; charset="utf-8"', "application/json"),
        ("text/plain", "text/plain"),
    ],
)
def test_media_type(header: str | None, media: str) -> None:
    assert media_type(header) == media


def test_non_utf8_charset_is_unsupported() -> None:
    with pytest.raises(UnsupportedMedia):
        media_type("application/json; charset=iso-8859-1")


def test_encodings() -> None:
    assert check_encoding(None) is False
    assert check_encoding("identity") is False
    assert check_encoding(" GZIP ") is True
    for other in ("br", "deflate", "gzip, br"):
        with pytest.raises(UnsupportedMedia):
            check_encoding(other)


class Budget:
    """A charge that refuses once more than `limit` bytes were charged."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.charged = 0

    def __call__(self, size: int) -> None:
        if self.charged + size > self.limit:
            raise Overloaded("too many bytes in flight")
        self.charged += size


async def test_a_body_over_its_budget_is_refused_before_the_rest_is_read() -> None:
    sent: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for n in range(10):
            sent.append(n)
            yield b"x" * 100

    with pytest.raises(Overloaded):
        await read_body(
            stream(),
            content_length=None,
            gzip=False,
            max_body=10_000,
            max_decompressed=10_000,
            charge=Budget(250),
        )
    assert sent == [0, 1, 2]


def test_inflating_stops_at_the_first_step_over_the_budget() -> None:
    data = gzip.compress(b"\0" * (10 * INFLATE_STEP_BYTES))
    budget = Budget(INFLATE_STEP_BYTES + 10)

    with pytest.raises(Overloaded):
        gunzip(data, limit=100 * INFLATE_STEP_BYTES, charge=budget)
    assert budget.charged == INFLATE_STEP_BYTES
    everything = Budget(10 * INFLATE_STEP_BYTES)
    assert gunzip(data, limit=100 * INFLATE_STEP_BYTES, charge=everything) == b"\0" * (
        10 * INFLATE_STEP_BYTES
    )
    assert everything.charged == 10 * INFLATE_STEP_BYTES


def test_x_gzip_is_gzip() -> None:
    assert check_encoding("x-gzip") is True
