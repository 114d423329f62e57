"""Re-verify an auditlake lake independently: Python's standard library, DuckDB,
and (for signatures) the openssl command.  Follows docs/integrity.md step by
step and imports nothing from auditlake.

    python auditor_verify.py DATA_DIR_OR_LAKE_COPY [--public-key PEM ...] [--cold DIR]

Prints a JSON summary; exits 0 when everything checks, 1 otherwise.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import duckdb

# Step 1: the hashed fields, in this order, and how each becomes text.
FIELDS = [
    ("id", "string"), ("tenant_id", "string"), ("user_id", "string"), ("action", "string"),
    ("resource_type", "string"), ("resource_id", "string"), ("changes", "string"),
    ("ip_address", "string"), ("user_agent", "string"), ("created_at", "timestamp"),
    ("outcome", "string"), ("reason", "string"), ("service", "string"),
    ("trace_id", "string"), ("span_id", "string"), ("request_id", "string"),
    ("metadata", "string"), ("received_at", "timestamp"), ("writer_id", "string"),
    ("ingest_key_id", "string"), ("seq", "integer"), ("imported", "boolean"),
    ("clock_skew", "boolean"),
]
# Files sealed before ingest_key_id existed (encoding version 1) lack that
# column: their events are hashed over the same fields without it.
FIELDS_V1 = [f for f in FIELDS if f[0] != "ingest_key_id"]
GENESIS = bytes(32)


def field_text(name, kind):
    if kind == "timestamp":
        return f'CAST(epoch_us("{name}") AS VARCHAR)'
    if kind == "integer":
        return f'CAST("{name}" AS VARCHAR)'
    if kind == "boolean":
        return f"""(CASE WHEN "{name}" THEN '1' ELSE '0' END)"""
    return f'"{name}"'


def canonical_sql(fields):
    """Step 2: len,value,len,value,... joined with commas, as bytes."""
    parts = []
    for name, kind in fields:
        text = field_text(name, kind)
        parts += [f"CAST(strlen({text}) AS VARCHAR)", text]
    return "encode(concat_ws(',', " + ", ".join(parts) + "))"


def file_fields(con, path):
    """Step 2: a file's encoding version, by whether it has an ingest_key_id column."""
    names = {row[0] for row in con.execute("SELECT name FROM parquet_schema(?)", [path]).fetchall()}
    return FIELDS if "ingest_key_id" in names else FIELDS_V1


def signed_bytes(doc):
    """Step 4: a checkpoint's signed bytes: the JSON without its signature,
    keys sorted, no spaces, ASCII only."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def openssl_verify(public_key, message, signature_b64):
    """Step 5: Ed25519 with the openssl command (None when it is not installed)."""
    if not public_key or shutil.which("openssl") is None:
        return None
    import base64

    with tempfile.TemporaryDirectory() as tmp:
        msg, sig = os.path.join(tmp, "msg"), os.path.join(tmp, "sig")
        with open(msg, "wb") as f:
            f.write(message)
        with open(sig, "wb") as f:
            f.write(base64.b64decode(signature_b64))
        proc = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", public_key, "-rawin",
             "-in", msg, "-sigfile", sig], capture_output=True)
        return proc.returncode == 0


def load_json(path):
    with open(path, "rb") as f:
        return json.load(f)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lake_folders(data):
    """A collector's data directory (DIR/lake/events, DIR/checkpoints), or a
    copy of a shared lake's bucket (events/ and checkpoints/ side by side)."""
    if os.path.isdir(os.path.join(data, "lake")):
        return os.path.join(data, "lake"), os.path.join(data, "checkpoints")
    return data, os.path.join(data, "checkpoints")


def split_keys(pem_files, folder):
    """Step 4: the public keys, one file each for openssl, with the writer a
    `# auditlake writer <id>` line before a block binds it to ("" = any)."""
    keys, label, block = [], "", []
    for pem_file in pem_files:
        with open(pem_file) as f:
            for line in f:
                line = line.strip()
                if not block and line.startswith("# auditlake writer "):
                    label = line.split()[3]
                elif line.startswith("-----BEGIN") or block:
                    block.append(line)
                    if line.startswith("-----END"):
                        path = os.path.join(folder, f"key{len(keys)}.pem")
                        with open(path, "w") as out:
                            out.write("\n".join(block) + "\n")
                        keys.append((label, path))
                        label, block = "", []
    return keys


