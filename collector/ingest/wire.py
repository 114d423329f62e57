"""The protobuf wire format, read without parsing a message: both services
on the gRPC port count and locate a request's repeated fields from its bytes
before anything is parsed, so a small request cannot make a large one
(an empty message costs 2 bytes sent and hundreds parsed)."""

from __future__ import annotations

from collections.abc import Iterator


def varint(raw: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``raw[pos:end]`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("malformed request: truncated or overlong varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of
    ``raw[start:end]``, in order; fields of other wire types are skipped.
    Raises ValueError on malformed bytes (as it reaches them)."""
    pos = start
    while pos < end:
        tag, pos = varint(raw, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError(f"malformed request: field number 0 at byte {pos}")
        if wire_type == 2:
            size, pos = varint(raw, pos, end)
            if pos + size > end:
                raise ValueError("malformed request: a field runs past the end of its message")
            yield number, pos, pos + size
            pos += size
            continue
        if wire_type == 0:
            _, pos = varint(raw, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"malformed request: wire type {wire_type} of field {number} at byte {pos}")
        if pos > end:
            raise ValueError("malformed request: a field runs past the end of its message")
