"""Protobuf wire encoding of the few fields the enricher writes by hand.

A message's encoding is its fields' encodings one after the other, and a
decoder merges concatenated encodings of one message into one. The helpers
here write single fields exactly as protobuf's serialiser does (proto3: a
zero or empty scalar is left out), so the enricher can assemble a message
from parts in field-number order and get the bytes `SerializeToString` gives.
"""

from __future__ import annotations

from google.protobuf.message import Message

WIRE_VARINT = 0
WIRE_LEN = 2
_INT64_MASK = (1 << 64) - 1


def varint(value: int) -> bytes:
    """A non-negative int in protobuf's base-128 varint encoding.

    Unrolled up to five bytes, which hold lengths, nanos and the seconds of
    any timestamp before the year 3000.
    """
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x20_0000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if value < 0x1000_0000:
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21,
            )
        )
    if value < 0x8_0000_0000:
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28,
            )
        )
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(message: type[Message], name: str, wire_type: int) -> bytes:
    """The encoded key (field number and wire type) of field `name` of `message`."""
    number = message.DESCRIPTOR.fields_by_name[name].number
    return varint((number << 3) | wire_type)


def int_field(key: bytes, value: int) -> bytes:
    """An int64, int32 or enum field; a negative value takes ten bytes, zero none."""
    if not value:
        return b""
    return key + varint(value & _INT64_MASK)


def string_field(key: bytes, text: str) -> bytes:
    """A string field; nothing for the empty string."""
    if not text:
        return b""
    data = text.encode()
    return key + varint(len(data)) + data


def message_field(key: bytes, body: bytes) -> bytes:
    """A set message field with the encoded `body` (present even when empty)."""
    return key + varint(len(body)) + body
