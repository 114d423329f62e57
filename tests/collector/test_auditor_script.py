"""docs/integrity.md is precise enough to re-verify a lake without auditlake:
docs/auditor_verify.py (stdlib + DuckDB + openssl, importing nothing from
auditlake) follows it and must agree with the lake's chain_hash values and
signed checkpoint heads, and must reject a tampered lake."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auditlake.collector.integrity.chain import CANONICAL_FIELDS, canonical_rows, chain_link
from auditlake.collector.integrity.verify import verify_lake
from auditlake.collector.lake.files import PARQUET_OPTIONS
from auditlake.collector.storage.datadir import DataDir
from tests.collector.synthetic_lake import SyntheticWriter, event_rows
from tests.conftest import CollectorProcess, run_cli
from tests.wire_client import WireClient, make_event

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "auditor_verify.py"
DOC = ROOT / "docs" / "integrity.md"
DAY_US = 86_400 * 1_000_000


def run_auditor(data: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run the script in a fresh interpreter where importing auditlake fails
    (``env``: the whole environment, e.g. a PATH without openssl)."""
    code = ("import runpy, sys; sys.modules['auditlake'] = None; "
            f"sys.argv = {[str(SCRIPT), str(data), *args]!r}; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
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


# -- the holes an outside auditor found: the recipe must fail closed ----------------------


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real collector's data dir: 180 events over three days in three seals."""
    root = tmp_path_factory.mktemp("auditor")
    collector = CollectorProcess(root / "data")
    collector.start()
    try:
        key = collector.api_key("acme")
        client = WireClient(collector.endpoint)
        now = int(time.time() * 1_000_000)
        for s in range(3):
            events = [make_event(i, created_at_us=now - (1 + i % 3) * DAY_US + i, user_id=f"dr-{s}-{i}")
                      for i in range(60)]
            assert client.export(events, key).accepted == 60
            deadline = time.monotonic() + 30
            while len(list((root / "data/checkpoints").glob("*/*.json"))) < s + 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        client.close()
    finally:
        assert collector.stop() == 0
    yield root / "data"


@pytest.fixture
def lake(sealed: Path, tmp_path: Path) -> Path:
    """This test's own copy of the data dir, with the auditor's key beside it."""
    shutil.copytree(sealed, tmp_path / "data", ignore=shutil.ignore_patterns(".lock"))
    shutil.copy(sealed / "keys" / "signing.pub.pem", tmp_path / "auditor.pem")
    return tmp_path / "data"


def key_arg(lake: Path) -> tuple[str, str]:
    return "--public-key", str(lake.parent / "auditor.pem")


def lake_files(lake: Path) -> list[Path]:
    return sorted((lake / "lake/events").glob("date=*/*.parquet"))


def test_untouched_lake_passes(lake: Path) -> None:
    code, out = run_auditor(lake, *key_arg(lake))
    assert code == 0 and out["ok"] is True, out["errors"]
    assert [w["signatures"] for w in out["writers"].values()] == ["checked with openssl"]


def test_forged_file_of_chained_events_no_checkpoint_lists_fails(lake: Path) -> None:
    # Correctly chained events after the signed head, in a new file with a
    # plausible name: readers return them, so the recipe must fail (it read
    # only the files checkpoints list, and said "ok").
    rows = pa.concat_tables([pq.read_table(f) for f in lake_files(lake)]).sort_by("seq")
    head = rows.slice(rows.num_rows - 1, 1)
    i = head.schema.get_field_index("user_id")
    forged = head.set_column(i, head.schema.field(i), pa.array(["mallory"], pa.string()))
    j = forged.schema.get_field_index("seq")
    forged = forged.set_column(j, forged.schema.field(j), pa.array([181], pa.int64()))
    h = chain_link(head.column("chain_hash")[0].as_py(), canonical_rows(forged)[0])
    k = forged.schema.get_field_index("chain_hash")
    forged = forged.set_column(k, forged.schema.field(k), pa.array([h], pa.string()))
    writer = (lake / "writer_id").read_text().strip()
    path = lake_files(lake)[-1].parent / f"part-{writer}-0000000004.parquet"
    pq.write_table(forged, path, **PARQUET_OPTIONS)  # type: ignore[arg-type]

    code, out = run_auditor(lake, *key_arg(lake))
    assert code == 1 and out["ok"] is False
    rel = path.relative_to(lake / "lake").as_posix()
    assert f"file {rel} is in the lake but no checkpoint lists it" in out["errors"]
    assert not verify_lake(lake).ok  # auditlake's own verifier agrees


def test_signatures_unchecked_is_never_ok(lake: Path, tmp_path: Path) -> None:
    # Replace every checkpoint's signature: without a key, or without
    # openssl, the recipe must not say "ok" (it used to, noting "not checked").
    for path in (lake / "checkpoints").glob("*/*.json"):
        doc = json.loads(path.read_text())
        doc["signature"] = base64.b64encode(os.urandom(64)).decode()
        path.write_text(json.dumps(doc))
    code, out = run_auditor(lake)
    assert code == 1 and out["ok"] is False
    assert any("no public key given" in e for e in out["errors"])
    bare = tmp_path / "bin"  # a PATH without openssl
    bare.mkdir()
    code, out = run_auditor(lake, *key_arg(lake), env={**os.environ, "PATH": str(bare)})
    assert code == 1 and out["ok"] is False
    assert any("openssl command is not on PATH" in e for e in out["errors"])
    code, out = run_auditor(lake, *key_arg(lake))
    assert code == 1 and sum("bad signature" in e for e in out["errors"]) == 3
    # Explicitly unsigned: the rest is checked, the verdict still is not ok.
    code, out = run_auditor(lake, "--skip-signatures")
    assert code == 3 and out["ok"] is False and out["unsigned_checks_ok"] is True
    assert [w["signatures"] for w in out["writers"].values()] == ["not checked"]


def test_skip_signatures_still_fails_on_a_changed_event(lake: Path) -> None:
    target = lake_files(lake)[0]
    t = pq.read_table(target)
    i = t.schema.get_field_index("resource_id")
    values = t.column("resource_id").to_pylist()
    values[0] = "forged"
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(values, pa.string())), target,
                   **PARQUET_OPTIONS)  # type: ignore[arg-type]
    code, out = run_auditor(lake, "--skip-signatures")
    assert code == 1 and out["unsigned_checks_ok"] is False


