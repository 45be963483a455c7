"""A tiny writer of MaxMind DB files (format 2.0), enough to test the reader path for real.

It writes an IPv4 database with one record per network, 24-bit records, and the
data section types the GeoIP2 City layout uses (maps, UTF-8 strings, unsigned ints,
arrays). Only for tests: real databases come from their vendor.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path
from typing import Any

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_RECORD_BITS = 24


def _control(type_id: int, size: int) -> bytes:
    if size >= 29:
        raise ValueError("sizes of 29 or more are not needed here")
    if type_id <= 7:
        return bytes([(type_id << 5) | size])
    return bytes([size, type_id - 7])  # extended type


class Uint16(int):
    """An int written as uint16."""


class Uint32(int):
    """An int written as uint32."""


def encode(value: Any) -> bytes:
    """One value in the MaxMind DB data section encoding."""
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, dict):
        out = _control(7, len(value))
        for key, item in value.items():
            out += encode(str(key)) + encode(item)
        return out
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(encode(item) for item in value)
    if isinstance(value, int):
        raw = value.to_bytes(8, "big").lstrip(b"\0")
        type_id = 5 if isinstance(value, Uint16) else 6 if isinstance(value, Uint32) else 9
        return _control(type_id, len(raw)) + raw
    raise TypeError(f"cannot encode {type(value)}")


def write_mmdb(path: Path, networks: dict[str, dict[str, Any]]) -> None:
    """Writes an IPv4 database mapping each CIDR network to its record."""
    nodes: list[list[int | None]] = [[None, None]]
    data = b""
    leaves: list[tuple[int, int, int]] = []  # (node, side, data offset)
    for cidr, record in networks.items():
        net = ipaddress.IPv4Network(cidr)
        bits = int(net.network_address)
        node = 0
        for depth in range(net.prefixlen):
            side = (bits >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                leaves.append((node, side, len(data)))
                break
            child = nodes[node][side]
            if child is None:
                nodes.append([None, None])
                child = len(nodes) - 1
                nodes[node][side] = child
            node = child
        data += encode(record)
    count = len(nodes)
    for node, side, offset in leaves:
        nodes[node][side] = count + 16 + offset
    tree = b""
    for left, right in nodes:
        for value in (left, right):
            tree += struct.pack(">I", count if value is None else value)[1:]
    metadata = {
        "node_count": Uint32(count),
        "record_size": Uint16(_RECORD_BITS),
        "ip_version": Uint16(4),
        "database_type": "Test-City",
        "languages": ["en"],
        "binary_format_major_version": Uint16(2),
        "binary_format_minor_version": Uint16(0),
        "build_epoch": int(time.time()),
        "description": {"en": "test database"},
    }
    path.write_bytes(tree + b"\0" * 16 + data + _METADATA_MARKER + encode(metadata))
