"""Re-verify an auditlake lake independently: Python's standard library, DuckDB,
and the openssl command (3.0+) for signatures.  Follows docs/integrity.md step
by step and imports nothing from auditlake.

    python auditor_verify.py DATA_DIR_OR_LAKE_COPY --public-key PEM [--public-key PEM ...]
                             [--cold DIR] [--skip-signatures]

Prints a JSON summary.  Fails closed: "ok" is true, and the exit status 0,
only when every checkpoint's signature was checked with a key given for its
writer and everything else checks too.  No key, no key for some writer, or
no openssl 3 is a failure (exit 1).  --skip-signatures checks everything but
the signatures: "ok" stays false, and the exit status is 3 when all the rest
checks ("unsigned_checks_ok": true), 1 otherwise.
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


def openssl_problem():
    """Step 5 needs openssl 3.0+ (Ed25519 with -rawin): None when it is there,
    else why not."""
    if shutil.which("openssl") is None:
        return "the openssl command is not on PATH"
    proc = subprocess.run(["openssl", "version"], capture_output=True, text=True)
    m = re.match(r"OpenSSL (\d+)[.]", proc.stdout)
    if proc.returncode != 0 or not m or int(m.group(1)) < 3:
        return f"openssl 3.0+ is needed, found {proc.stdout.strip() or 'none'}"
    return None


def openssl_verify(public_key, message, signature_b64):
    """Step 5: Ed25519 with the openssl command."""
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


def files_readers_read(root, prefix):
    """Step 6: every file under ROOT/events that some reader of the lake reads,
    as checkpoint paths: each *.parquet at any depth, hidden or not (what
    read_parquet('events/**/*.parquet') globs), and any other file no part of
    whose path below events/ starts with _ or . (pyarrow.dataset and Spark
    read the folder whatever the suffix). A seal or compaction writes its
    file under a hidden name (.<name>.parquet.tmp), which no reader reads."""
    found = []
    events = os.path.join(root, "events")
    for folder, _dirs, names in os.walk(events):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            hidden = any(part.startswith(("_", ".")) for part in rel.split("/")[1:])
            if name.endswith(".parquet") or not hidden:
                found.append(prefix + rel)
    return found


def own_writer_sealed(data):
    """Step 6: a data dir whose writer (DIR/writer_id) has sealed, by its
    state/seal.json (a collector that never sealed has none): (writer, seal)."""
    try:
        with open(os.path.join(data, "writer_id")) as f:
            writer = f.read().strip()
        seal = load_json(os.path.join(data, "state", "seal.json")).get("seal", 0)
    except (OSError, ValueError, AttributeError):
        return None
    return (writer, seal) if writer and isinstance(seal, int) and seal >= 1 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--public-key", action="append", default=[])
    ap.add_argument("--cold", help="root of the cold tier (for cold: paths)")
    ap.add_argument("--skip-signatures", action="store_true",
                    help="check all but the signatures; the verdict is then never ok (exit 3 at best)")
    args = ap.parse_args()
    errors, unsigned = [], []  # unsigned: why signatures were not checked
    summary = {}
    lake, root = lake_folders(args.data)
    tmp = tempfile.mkdtemp()
    keys = split_keys(args.public_key, tmp)
    if args.skip_signatures:
        unsigned.append("--skip-signatures: no signature was checked")
    elif not keys:
        unsigned.append("no public key given (--public-key PEM): signatures cannot be checked")
    elif openssl_problem():
        unsigned.append(f"{openssl_problem()}: signatures cannot be checked")
    listed, removed, expired, docs_of = {}, {}, {}, {}
    for writer in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        # Steps 3-5: the writer's checkpoints, in seal order, linked and signed.
        names = sorted(n for n in os.listdir(os.path.join(root, writer)) if n.endswith(".json"))
        docs = [load_json(os.path.join(root, writer, n)) for n in names]
        docs.sort(key=lambda d: d["seal"])
        docs_of[writer] = docs
        previous = ""
        mine = [path for label, path in keys if label in ("", writer)]
        if keys and not mine and not unsigned:
            errors.append(f"{writer}: no public key given for this writer: signatures not checked")
        for i, doc in enumerate(docs):
            if doc["seal"] != i + 1:
                errors.append(f"{writer}: seal {i + 1} missing (found {doc['seal']})")
            if doc["previous"] != previous:
                errors.append(f"{writer}: seal {doc['seal']} does not link to seal {i}")
            previous = hashlib.sha256(signed_bytes(doc)).hexdigest()
            if mine and not unsigned and not any(
                    openssl_verify(k, signed_bytes(doc), doc["signature"]) for k in mine):
                errors.append(f"{writer}: seal {doc['seal']}: bad signature")
            # Step 6: the live files: every file listed and removed by no
            # checkpoint of any writer (a move or expiry may be another's).
            for entry in doc["files"]:
                listed[entry["path"]] = (entry, rows_writer(entry["path"], writer))
            for entry in doc["removed"]:
                removed[entry["path"]] = f"{writer} seal {doc['seal']} ({doc['kind']})"
            for item in doc["extra"].get("ranges", []) if doc["kind"] == "expire" else []:
                owner = rows_writer(item["path"], writer)
                for first, last, last_hash in item["seq_ranges"]:
                    expired.setdefault(owner, {})[first] = (last, last_hash)
        summary[writer] = {"signatures": "not checked" if unsigned or not mine else "checked with openssl"}
    shutil.rmtree(tmp, ignore_errors=True)
    live = {rel: v for rel, v in listed.items() if rel not in removed}
    # Step 6: what readers of the lake read is exactly the live files.
    present = files_readers_read(lake, "") + (files_readers_read(args.cold, "cold:") if args.cold else [])
    for rel in sorted(present):
        if rel in live:
            continue
        if rel in removed or rel.removesuffix(".superseded") in removed:
            errors.append(f"file {rel}: checkpoint {removed[rel.removesuffix('.superseded')]} removed it, "
                          "yet it is in the lake, where readers count its events again")
        else:
            errors.append(f"file {rel} is in the lake but no checkpoint lists it")
    sealed = own_writer_sealed(args.data)
    if sealed and sealed[0] not in docs_of:
        errors.append(f"{sealed[0]}: DIR/writer_id names this writer and its state/seal.json records "
                      f"seal {sealed[1]}, but no checkpoint of it is left: its checkpoints were deleted")
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
    ok = not errors and not unsigned
    out = {"ok": ok, "writers": summary, "errors": unsigned + errors}
    if args.skip_signatures:
        out["unsigned_checks_ok"] = not errors  # the chain and digests, never the signatures
    print(json.dumps(out, indent=1))
    return 0 if ok else 3 if args.skip_signatures and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
