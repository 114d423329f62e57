"""The SDK and the collector each keep the wire's column list (the SDK may
not import the collector); both must match the proto contract exactly."""

from __future__ import annotations

from auditlake.collector.schema import STRING_FIELDS
from auditlake.sdk._event import COLUMN_NAMES
from auditlake.v1 import audit_pb2


def test_sdk_columns_are_the_protos_in_its_order() -> None:
    proto = [f.name for f in audit_pb2.EventColumns.DESCRIPTOR.fields]
    assert list(COLUMN_NAMES) == proto


def test_collector_fields_cover_every_proto_column() -> None:
    proto = {f.name for f in audit_pb2.EventColumns.DESCRIPTOR.fields}
    assert set(STRING_FIELDS) | {"created_at_us"} == proto
    assert {f.name for f in audit_pb2.AuditEvent.DESCRIPTOR.fields} == proto