def test_file_compaction_removed_back_in_the_lake_fails(lake: Path) -> None:
    day = lake_files(lake)[0].parent
    before = sorted(day.glob("*.parquet"))
    assert len(before) == 3
    run_cli("compact", "--day", day.name[5:], data=lake)
    code, out = run_auditor(lake, *key_arg(lake))
    assert code == 0, out["errors"]  # replaced files wait outside events/: not the lake's
    aside = lake / "lake/_superseded/events" / day.name / (before[0].name + ".superseded")
    rel = before[0].relative_to(lake / "lake").as_posix()
    # As an older version left it (beside the live files, read by pyarrow.dataset) ...
    aside.rename(before[0].with_name(aside.name))
    code, out = run_auditor(lake, *key_arg(lake))
    assert code == 1 and any(e.startswith(f"file {rel}.superseded: checkpoint ") for e in out["errors"])
    # ... and renamed back to .parquet, where every reader counts it twice.
    before[0].with_name(aside.name).rename(before[0])
    code, out = run_auditor(lake, *key_arg(lake))
    assert code == 1
    [error] = out["errors"]
    assert error.startswith(f"file {rel}: checkpoint ") and "(compact) removed it" in error


def test_data_dir_whose_lake_and_checkpoints_were_deleted_fails(lake: Path) -> None:
    shutil.rmtree(lake / "lake/events")
    shutil.rmtree(lake / "checkpoints")
    (lake / "checkpoints").mkdir()
    code, out = run_auditor(lake, *key_arg(lake))
    writer = (lake / "writer_id").read_text().strip()
    assert code == 1 and out["ok"] is False
    assert any(e.startswith(f"{writer}: DIR/writer_id names this writer") for e in out["errors"])


def test_collector_that_never_sealed_passes(collector_factory: Callable[..., CollectorProcess],
                                            tmp_path: Path) -> None:
    collector = collector_factory()
    assert collector.stop() == 0
    code, out = run_auditor(collector.data, "--public-key", str(collector.data / "keys/signing.pub.pem"))
    assert code == 0 and out == {"ok": True, "writers": {}, "errors": []}
