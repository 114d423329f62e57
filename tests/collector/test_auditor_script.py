"""docs/integrity.md is precise enough to re-verify a lake without auditlake:
docs/auditor_verify.py (stdlib + DuckDB + openssl, importing nothing from
auditlake) follows it and must agree with the lake's chain_hash values and
signed checkpoint heads, and must reject a tampered lake."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from auditlake.collector.integrity.chain import CANONICAL_FIELDS
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.lake.files import PARQUET_OPTIONS
from auditlake.collector.storage.datadir import DataDir
from tests.collector.synthetic_lake import SyntheticWriter, event_rows
from tests.conftest import CollectorProcess
from tests.wire_client import WireClient, make_event

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "auditor_verify.py"
DOC = ROOT / "docs" / "integrity.md"
DAY_US = 86_400 * 1_000_000


def run_auditor(data: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the script in a fresh interpreter where importing auditlake fails."""
    code = ("import runpy, sys; sys.modules['auditlake'] = None; "
            f"sys.argv = {[str(SCRIPT), str(data), *args]!r}; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def signed_heads(data: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for path in sorted((data / "checkpoints").glob("*/*.json")):
        doc = json.loads(path.read_text())
        out[doc["writer_id"]] = (doc["seq"], doc["chain_hash"])
    return out


def stored_hashes(data: Path) -> dict[int, str]:
    files = sorted((data / "lake/events").glob("date=*/*.parquet"))
    t = pa.concat_tables([pq.read_table(f, columns=["seq", "chain_hash"]) for f in files])
    return dict(zip(t.column("seq").to_pylist(), t.column("chain_hash").to_pylist(), strict=True))


def test_script_is_in_the_doc_verbatim_and_hashes_the_documented_fields() -> None:
    script = SCRIPT.read_text()
    assert script.rstrip("\n") in DOC.read_text()
    imports = [line for line in script.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert imports and not [line for line in imports if "auditlake" in line]
    spec = importlib.util.spec_from_file_location("auditor_verify", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert tuple(name for name, _ in module.FIELDS) == CANONICAL_FIELDS
    for name in CANONICAL_FIELDS:
        assert f"| {name} |" in DOC.read_text()


def test_independent_script_agrees_with_a_real_collectors_lake(
        collector_factory: Callable[..., CollectorProcess], tmp_path: Path) -> None:
    collector = collector_factory()
    key = collector.api_key("acme")
    client = WireClient(collector.endpoint)
    now = int(time.time() * 1_000_000)
    for _ in range(3):
        events = [make_event(i, created_at_us=now - (i % 3) * DAY_US - i,
                             user_id=f"dr-ü-{i}", reason="a,b" if i % 4 == 0 else "")
                  for i in range(60)]
        assert client.export(events, key).accepted == 60
        time.sleep(0.3)  # usually a seal apiece; stop() seals whatever is left
    client.close()
    assert collector.stop() == 0
    data = collector.data
    pem = tmp_path / "auditor.pem"
    pem.write_bytes((data / "keys" / "signing.pub.pem").read_bytes())

    code, out = run_auditor(data, "--public-key", str(pem))
    assert code == 0, out["errors"]
    [(writer, summary)] = out["writers"].items()
    head_seq, head_hash = signed_heads(data)[writer]
    stored = stored_hashes(data)
    assert summary["events"] == len(stored) == 180 == head_seq
    assert summary["last_hash"] == stored[180] == head_hash
    assert summary["signatures"] == "checked with openssl"
    assert summary["mismatches"] == 0
    # The same verdict and head as auditlake's own verifier.
    report = verify_lake(data)
    assert report.ok and report.writers[0].head_hash == summary["last_hash"]

    # And it is not a rubber stamp: one edited value is found.
    tampered = tmp_path / "tampered"
    shutil.copytree(data, tampered, ignore=shutil.ignore_patterns(".lock"))
    target = sorted((tampered / "lake/events").glob("date=*/*.parquet"))[0]
    t = pq.read_table(target)
    users = t.column("user_id").to_pylist()
    users[0] = "mallory"
    i = t.schema.get_field_index("user_id")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(users, pa.string())), target,
                   **PARQUET_OPTIONS)  # type: ignore[arg-type]
    code, out = run_auditor(tampered, "--public-key", str(pem))
    seq = t.column("seq")[0].as_py()
    assert code == 1
    assert f"{writer}: seq {seq}: computed hash differs from stored" in out["errors"]
    assert any("sha256 differs" in e for e in out["errors"])


def test_script_follows_compaction_move_and_expiry(tmp_path: Path) -> None:
    from tests.collector.test_verify import cold, compact, expire, move_cold

    w = SyntheticWriter(DataDir(tmp_path / "data"))
    for s in range(3):
        w.seal(event_rows(20, start=20 * s))
    compact(w, "2026-03-02")
    moved = move_cold(w, tmp_path / "cold", "2026-03-01")
    expire(w, tmp_path / "cold", moved)
    w.seal(event_rows(7, start=100))
    assert verify_lake(w.data, cold_tier=cold(tmp_path / "cold")).ok
    code, out = run_auditor(w.data.root, "--public-key", str(w.data.keys / "signing.pub.pem"),
                            "--cold", str(tmp_path / "cold"))
    assert code == 0, out["errors"]
    [summary] = out["writers"].values()
    assert summary["events"] == 67 - 20  # the expired day is gone, its gaps explained
    assert (summary["last_seq"], summary["last_hash"]) == (w.seq, w.chain_hash)
