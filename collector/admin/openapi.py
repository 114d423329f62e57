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

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SEAL = {"type": "integer", "minimum": 0, "maximum": 9_999_999_999_999_999}
_WRITER = {"type": "string", "minLength": 1, "maxLength": 128}

#: A checkpoint as stored (docs/integrity.md section 4): its signed body and
#: ``signature``; version 2 signs the writer's Merkle tree head.
_FILE_ENTRY = {"type": "object", "required": ["path", "sha256", "bytes", "rows", "first_seq", "last_seq"],
               "properties": {"path": {"type": "string"}, "sha256": _HEX64, "bytes": {"type": "integer"},
                              "rows": {"type": "integer"}, "first_seq": {"type": "integer"},
                              "last_seq": {"type": "integer"}}}
_SIGNED_CHECKPOINT = {
    "type": "object",
    "required": ["version", "writer_id", "seal", "seq", "chain_hash", "time", "kind", "files", "removed",
                 "previous", "extra", "tree_size", "tree_root", "signature"],
    "properties": {
        "version": {"type": "integer", "enum": [2]},
        "writer_id": {"type": "string"}, "seal": {"type": "integer"}, "seq": {"type": "integer"},
        "chain_hash": _HEX64, "time": {"type": "string"},
        "kind": {"type": "string", "enum": ["seal", "compact", "move", "expire", "erase"]},
        "files": {"type": "array", "items": _FILE_ENTRY}, "removed": {"type": "array", "items": _FILE_ENTRY},
        "previous": {"type": "string"}, "extra": {"type": "object"},
        "tree_size": {"type": "integer", "minimum": 0}, "tree_root": _HEX64,
        "signature": {"type": "string", "description": "base64 Ed25519 signature over the RFC 8785 "
                      "serialisation of every other field"},
    },
}
_INCLUSION_PROOF = {
    "type": "object",
    "required": ["type", "version", "writer_id", "leaf_index", "tree_size", "event", "audit_path", "checkpoint"],
    "properties": {
        "type": {"type": "string", "enum": ["auditlake-inclusion-proof"]},
        "version": {"type": "integer", "enum": [1]},
        "writer_id": {"type": "string"},
        "leaf_index": {"type": "integer", "minimum": 0, "description": "the event's seq - 1"},
        "tree_size": {"type": "integer", "minimum": 1},
        "event": {"type": "array", "description": "[field, canonical text] pairs, the hashed fields in order",
                  "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}},
        "audit_path": {"type": "array", "items": _HEX64},
        "checkpoint": {"$ref": "#/components/schemas/SignedCheckpoint"},
    },
}
_CONSISTENCY_PROOF = {
    "type": "object",
    "required": ["type", "version", "writer_id", "first", "second", "proof"],
    "properties": {
        "type": {"type": "string", "enum": ["auditlake-consistency-proof"]},
        "version": {"type": "integer", "enum": [1]},
        "writer_id": {"type": "string"},
        "first": {"$ref": "#/components/schemas/SignedCheckpoint"},
        "second": {"$ref": "#/components/schemas/SignedCheckpoint"},
        "proof": {"type": "array", "items": _HEX64},
    },
}
_HEADS = {
    "type": "object", "required": ["heads", "without_tree_head"],
    "properties": {
        "heads": {"type": "array", "items": {"$ref": "#/components/schemas/SignedCheckpoint"}},
        "without_tree_head": {"type": "array", "items": {
            "type": "object", "required": ["writer_id", "reason"],
            "properties": {"writer_id": {"type": "string"}, "reason": {"type": "string"}}}},
    },
}
_PROOF_HELP = ("Check it with `auditlake proof verify FILE --public-key KEY`, or by hand as docs/integrity.md "
               "section 8 describes.")


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed parameter", 401: "Not authenticated",
            403: "Not allowed (a tenant outside the grant, or an endpoint the role may not call)",
            404: "Not found", 409: "The lake cannot give this proof as it stands (the message says why)",
            429: "Too many exports running (see Retry-After)",
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
            "description": "Search and export audit events, and get Merkle proofs of them. "
                           "Authenticate with `Authorization: Bearer alu_...` "
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
            "/api/v1/events/{id}/proof": {"get": {
                "operationId": "getEventProof",
                "summary": "The Merkle inclusion proof of one event: its stored fields, its audit path and its "
                           "writer's newest signed checkpoint. " + _PROOF_HELP,
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string", "maxLength": MAX_BYTES["id"]}},
                               _param("download", "1: send it as an attachment, proof-<id>.json.",
                                      {"type": "string", "enum": ["0", "1", "true", "false"]})],
                "responses": {
                    "200": {"description": "The proof", "content": _json(_ref("InclusionProof"))},
                    **_errors(400, 401, 404, 409, 503),
                }}},
            "/api/v1/proofs/consistency": {"get": {
                "operationId": "getConsistencyProof",
                "summary": "The proof that a writer's later checkpoint's log extends an earlier one's "
                           "(admins and monitors). " + _PROOF_HELP,
                "parameters": [
                    {"name": "writer", "in": "query", "required": True, "description": "The writer id.",
                     "schema": _WRITER},
                    {"name": "from", "in": "query", "required": True,
                     "description": "Seal number of the earlier checkpoint.", "schema": _SEAL},
                    _param("to", "Seal number of the later checkpoint (default: the writer's newest signed "
                           "tree head).", _SEAL),
                ],
                "responses": {
                    "200": {"description": "The proof", "content": _json(_ref("ConsistencyProof"))},
                    **_errors(400, 401, 403, 404, 409),
                }}},
            "/api/v1/checkpoints/heads": {"get": {
                "operationId": "getTreeHeads",
                "summary": "Every writer's newest checkpoint that signs a Merkle tree head, as stored "
                           "(admins and monitors): what `auditlake monitor --url` polls",
                "responses": {
                    "200": {"description": "The heads", "content": _json(_HEADS)},
                    **_errors(401, 403),
                }}},
            "/api/v1/checkpoints/{writer}/head": {"get": {
                "operationId": "getTreeHead",
                "summary": "One writer's newest checkpoint that signs a Merkle tree head, as stored "
                           "(admins and monitors)",
                "parameters": [{"name": "writer", "in": "path", "required": True, "schema": _WRITER}],
                "responses": {
                    "200": {"description": "The signed checkpoint", "content": _json(_ref("SignedCheckpoint"))},
                    **_errors(400, 401, 403, 404, 409),
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
                "SignedCheckpoint": _SIGNED_CHECKPOINT,
                "InclusionProof": _INCLUSION_PROOF,
                "ConsistencyProof": _CONSISTENCY_PROOF,
            },
        },
    }
