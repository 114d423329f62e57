"""The JSON API's OpenAPI 3 document (served at /api/v1/openapi.json),
written by hand from one table of filter parameters so it matches what
search.parse_filter accepts."""

from __future__ import annotations

from typing import Any

from auditlake.collector.admin.search import LIST_COLUMNS, MAX_LIMIT, RANGES
from auditlake.collector.schema import COLUMNS, MAX_BYTES, OUTCOMES


def _param(name: str, description: str, schema: dict[str, Any], *, many: bool = False) -> dict[str, Any]:
    if many:
        return {"name": name, "in": "query", "required": False, "description": description,
                "style": "form", "explode": True,
                "schema": {"type": "array", "items": schema, "maxItems": 50}}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit}


FILTER_PARAMETERS: list[dict[str, Any]] = [
    _param("tenant", "Tenant id (repeat for several). An auditor may name only tenants granted to them.",
           _text(MAX_BYTES["tenant_id"]), many=True),
    _param("user", "Actor (user_id), exact.", _text(MAX_BYTES["user_id"])),
    _param("action", "Action (repeat for several): create, read, update, delete, login, ...",
           _text(MAX_BYTES["action"]), many=True),
    _param("resource_type", "Resource type, exact.", _text(MAX_BYTES["resource_type"])),
    _param("resource_id", "Resource id, exact.", _text(MAX_BYTES["resource_id"])),
    _param("outcome", "Outcome (repeat for several).", {"type": "string", "enum": sorted(OUTCOMES)}, many=True),
    _param("ip", "Client IP address, exact.", _text(MAX_BYTES["ip_address"])),
    _param("q", "Free text, case-insensitive, searched in changes and metadata.", _text(256)),
    _param("range", "Named time range back from now; use from/to instead for a fixed window.",
           {"type": "string", "enum": [r for r in RANGES if r != "custom"]}),
    _param("from", "Start (inclusive): ISO 8601 date or date-time; naive means UTC.",
           {"type": "string", "format": "date-time"}),
    _param("to", "End (exclusive): ISO 8601 date or date-time; naive means UTC.",
           {"type": "string", "format": "date-time"}),
]

_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string"}, "parameter": {"type": ["string", "null"]}}}


def _event_schema(columns: tuple[str, ...]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for c in columns:
        if c in ("created_at", "received_at"):
            props[c] = {"type": "string", "format": "date-time"}
        elif c == "seq":
            props[c] = {"type": "integer"}
        elif c in ("imported", "clock_skew"):
            props[c] = {"type": "boolean"}
        else:
            props[c] = {"type": "string"}
    return {"type": "object", "properties": props, "required": list(columns)}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_EID = {"name": "eid", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed parameter", 401: "Not authenticated", 403: "Not allowed (tenant outside the grant)",
            404: "Not found", 429: "Too many exports running (see Retry-After)",
            503: "The query ran past [admin] query_timeout_s and was stopped (see Retry-After)"}
    return {str(c): {"description": text[c], "content": _json(_ref("Error"))}
            for c in codes}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    page_params = [
        *FILTER_PARAMETERS,
        _param("cursor", "Opaque keyset cursor: next_cursor of the previous page.",
               {"type": "string", "maxLength": 200}),
        _param("limit", f"Page size, 1..{MAX_LIMIT} (default 50).",
               {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        _param("fields", "summary (default: the list columns) or all (every stored column).",
               {"type": "string", "enum": ["summary", "all"]}),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "auditlake admin API",
            "version": "1",
            "description": "Search and export audit events. Authenticate with `Authorization: Bearer alu_...` "
                           "(`auditlake users token NAME`). Every call is itself recorded as an audit event.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/events": {"get": {
                "operationId": "listEvents",
                "summary": "Events matching the filters, newest first, one keyset page",
                "parameters": page_params,
                "responses": {
                    "200": {"description": "A page", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["events", "next_cursor"],
                        "properties": {
                            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                            "next_cursor": {"type": ["string", "null"]},
                            "limit": {"type": "integer"},
                        }}}}},
                    **_errors(400, 401, 403, 503),
                }}},
            "/api/v1/events/{id}": {"get": {
                "operationId": "getEvent",
                "summary": "One event, every column",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string", "maxLength": MAX_BYTES["id"]}}],
                "responses": {
                    "200": {"description": "The event", "content": _json(_ref("FullEvent"))},
                    **_errors(400, 401, 404, 503),
                }}},
            "/api/v1/stats": {"get": {
                "operationId": "eventStats",
                "summary": "Event counts per hour or day, split by action or outcome (the activity chart)",
                "parameters": [*FILTER_PARAMETERS,
                               _param("by", "Split by action (default) or outcome.",
                                      {"type": "string", "enum": ["action", "outcome"]})],
                "responses": {
                    "200": {"description": "Buckets", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["bucket", "by", "buckets", "series", "total"],
                        "properties": {
                            "bucket": {"type": "string", "enum": ["hour", "day", "week"]},
                            "by": {"type": "string"},
                            "buckets": {"type": "array", "items": {"type": "string", "format": "date-time"}},
                            "series": {"type": "object", "additionalProperties": {
                                "type": "array", "items": {"type": "integer"}}},
                            "total": {"type": "integer"},
                        }}}}},
                    **_errors(400, 401, 403, 503),
                }}},
            "/api/v1/export": {"get": {
                "operationId": "exportEvents",
                "summary": "Every matching event as CSV, JSON lines or OCSF (streamed); the signed manifest "
                           "is at the URL in the Link header once the download has finished",
                "parameters": [*FILTER_PARAMETERS,
                               {"name": "format", "in": "query", "required": True,
                                "schema": {"type": "string", "enum": ["csv", "jsonl", "ocsf"]}},
                               _param("eid", "Optional handle of your choosing (8-64 of A-Z a-z 0-9 _ -) to "
                                      "poll progress at /api/v1/exports/{eid} before the headers arrive; "
                                      "the export's own id is the X-Auditlake-Export-Id header.",
                                      {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"})],
                "responses": {
                    "200": {"description": "The file", "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "application/x-ndjson": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 403, 429),
                }}},
            "/api/v1/exports/{eid}": {"get": {
                "operationId": "exportProgress",
                "summary": "Progress of one of your exports",
                "parameters": [_EID],
                "responses": {
                    "200": {"description": "Progress", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {
                            "id": {"type": "string"},
                            "state": {"type": "string", "enum": ["running", "done", "ended early"]},
                            "rows": {"type": "integer"}, "total": {"type": ["integer", "null"]},
                            "bytes": {"type": "integer"}, "done": {"type": "boolean"},
                            "manifest": {"type": ["string", "null"]}}}}}},
                    **_errors(401, 404),
                }}},
            "/api/v1/exports/{eid}/manifest": {"get": {
                "operationId": "exportManifest",
                "summary": "The signed manifest of one of your finished exports",
                "parameters": [_EID],
                "responses": {
                    "200": {"description": "Manifest", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401, 404),
                }}},
            "/api/v1/integrity": {"get": {
                "operationId": "integrityStatus",
                "summary": "The last integrity verification of the lake",
                "responses": {
                    "200": {"description": "Status", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(401),
                }}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Event": _event_schema(LIST_COLUMNS),
                "FullEvent": _event_schema(COLUMNS),
            },
        },
    }
