"""docs/integrity.md section 8 is enough to check a proof file: its two
Python snippets (the signature with openssl, the audit path by RFC 9162
2.1.3.2), run as written beside the encoding rule the section states,
accept a real proof and refuse a changed one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from auditlake.collector.integrity.writer_tree import LakeTrees
from auditlake.collector.storage.datadir import DataDir

sys.path.insert(0, str(Path(__file__).parent))
from test_seal import _queue, _sealer  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrity.md"


def _section_8_snippets() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## 8. Merkle trees and proofs"):]
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", section, re.S)]


def _check_by_the_doc(proof: dict[str, Any], folder: Path, pem: Path) -> bool:
    """What an outside verifier writes from section 8 alone."""
    signature_snippet, path_snippet = _section_8_snippets()
    (folder / "proof.json").write_text(json.dumps(proof))
    shutil.copy(pem, folder / "writer.pem")
    scope: dict[str, Any] = {}
    exec(path_snippet, scope)  # defines root_from_inclusion
    signed: dict[str, Any] = {}
    cwd = Path.cwd()
    try:
        os.chdir(folder)
        exec(signature_snippet, signed)
    finally:
        os.chdir(cwd)
    checkpoint = proof["checkpoint"]
    fields = proof["event"]
    encoding = ",".join(f"{len(text.encode())},{text}" for _, text in fields).encode()
    leaf = hashlib.sha256(b"\x00" + encoding).digest()
    try:
        root = scope["root_from_inclusion"](proof["leaf_index"], proof["tree_size"], leaf,
                                            [bytes.fromhex(h) for h in proof["audit_path"]])
    except ValueError:
        return False
    return bool(signed["ok"]) and checkpoint["version"] == 2 \
        and dict(fields)["seq"] == str(proof["leaf_index"] + 1) \
        and proof["tree_size"] == checkpoint["tree_size"] and root.hex() == checkpoint["tree_root"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_section_8_checks_a_real_proof_and_refuses_a_changed_one(tmp_path: Path) -> None:
    assert subprocess.run(["openssl", "version"], capture_output=True).returncode == 0
    sealer = _sealer(tmp_path / "data", max_rows=250)
    ids = _queue(sealer, 3)
    sealer.seal_pending()
    sealer.stop()
    trees = LakeTrees(DataDir(tmp_path / "data"))
    pem = tmp_path / "data" / "keys" / "signing.pub.pem"
    for event_id in (ids[0], ids[400], ids[-1]):
        proof = trees.inclusion(event_id)
        assert _check_by_the_doc(proof, tmp_path, pem)
    changed = json.loads(json.dumps(proof))
    changed["event"] = [[n, "x" if n == "action" else t] for n, t in changed["event"]]
    assert not _check_by_the_doc(changed, tmp_path, pem)
    forged = json.loads(json.dumps(proof))
    forged["checkpoint"]["tree_root"] = "0" * 64
    assert not _check_by_the_doc(forged, tmp_path, pem)
