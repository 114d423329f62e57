"""`auditlake erase`: crypto-shred one subject (GDPR article 17).

The command leaves a request in DIR/state/erase-requests/ and hands the
erasure's audit event (tenant T, action ``erase``, resource ``subject``/key
id, the operator as user) to the collector through the inbox, as imports
do: the write path (lake/writer.py, lake/erasure.py) finds the request under
the batch's id, destroys the subject's key (every copy: the lake's one key
store) and signs an ``erase`` checkpoint in the writer's chain, then stores
the event.  With a collector running on DIR it does this within a seal
interval; else the command runs the write path itself.  One path either way,
so the key is gone before the event that records its destruction exists.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import uuid
from typing import Any

import pyarrow as pa

from auditlake.collector.config import add_data_arg, config_path, erasure_config, load_toml
from auditlake.collector.ingest.inbox import submit
from auditlake.collector.lake.erasure import ERASE_BATCH_PREFIX, SubjectKeys, erase_request_dir
from auditlake.collector.retention.events import meta_event
from auditlake.collector.storage.datadir import DataDir


def erase_event(tenant_id: str, key_id: str, operator: str, reason: str) -> pa.Table:
    """The erasure's audit event: tenant ``tenant_id``, action ``erase``,
    resource ``subject``/``key_id``, by ``operator`` (no subject in clear)."""
    table = meta_event("erase", key_id, {"key_id": key_id}, resource_type="subject", user_id=operator,
                       reason=reason)
    idx = table.schema.get_field_index("tenant_id")
    return table.set_column(idx, table.schema.field(idx), pa.array([tenant_id], pa.string()))


def cmd_erase(args: argparse.Namespace) -> int:
    """`auditlake erase --tenant T --subject USER_ID`."""
    data = DataDir.from_args(args)
    toml = load_toml(config_path(args, data.config_file))
    if not erasure_config(toml).enabled:
        print("auditlake erase: erasure is not enabled ([erasure] enabled = true in auditlake.toml): "
              "this lake stores no encrypted fields, so no key can be destroyed", file=sys.stderr)
        return 2
    if not args.tenant or not args.subject:
        print("auditlake erase: --tenant and --subject must not be empty", file=sys.stderr)
        return 2
    keys = SubjectKeys.for_data(data)
    key_id = keys.key_id(args.tenant, args.subject)
    assert key_id is not None
    batch_id = f"{ERASE_BATCH_PREFIX}{uuid.uuid4()}"
    folder = erase_request_dir(data)
    folder.mkdir(parents=True, exist_ok=True)
    request = folder / f"{batch_id}.request"
    request.write_text(json.dumps({"key_id": key_id, "tenant_id": args.tenant, "reason": args.reason}))
    operator = args.operator or getpass.getuser()
    submit(data, erase_event(args.tenant, key_id, operator, args.reason), batch_id=batch_id, wait_s=args.wait)
    result = request.with_suffix(".result")
    deadline = time.monotonic() + args.wait
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not result.exists():
        print(f"auditlake erase: the collector running on {data.root} has not carried out the request "
              f"within {args.wait:.0f} s; it will when it takes its inbox ({request})", file=sys.stderr)
        return 1
    doc: dict[str, Any] = json.loads(result.read_text())
    result.unlink()
    state = "destroyed" if doc.get("key_existed") else "absent (nothing of this subject was stored encrypted)"
    print(f"subject key {key_id} of tenant {args.tenant}: {state}; erase checkpoint {doc['seal']} signed, "
          f"audit event recorded (batch {batch_id})")
    return 0


def register(subparsers: Any) -> None:
    """Add `auditlake erase`."""
    p = subparsers.add_parser(
        "erase", help="crypto-shred a subject's personal fields (GDPR art. 17); proofs stay valid",
        description="Destroy the key of one subject (tenant, user id) so that every personal field "
        "stored for it reads [erased]; signs an 'erase' checkpoint and records an audit event. "
        "Needs [erasure] enabled = true (docs/erasure.md).")
    add_data_arg(p)
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default DIR/auditlake.toml)")
    p.add_argument("--tenant", required=True, help="the subject's tenant id")
    p.add_argument("--subject", required=True, metavar="USER_ID", help="the subject's user id")
    p.add_argument("--reason", default="", help="why (stored in the checkpoint and the audit event)")
    p.add_argument("--operator", default="", help="who erases (default: the login name)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="when a collector is running, how long to wait for it to carry out the request")
    p.set_defaults(func=cmd_erase)
