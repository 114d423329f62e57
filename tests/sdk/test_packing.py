"""Packed columns (auditlake.packing), the SDK's wire form: byte lengths,
round trips, and strings UTF-8 cannot hold."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditlake.packing import STRING_COLUMNS, encode_strings, event_count, pack_columns, unpack_columns
from auditlake.v1 import audit_pb2


def test_lengths_are_utf8_bytes_little_endian() -> None:
    data, lengths = encode_strings(["a", "é", "日本", ""])
    assert data == "aé日本".encode()
    assert struct.unpack("<4I", lengths) == (1, 2, 6, 0)


def test_a_lone_surrogate_is_kept_as_text_not_dropped() -> None:
    data, lengths = encode_strings(["ok", "bad\ud800end"])
    assert data == b"okbad\\ud800end"
    assert struct.unpack("<2I", lengths) == (2, 12)


@given(st.lists(st.text(st.characters(exclude_categories=("Cs",))), max_size=20), st.integers(0, 2**62))
def test_pack_then_unpack_is_the_identity(values: list[str], created: int) -> None:
    columns: dict[str, list[object]] = {name: list(values) for name in STRING_COLUMNS}
    columns["created_at_us"] = [created] * len(values)
    packed = pack_columns(columns)
    assert packed.count == len(values)
    assert unpack_columns(packed) == columns
    assert event_count(audit_pb2.ExportRequest(batch_id="b", packed=packed)) == len(values)


def test_columns_of_different_lengths_are_refused() -> None:
    columns: dict[str, list[object]] = {name: ["x"] for name in STRING_COLUMNS}
    columns["created_at_us"] = [1]
    columns["user_id"] = []
    with pytest.raises(ValueError, match="column user_id has 0 values, id has 1"):
        pack_columns(columns)


def test_the_sdk_column_names_match_the_proto() -> None:
    names = [f.name for f in audit_pb2.PackedColumns.DESCRIPTOR.fields if f.name != "count"]
    assert sorted(names) == sorted((*STRING_COLUMNS, "created_at_us"))
