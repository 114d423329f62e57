"""The OCSF 1.3 mapping of docs/admin.md, one stored event at a time in
plain Python: the specification that the vectorised SQL
(collector/lake/encode.py ``OCSF_JSON``), and so the export's ``ocsf`` lines
and the streams' ``ocsf`` bodies, are checked against event for event."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

#: OCSF activity ids of API Activity (6003) by our action, CRUD first.
_API_ACTIVITY = {"create": (1, "Create"), "read": (2, "Read"), "update": (3, "Update"),
                 "delete": (4, "Delete")}
#: Actions that are OCSF Authentication (3002): activity id and name.
_AUTH_ACTIVITY = {"login": (1, "Logon"), "login_failed": (1, "Logon"), "logout": (2, "Logoff")}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ms(value: dt.datetime) -> int:
    """Whole milliseconds since the epoch, truncated toward zero, in integer
    arithmetic (no float on the way)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    us = (value - _EPOCH) // dt.timedelta(microseconds=1)
    return -(-us // 1000) if us < 0 else us // 1000


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def ocsf_event(row: dict[str, Any]) -> dict[str, Any]:
    """One stored event as an OCSF 1.3 event: Authentication (3002) for
    login, logout and login_failed; API Activity (6003) for everything else."""
    action = row["action"]
    failed = row["outcome"] != "success" or action == "login_failed"
    if action in _AUTH_ACTIVITY:
        class_uid, class_name, category_uid, category_name = 3002, "Authentication", 3, "Identity & Access Management"
        activity_id, activity_name = _AUTH_ACTIVITY[action]
    else:
        class_uid, class_name, category_uid, category_name = 6003, "API Activity", 6, "Application Activity"
        activity_id, activity_name = _API_ACTIVITY.get(action, (99, "Other"))
    out: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "severity_id": 1,
        "severity": "Informational",
        "time": _ms(row["created_at"]),
        "status_id": 2 if failed else 1,
        "status": "Failure" if failed else "Success",
        "metadata": {
            "version": "1.3.0",
            "uid": row["id"],
            "tenant_uid": row["tenant_id"],
            "logged_time": _ms(row["received_at"]),
            "product": {"name": "auditlake", "vendor_name": "auditlake"},
            "log_name": "audit",
        },
        "actor": {"user": {"uid": row["user_id"], "type_id": 0}},
        "src_endpoint": {"ip": row["ip_address"]} if row["ip_address"] else {},
        "unmapped": {
            "action": action,
            "outcome": row["outcome"],
            "changes": _json_object(row["changes"]),
            "metadata": _json_object(row["metadata"]),
            "writer_id": row["writer_id"],
            "seq": row["seq"],
            "chain_hash": row["chain_hash"],
            "imported": row["imported"],
            "clock_skew": row["clock_skew"],
        },
    }
    if failed:
        out["status_detail"] = f"{row['outcome']}: {row['reason']}" if row["reason"] else row["outcome"]
    if row["user_agent"]:
        out["http_request"] = {"user_agent": row["user_agent"]}
    if row["trace_id"]:
        out["metadata"]["correlation_uid"] = row["trace_id"]
        out["unmapped"]["span_id"] = row["span_id"]
    if class_uid == 3002:
        out["user"] = {"uid": row["user_id"]}
        out["service"] = {"name": row["service"]}
    else:
        out["api"] = {"operation": action, "service": {"name": row["service"]}}
        if row["request_id"]:
            out["api"]["request"] = {"uid": row["request_id"]}
        out["resources"] = [{"type": row["resource_type"], "uid": row["resource_id"]}]
    return out
