"""Verify benchmark: `auditlake verify` events/s on a real chained lake,
next to baselines measured in the same run on the same files.

The lake (1 million events over 10 days; quick: 200,000) is made through
the collector's own path (inbox.submit -> WAL -> Sealer: real chain, real
signed checkpoints).  Rows:

- verify (verify_lake, what `auditlake verify` runs) against the floor of
  any chained verifier: SHA-256 over the same canonical bytes in a
  plain Python loop (bytes already in memory: no reading, no encoding);
- the same figure against DuckDB merely reading every column of the files;
- the `auditlake verify` command as a whole (process start included), and
  its process start alone;
- the file-by-file re-hash with the C loop (threads) and with the Python
  loop it falls back to (forked processes);
- the least any verifier of these files must do on this machine: decode
  every column and hash each event's link and leaf, in C on both cores,
  with no checks and no process start: what bounds the command's ratio;
- the independent auditor script of docs/integrity.md;
- the Merkle tree (RFC 9162) over the same events: its root from the leaf
  hashes through the compact tree (one by one, and in seal-sized batches),
  leaf hashing plus the tree from the canonical bytes, the reusable levels
  for many proofs, and inclusion / consistency proofs made and checked per
  second, each against the same floor or a bare-hashing floor.

Medians of several runs.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import print_table  # noqa: E402

from auditlake.collector.ingest import inbox  # noqa: E402
from auditlake.collector.ingest.receive import WIRE_SCHEMA  # noqa: E402
from auditlake.collector.integrity.chain import canonical_sql  # noqa: E402
from auditlake.collector.integrity.merkle import (  # noqa: E402
    CompactTree,
    MerkleLevels,
    hash_leaves,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from auditlake.collector.integrity.verify import parallel, verify_lake  # noqa: E402
from auditlake.collector.storage.datadir import DataDir  # noqa: E402

DAYS = 10
CHUNK = 250_000


def wire_table(n: int, start_us: int, seed: int) -> pa.Table:
    """``n`` plausible events (WIRE columns) spread over DAYS days."""
    rng = random.Random(seed)
    span = DAYS * 86_400 * 1_000_000
    actions = ["read", "read", "update", "create", "delete", "login"]
    cols: dict[str, list[str]] = {
        "id": [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)],
        "tenant_id": [f"tenant-{rng.randrange(50)}" for _ in range(n)],
        "user_id": [f"user-{rng.randrange(5000)}" for _ in range(n)],
        "action": [actions[i % len(actions)] for i in range(n)],
        "resource_type": ["document"] * n,
        "resource_id": [f"doc-{rng.randrange(100_000)}" for _ in range(n)],
        "changes": ['{"title":{"before":"draft","after":"final"}}'] * n,
        "ip_address": [f"10.0.{i % 256}.{(i // 256) % 256}" for i in range(n)],
        "user_agent": ["Mozilla/5.0 (X11; Linux x86_64) bench/1.0"] * n,
        "outcome": ["success"] * n, "reason": [""] * n, "service": ["api"] * n,
        "trace_id": [f"{rng.getrandbits(128):032x}" for _ in range(n)],
        "span_id": [f"{rng.getrandbits(64):016x}" for _ in range(n)],
        "request_id": [f"req-{i}" for i in range(n)], "metadata": ["{}"] * n,
    }
    created = sorted(start_us + rng.randrange(span) for _ in range(n))
    arrays = [pa.array(cols[f.name], pa.string()) for f in WIRE_SCHEMA if f.name != "created_at"]
    arrays.append(pa.array(created, pa.int64()).cast(WIRE_SCHEMA.field("created_at").type))
    return pa.Table.from_arrays(arrays, schema=WIRE_SCHEMA)


def make_lake(root: Path, n: int) -> DataDir:
    data = DataDir(root)
    data.create()
    start = int((time.time() - (DAYS + 2) * 86_400) * 1_000_000)
    for k in range(0, n, CHUNK):
        inbox.submit(data, wire_table(min(CHUNK, n - k), start, seed=k), imported=True)
    return data


def median_time(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: Leaves per extend() call in the batched tree row: about one seal's worth.
SEAL_BATCH = 10_000


def merkle_rows(rows: list[bytes], t_floor: float, runs: int, quick: bool) -> list[tuple[str, str, str, str]]:
    """Merkle rows over the lake's canonical bytes (``rows``, in chain order),
    next to the SHA-256 chain loop (``t_floor``) measured on the same bytes."""
    n = len(rows)
    leaves = hash_leaves(rows)

    def append_each() -> None:
        tree = CompactTree()
        for h in leaves:
            tree.append(h)
        tree.root()

    def extend_batches() -> None:
        tree = CompactTree()
        for k in range(0, n, SEAL_BATCH):
            tree.extend(leaves[k:k + SEAL_BATCH])
        tree.root()

    def from_bytes() -> None:
        tree = CompactTree()
        for k in range(0, n, SEAL_BATCH):
            tree.extend(hash_leaves(rows[k:k + SEAL_BATCH]))
        tree.root()

    t_append = median_time(append_each, runs)
    t_extend = median_time(extend_batches, runs)
    t_bytes = median_time(from_bytes, runs)
    t0 = time.perf_counter()
    levels = MerkleLevels(leaves)
    t_levels = time.perf_counter() - t0
    root = levels.root()

    rng = random.Random(14)
    count = 2_000 if quick else 20_000
    picks = [rng.randrange(n) for _ in range(count)]
    proofs: list[list[bytes]] = []

    def prove_all() -> None:
        proofs[:] = [levels.inclusion_proof(i) for i in picks]

    def prove_one_off() -> None:
        for i in picks[:3]:
            inclusion_proof(i, n, leaves)

    t_prove = median_time(prove_all, runs)
    t_one_off = median_time(prove_one_off, 1) / 3

    def check_all() -> None:
        for i, proof in zip(picks, proofs, strict=True):
            verify_inclusion(leaf_hash=leaves[i], index=i, size=n, proof=proof, root=root)

    def hash_floor() -> None:
        # The same node hashes in the plainest loop: what any verifier must spend.
        sha256 = hashlib.sha256
        for i, proof in zip(picks, proofs, strict=True):
            r = leaves[i]
            for p in proof:
                r = sha256(b"\x01" + p + r).digest()

    t_check = median_time(check_all, runs)
    t_check_floor = median_time(hash_floor, runs)
    mean_path = sum(map(len, proofs)) / count

    firsts = [rng.randrange(1, n) for _ in range(count // 10)]
    cproofs: list[list[bytes]] = []

    def prove_consistency() -> None:
        cproofs[:] = [levels.consistency_proof(m) for m in firsts]

    t_cprove = median_time(prove_consistency, runs)
    first_roots = [levels.root(m) for m in firsts]

    def check_consistency() -> None:
        for m, m_root, proof in zip(firsts, first_roots, cproofs, strict=True):
            verify_consistency(first_size=m, second_size=n, first_root=m_root, second_root=root, proof=proof)

    t_ccheck = median_time(check_consistency, runs)

    def rate(t: float) -> str:
        return f"{n / t:,.0f} events/s"

    def per_s(k: int, t: float, what: str) -> str:
        return f"{k / t:,.0f} {what}/s"

    size = f"{n // 1000:,}k-leaf tree"
    return [
        (f"Merkle root ({size}): leaf hashes appended one by one to the compact tree vs SHA-256 chain loop",
         rate(t_append), rate(t_floor), f"{t_floor / t_append:.2f}x"),
        (f"Merkle root ({size}): leaf hashes extended in batches of {SEAL_BATCH:,} (a seal's worth) "
         "vs SHA-256 chain loop", rate(t_extend), rate(t_floor), f"{t_floor / t_extend:.2f}x"),
        (f"Merkle root ({size}) from the canonical bytes: leaf hashing + tree, what a verifier adds to the chain, "
         "vs SHA-256 chain loop", rate(t_bytes), rate(t_floor), f"{t_floor / t_bytes:.2f}x"),
        (f"Merkle levels for many proofs ({size}, built once; 64 bytes/leaf) vs SHA-256 chain loop",
         rate(t_levels), rate(t_floor), f"{t_floor / t_levels:.2f}x"),
        (f"inclusion proof generation ({size}, reusable levels; {count:,} random leaves) "
         "vs one-off proof over the leaf hashes (no levels)", per_s(count, t_prove, "proofs"),
         f"{1 / t_one_off:,.1f} proofs/s ({t_one_off:.2f} s each)", f"{t_one_off * count / t_prove:,.0f}x"),
        (f"inclusion proof verification ({size}, {mean_path:.1f} hashes a proof; RFC 9162 2.1.3.2) "
         "vs the same node hashes in a bare SHA-256 loop", per_s(count, t_check, "proofs"),
         per_s(count, t_check_floor, "proofs"), f"{t_check_floor / t_check:.2f}x"),
        (f"consistency proofs ({size}, {len(firsts):,} random earlier sizes): generation from the levels; "
         "verification (RFC 9162 2.1.4.2)", per_s(len(firsts), t_cprove, "proofs"),
         f"verify: {per_s(len(firsts), t_ccheck, 'proofs')}", "-"),
    ]


def bench_rows(quick: bool = False) -> list[tuple[str, str, str, str]]:
    n = 200_000 if quick else 1_000_000
    runs = 3
    with tempfile.TemporaryDirectory(prefix="auditlake-verify-bench-") as tmp:
        t0 = time.perf_counter()
        data = make_lake(Path(tmp) / "data", n)
        made = time.perf_counter() - t0
        files = sorted(str(p) for p in data.events.glob("date=*/*.parquet"))
        print(f"verify_bench: {n:,} events in {len(files)} files made in {made:.1f} s",
              file=sys.stderr)

        def verify() -> None:
            report = verify_lake(data)
            if not report.ok:
                raise RuntimeError(report.to_text())

        def verify_cli() -> None:
            proc = subprocess.run([sys.executable, "-m", "auditlake.collector", "verify",
                                   "--data", str(data.root), "--quiet"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"verify failed:\n{proc.stdout}\n{proc.stderr}")

        def auditor() -> None:
            proc = subprocess.run([sys.executable, str(ROOT / "docs" / "auditor_verify.py"), str(data.root),
                                   "--public-key", str(data.keys / "signing.pub.pem")],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"auditor script failed:\n{proc.stdout}")

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        canon = con.sql(f"SELECT {canonical_sql()} FROM read_parquet({files}) "
                        "ORDER BY writer_id, seq").fetchall()
        rows = [r[0] for r in canon]
        del canon

        def sha_floor() -> None:
            h = bytes(32)
            sha256 = hashlib.sha256
            for r in rows:
                h = sha256(h + r).digest()

        def duckdb_read() -> None:
            con.sql(f"SELECT * FROM read_parquet({files})").to_arrow_table()

        # One signed head at the end of each writer: every file's subtree roots are made.
        heads = {w: (n,) for (w,) in duckdb.sql(f"SELECT DISTINCT writer_id FROM read_parquet({files})").fetchall()}
        tasks = [parallel.FileTask(path=f, data=None, heads=heads) for f in files]

        def rehash(native: bool) -> None:
            saved = parallel.NATIVE
            parallel.NATIVE = native
            try:
                results = parallel.Rehash(tasks, n).results(lambda rows: None)
            finally:
                parallel.NATIVE = saved
            if not all(r.links_ok for r in results):
                raise RuntimeError("the re-hash did not confirm the bench lake")

        def decode_and_hash() -> None:
            # What any verifier of these files must do, and nothing else:
            # decode every column, hash each event's link and leaf (C, both cores).
            def one(task: parallel.FileTask) -> None:
                table = parallel._read(task)
                assert table is not None
                parallel._native_check(table, None, True)
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(one, tasks))

        def cli_start() -> None:
            subprocess.run([sys.executable, "-m", "auditlake.collector", "verify", "--help"],
                           capture_output=True, check=True)

        t_verify = median_time(verify, runs)
        t_floor = median_time(sha_floor, runs)
        t_read = median_time(duckdb_read, runs)
        t_cli = median_time(verify_cli, runs)
        t_start = median_time(cli_start, runs)
        os.environ["AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS"] = "0"  # workers for these rows, whatever the size
        t_c = median_time(lambda: rehash(True), runs) if parallel.NATIVE else float("nan")
        t_py = median_time(lambda: rehash(False), runs)
        t_bound = median_time(decode_and_hash, runs) if parallel.NATIVE else float("nan")
        del os.environ["AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS"]
        t_auditor = median_time(auditor, 1)
        con.close()
        merkle = merkle_rows(rows, t_floor, runs, quick)

    def rate(t: float) -> str:
        return f"{n / t:,.0f} events/s"

    label = f"{n // 1000:,}k events, {len(files)} files"
    return [
        (f"verify ({label}) vs SHA-256 chain loop alone", rate(t_verify),
         rate(t_floor), f"{t_floor / t_verify:.2f}x"),
        (f"verify ({label}) vs DuckDB reading every column", rate(t_verify),
         rate(t_read), f"{t_read / t_verify:.2f}x"),
        (f"`auditlake verify` command, process start included ({label}) vs SHA-256 loop (goal >= 0.7x)",
         rate(t_cli), rate(t_floor), f"{t_floor / t_cli:.2f}x"),
        ("`auditlake verify` process start: `verify --help` (interpreter, imports, parser), s",
         f"{t_start:.2f}", "-", "-"),
        (f"re-hash file by file ({label}; read, encode, link, leaf, subtree roots): C loop on 2 threads "
         "vs the Python loop on 2 forked processes", rate(t_c), rate(t_py), f"{t_py / t_c:.2f}x"),
        (f"the least a verifier of these files does ({label}): decode every column + link and leaf SHA-256 "
         "per event, C on both cores, no checks, no process start, vs SHA-256 chain loop",
         rate(t_bound), rate(t_floor), f"{t_floor / t_bound:.2f}x"),
        (f"independent auditor script ({label}) vs SHA-256 chain loop alone", rate(t_auditor),
         rate(t_floor), f"{t_floor / t_auditor:.2f}x"),
        *merkle,
    ]


if __name__ == "__main__":
    print_table(bench_rows(quick="--quick" in sys.argv))
