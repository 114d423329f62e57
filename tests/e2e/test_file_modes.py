"""The data directory is the collector's alone, whatever the caller's umask:
the WAL holds event text, the lake and exports hold everything."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import run_cli
from tests.wire_client import WireClient, make_event


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    out["."] = stat.S_IMODE(root.stat().st_mode)
    return out


def _fill(collector) -> None:  # noqa: ANN001
    key = collector.api_key("acme")
    client = WireClient(collector.endpoint)
    try:
        client.export([make_event(i, resource_id=f"m-{i}") for i in range(5)], key=key)
    finally:
        client.close()
    assert collector.wait_for_count(5) == 5


def test_every_file_is_private_under_a_permissive_umask(collector_factory) -> None:  # noqa: ANN001
    old = os.umask(0o022)  # the collector inherits it, as from a login shell
    try:
        c = collector_factory()
        _fill(c)
    finally:
        os.umask(old)
    modes = _modes(c.data)
    assert any(k.startswith("wal/") for k in modes) and any(k.endswith(".parquet") for k in modes)
    loose = {k: f"{m:04o}" for k, m in modes.items() if m & 0o077}
    assert not loose, f"readable by group or others: {loose}"


def test_a_group_can_be_let_in_but_never_others(collector_factory) -> None:  # noqa: ANN001
    c = collector_factory(env={"AUDITLAKE_UMASK": "027"})
    _fill(c)
    modes = _modes(c.data)
    assert not {k: m for k, m in modes.items() if m & 0o007}
    assert any(m & 0o040 for k, m in modes.items() if k.endswith(".parquet"))


def test_a_loose_data_dir_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "loose"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    proc = run_cli("keys", "create", "--tenant", "acme", data=data)
    assert "other local users can read audit data" in proc.stderr and str(data) in proc.stderr
