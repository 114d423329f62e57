"""`auditlake verify --expect-head FILE`: a lake rolled back, or rewritten
and re-signed, together with its checkpoints is self-consistent; only a head
recorded earlier shows it.  The head may come from a checkpoint file, a
`verify --format json` report or an `auditlake monitor` state file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.verify import verify_lake
from tests.conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent))
from test_seal import _queue, _sealer  # noqa: E402


def _seal(root: Path, batches: int, start: int) -> None:
    sealer = _sealer(root, max_rows=250)
    _queue(sealer, batches, start=start)
    sealer.seal_pending()
    sealer.stop()


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    """A lake of 2 seals (snapshot kept), then 2 more; the heads recorded after them."""
    data = tmp_path / "data"
    _seal(data, 2, 0)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(data, snapshot)
    _seal(data, 2, 2)
    heads = tmp_path / "heads"
    heads.mkdir()
    report = run_cli("verify", "--format", "json", "--quiet", data=data)
    (heads / "report.json").write_text(report.stdout)
    newest = sorted((data / "checkpoints").glob("*/*.json"))[-1]
    shutil.copy(newest, heads / "checkpoint.json")
    key = data / "keys" / "signing.pub.pem"
    run_cli("monitor", "--state", str(heads / "monitor.json"), "--public-key", str(key), data=data)
    return data, snapshot, {p.stem: p for p in heads.iterdir()}


def test_a_lake_that_passes_through_the_recorded_heads_verifies(recorded: tuple[Path, Path, dict[str, Path]]) -> None:
    data, _, heads = recorded
    _seal(data, 1, 4)  # the lake only grew since
    report = verify_lake(data, expect_heads=list(heads.values()))
    assert report.ok, report.to_text()


@pytest.mark.parametrize("kind", ["report", "checkpoint", "monitor"])
def test_a_rolled_back_lake_fails(recorded: tuple[Path, Path, dict[str, Path]], kind: str) -> None:
    data, snapshot, heads = recorded
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)
    assert verify_lake(data).ok  # self-consistent on its own
    result = run_cli("verify", "--expect-head", str(heads[kind]), "--quiet", data=data, check=False)
    assert result.returncode == 1
    assert "expected_head" in result.stdout and "rolled back" in result.stdout, result.stdout


def test_a_rewritten_and_resigned_lake_fails(recorded: tuple[Path, Path, dict[str, Path]]) -> None:
    data, snapshot, heads = recorded
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)
    _seal(data, 3, 100)  # other events, signed with the real key, past the recorded seq
    assert verify_lake(data).ok
    for kind in ("report", "checkpoint"):
        report = verify_lake(data, expect_heads=[heads[kind]])
        kinds = {p.kind for p in report.problems}
        assert kinds == {"expected_head"}, report.to_text()
        if kind == "checkpoint":  # the tree head is checked too
            assert any("tree head recorded" in p.message for p in report.problems)


def test_a_file_without_a_head_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    _seal(tmp_path / "data", 1, 0)
    with pytest.raises(ConfigError, match="no head in it"):
        verify_lake(tmp_path / "data", expect_heads=[tmp_path / "x.json"])
    result = run_cli("verify", "--expect-head", str(tmp_path / "x.json"), data=tmp_path / "data", check=False)
    assert result.returncode == 2 and "no head in it" in result.stderr
