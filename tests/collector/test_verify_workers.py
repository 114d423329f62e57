"""`auditlake verify` re-hashes a large lake's files on worker processes;
forced onto a small lake (AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS=0) the
workers give the same verdict as the in-process path: clean on a clean lake,
and the very same findings on a tampered one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent))
from test_seal import _queue, _sealer  # noqa: E402

FORCE = {"AUDITLAKE_VERIFY_PARALLEL_MIN_EVENTS": "0"}


def _verify(data: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("verify", "--format", "json", "--quiet", data=data, env=env, check=False)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    sealer = _sealer(tmp_path / "data", max_rows=250)
    _queue(sealer, 6)
    sealer.seal_pending()
    sealer.stop()
    return tmp_path / "data"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="workers need two cores")
def test_workers_verify_a_clean_lake_like_the_process_does(lake: Path) -> None:
    here, workers = _verify(lake), _verify(lake, FORCE)
    assert here["ok"] and workers["ok"]
    assert here["hash_workers"] == 0 and workers["hash_workers"] == 2
    assert workers["events_hashed"] == here["events_hashed"] == 1_500
    assert workers["tree_heads"] == here["tree_heads"] > 0


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="workers need two cores")
def test_workers_find_what_the_process_finds_in_a_tampered_lake(lake: Path) -> None:
    victim = sorted(lake.glob("lake/events/*/*.parquet"))[2]
    table = pq.read_table(victim)
    users = table.column("user_id").to_pylist()
    users[7] = "mallory"
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users, pa.string()))
    assert pc.sum(pc.equal(table.column("user_id"), "mallory")).as_py() == 1
    pq.write_table(table, victim)
    here, workers = _verify(lake), _verify(lake, FORCE)
    assert not here["ok"] and not workers["ok"]
    assert workers["hash_workers"] == 2  # they ran, found a failing link, and the process named it
    assert workers["problems"] == here["problems"]
    assert {p["kind"] for p in here["problems"]} >= {"changed_event", "changed_file"}