def rows_writer(path, listed_by):
    """Step 6: whose events a file holds: the writer its name carries."""
    m = re.search(r"(?:^|/)(?:part|compact)-(w[0-9a-f]+)-[^/]*[.]parquet$", path)
    return m.group(1) if m else listed_by


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--public-key", action="append", default=[])
    ap.add_argument("--cold", help="root of the cold tier (for cold: paths)")
    args = ap.parse_args()
    errors = []
    summary = {}
    lake, root = lake_folders(args.data)
    tmp = tempfile.mkdtemp()
    keys = split_keys(args.public_key, tmp)
    listed, removed, expired, docs_of = {}, set(), {}, {}
    for writer in sorted(os.listdir(root)):
        # Steps 3-5: the writer's checkpoints, in seal order, linked and signed.
        names = sorted(n for n in os.listdir(os.path.join(root, writer)) if n.endswith(".json"))
        docs = [load_json(os.path.join(root, writer, n)) for n in names]
        docs.sort(key=lambda d: d["seal"])
        docs_of[writer] = docs
        previous, checked = "", True
        mine = [path for label, path in keys if label in ("", writer)]
        for i, doc in enumerate(docs):
            if doc["seal"] != i + 1:
                errors.append(f"{writer}: seal {i + 1} missing (found {doc['seal']})")
            if doc["previous"] != previous:
                errors.append(f"{writer}: seal {doc['seal']} does not link to seal {i}")
            previous = hashlib.sha256(signed_bytes(doc)).hexdigest()
            results = [openssl_verify(k, signed_bytes(doc), doc["signature"]) for k in mine]
            if True in results:
                pass
            elif False in results:
                errors.append(f"{writer}: seal {doc['seal']}: bad signature")
            else:
                checked = False
            # Step 6: the live files: every file listed and removed by no
            # checkpoint of any writer (a move or expiry may be another's).
            for entry in doc["files"]:
                listed[entry["path"]] = (entry, rows_writer(entry["path"], writer))
            for entry in doc["removed"]:
                removed.add(entry["path"])
            for item in doc["extra"].get("ranges", []) if doc["kind"] == "expire" else []:
                owner = rows_writer(item["path"], writer)
                for first, last, last_hash in item["seq_ranges"]:
                    expired.setdefault(owner, {})[first] = (last, last_hash)
        summary[writer] = {"signatures": "checked with openssl" if checked and mine else
                           "not checked (no key for this writer, or no openssl)"}
    shutil.rmtree(tmp, ignore_errors=True)
    live = {rel: v for rel, v in listed.items() if rel not in removed}
    for writer, docs in sorted(docs_of.items()):
        paths = []
        for rel, (entry, owner) in sorted(live.items()):
            if owner != writer:
                continue
            if rel.startswith("cold:"):
                path = os.path.join(args.cold or "", rel[len("cold:"):])
            else:
                path = os.path.join(lake, rel)
            if not os.path.exists(path):
                errors.append(f"{writer}: file {rel} is missing")
                continue
            if sha256_file(path) != entry["sha256"]:
                errors.append(f"{writer}: file {rel} sha256 differs from its checkpoint")
            paths.append(path)
        heads = {doc["seq"]: doc["chain_hash"] for doc in docs}
        gaps = expired.get(writer, {})
        # Steps 7-8: every event, in seq order, re-chained from genesis.
        h, expected, count, mismatches = GENESIS, 1, 0, 0
        if paths:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            selects, params = [], []
            for fields in (FIELDS, FIELDS_V1):  # each file with its own encoding
                group = [p for p in paths if file_fields(con, p) is fields]
                if group:
                    selects.append(f"SELECT seq, chain_hash, {canonical_sql(fields)} AS c FROM "
                                   "read_parquet(?, union_by_name = true) WHERE writer_id = ?")
                    params += [group, writer]
            cur = con.execute(" UNION ALL ".join(selects) + " ORDER BY seq", params)
            while rows := cur.fetchmany(50_000):
                for seq, stored, canonical in rows:
                    while seq != expected and expected in gaps:  # a recorded expiry
                        last, last_hash = gaps[expected]
                        h, expected = bytes.fromhex(last_hash), last + 1
                    if seq != expected:
                        errors.append(f"{writer}: expected seq {expected}, found {seq}")
                    h = hashlib.sha256(h + canonical).digest()
                    if h.hex() != stored:
                        mismatches += 1
                        if mismatches <= 20:
                            errors.append(f"{writer}: seq {seq}: computed hash differs from stored")
                        h = bytes.fromhex(stored)  # continue from the stored value
                    if seq in heads and heads[seq] != h.hex():
                        errors.append(f"{writer}: seq {seq}: hash differs from checkpoint head")
                    expected, count = seq + 1, count + 1
        while expected in gaps:  # the lake may end with an expired range
            last, last_hash = gaps[expected]
            h, expected = bytes.fromhex(last_hash), last + 1
        head_seq = docs[-1]["seq"] if docs else 0
        if expected - 1 != head_seq:
            errors.append(f"{writer}: lake ends at seq {expected - 1}, signed head is {head_seq}")
        summary[writer].update({"events": count, "last_seq": expected - 1, "last_hash": h.hex(),
                                "head_seq": head_seq, "head_hash": docs[-1]["chain_hash"] if docs else "",
                                "checkpoints": len(docs), "mismatches": mismatches})
    print(json.dumps({"ok": not errors, "writers": summary, "errors": errors}, indent=1))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
