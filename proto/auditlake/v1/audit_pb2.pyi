from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditEvent(_message.Message):
    __slots__ = ("id", "tenant_id", "user_id", "action", "resource_type", "resource_id", "changes", "ip_address", "user_agent", "created_at_us", "outcome", "reason", "service", "trace_id", "span_id", "request_id", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    user_id: str
    action: str
    resource_type: str
    resource_id: str
    changes: str
    ip_address: str
    user_agent: str
    created_at_us: int
    outcome: str
    reason: str
    service: str
    trace_id: str
    span_id: str
    request_id: str
    metadata: str
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., action: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., changes: _Optional[str] = ..., ip_address: _Optional[str] = ..., user_agent: _Optional[str] = ..., created_at_us: _Optional[int] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., service: _Optional[str] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., request_id: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class EventColumns(_message.Message):
    __slots__ = ("id", "tenant_id", "user_id", "action", "resource_type", "resource_id", "changes", "ip_address", "user_agent", "created_at_us", "outcome", "reason", "service", "trace_id", "span_id", "request_id", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: _containers.RepeatedScalarFieldContainer[str]
    tenant_id: _containers.RepeatedScalarFieldContainer[str]
    user_id: _containers.RepeatedScalarFieldContainer[str]
    action: _containers.RepeatedScalarFieldContainer[str]
    resource_type: _containers.RepeatedScalarFieldContainer[str]
    resource_id: _containers.RepeatedScalarFieldContainer[str]
    changes: _containers.RepeatedScalarFieldContainer[str]
    ip_address: _containers.RepeatedScalarFieldContainer[str]
    user_agent: _containers.RepeatedScalarFieldContainer[str]
    created_at_us: _containers.RepeatedScalarFieldContainer[int]
    outcome: _containers.RepeatedScalarFieldContainer[str]
    reason: _containers.RepeatedScalarFieldContainer[str]
    service: _containers.RepeatedScalarFieldContainer[str]
    trace_id: _containers.RepeatedScalarFieldContainer[str]
    span_id: _containers.RepeatedScalarFieldContainer[str]
    request_id: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[_Iterable[str]] = ..., tenant_id: _Optional[_Iterable[str]] = ..., user_id: _Optional[_Iterable[str]] = ..., action: _Optional[_Iterable[str]] = ..., resource_type: _Optional[_Iterable[str]] = ..., resource_id: _Optional[_Iterable[str]] = ..., changes: _Optional[_Iterable[str]] = ..., ip_address: _Optional[_Iterable[str]] = ..., user_agent: _Optional[_Iterable[str]] = ..., created_at_us: _Optional[_Iterable[int]] = ..., outcome: _Optional[_Iterable[str]] = ..., reason: _Optional[_Iterable[str]] = ..., service: _Optional[_Iterable[str]] = ..., trace_id: _Optional[_Iterable[str]] = ..., span_id: _Optional[_Iterable[str]] = ..., request_id: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Iterable[str]] = ...) -> None: ...

class PackedStrings(_message.Message):
    __slots__ = ("data", "lengths")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    lengths: bytes
    def __init__(self, data: _Optional[bytes] = ..., lengths: _Optional[bytes] = ...) -> None: ...

class PackedColumns(_message.Message):
    __slots__ = ("count", "id", "tenant_id", "user_id", "action", "resource_type", "resource_id", "changes", "ip_address", "user_agent", "created_at_us", "outcome", "reason", "service", "trace_id", "span_id", "request_id", "metadata")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_US_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    count: int
    id: PackedStrings
    tenant_id: PackedStrings
    user_id: PackedStrings
    action: PackedStrings
    resource_type: PackedStrings
    resource_id: PackedStrings
    changes: PackedStrings
    ip_address: PackedStrings
    user_agent: PackedStrings
    created_at_us: bytes
    outcome: PackedStrings
    reason: PackedStrings
    service: PackedStrings
    trace_id: PackedStrings
    span_id: PackedStrings
    request_id: PackedStrings
    metadata: PackedStrings
    def __init__(self, count: _Optional[int] = ..., id: _Optional[_Union[PackedStrings, _Mapping]] = ..., tenant_id: _Optional[_Union[PackedStrings, _Mapping]] = ..., user_id: _Optional[_Union[PackedStrings, _Mapping]] = ..., action: _Optional[_Union[PackedStrings, _Mapping]] = ..., resource_type: _Optional[_Union[PackedStrings, _Mapping]] = ..., resource_id: _Optional[_Union[PackedStrings, _Mapping]] = ..., changes: _Optional[_Union[PackedStrings, _Mapping]] = ..., ip_address: _Optional[_Union[PackedStrings, _Mapping]] = ..., user_agent: _Optional[_Union[PackedStrings, _Mapping]] = ..., created_at_us: _Optional[bytes] = ..., outcome: _Optional[_Union[PackedStrings, _Mapping]] = ..., reason: _Optional[_Union[PackedStrings, _Mapping]] = ..., service: _Optional[_Union[PackedStrings, _Mapping]] = ..., trace_id: _Optional[_Union[PackedStrings, _Mapping]] = ..., span_id: _Optional[_Union[PackedStrings, _Mapping]] = ..., request_id: _Optional[_Union[PackedStrings, _Mapping]] = ..., metadata: _Optional[_Union[PackedStrings, _Mapping]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("batch_id", "events", "columns", "packed")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    columns: EventColumns
    packed: PackedColumns
    def __init__(self, batch_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., columns: _Optional[_Union[EventColumns, _Mapping]] = ..., packed: _Optional[_Union[PackedColumns, _Mapping]] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicate: bool
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicate: _Optional[bool] = ..., duplicates: _Optional[int] = ...) -> None: ...
