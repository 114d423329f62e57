"""``verify --expect-head FILE``: heads recorded earlier that the lake must
still pass through.

A lake rolled back together with its checkpoints (and mirror) is
self-consistent; only a head recorded before shows it.  FILE is what an
auditor kept: a signed checkpoint (as stored, or from a proof file), the
state file of ``auditlake monitor``, or a ``verify --format json`` report.
Each head names a writer, a seq and its chain hash, and a version-2
checkpoint also its tree size and root.  The lake must hold that writer's
chain at least that far, the stored event at that seq must carry that hash,
and (on a whole-lake verify) the tree of the stored events at that size
must have that root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.verify.checkpoints import ByWriter
from auditlake.collector.integrity.verify.listing import ExpectedFiles
from auditlake.collector.integrity.verify.report import VerifyReport


@dataclass(frozen=True)
class ExpectedHead:
    """A head recorded earlier: writer, seq, chain hash (and tree head), and where it came from."""

    writer_id: str
    seq: int
    chain_hash: str
    source: str
    tree_size: int | None = None
    tree_root: str = ""


def _from_checkpoint(doc: dict[str, Any], source: str) -> ExpectedHead:
    size = doc.get("tree_size")
    return ExpectedHead(str(doc["writer_id"]), int(doc["seq"]), str(doc["chain_hash"]), source,
                        None if size is None else int(size), str(doc.get("tree_root", "")))


def read_expected_heads(paths: list[Path | str]) -> list[ExpectedHead]:
    """The heads in each file; ConfigError names a file that holds none."""
    heads: list[ExpectedHead] = []
    for p in paths:
        path = Path(p)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--expect-head {path}: cannot read it: {exc}") from exc
        found: list[ExpectedHead] = []
        try:
            if isinstance(doc, dict) and "writer_id" in doc and "chain_hash" in doc:
                found.append(_from_checkpoint(doc, str(path)))          # a checkpoint
            elif isinstance(doc, dict) and isinstance(doc.get("checkpoint"), dict):
                found.append(_from_checkpoint(doc["checkpoint"], str(path)))  # an inclusion proof
            elif isinstance(doc, dict) and isinstance(doc.get("heads"), dict):  # monitor state
                found += [_from_checkpoint(h["checkpoint"], f"{path} ({w})") for w, h in doc["heads"].items()]
            elif isinstance(doc, dict) and isinstance(doc.get("writers"), list):  # verify report
                found += [ExpectedHead(str(w["writer_id"]), int(w["head_seq"]), str(w["head_hash"]),
                                       f"{path} ({w['writer_id']})")
                          for w in doc["writers"] if w.get("head_seq")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"--expect-head {path}: not a checkpoint, monitor state or verify report "
                              f"({exc})") from exc
        if not found:
            raise ConfigError(f"--expect-head {path}: no head in it (a checkpoint, an `auditlake monitor` "
                              "state file or a `verify --format json` report)")
        heads += found
    return heads


def check_expected_heads(con: duckdb.DuckDBPyConnection, heads: list[ExpectedHead], writers: ByWriter,
                         expected: ExpectedFiles, report: VerifyReport) -> None:
    """Each expected head against the signed heads and the stored events."""
    for head in heads:
        seals = writers.get(head.writer_id, {})
        newest = max((s.checkpoint.seq for s in seals.values()), default=0)
        where = f"the head recorded in {head.source} (writer {head.writer_id} seq {head.seq})"
        if newest < head.seq:
            report.add("expected_head", f"{where}: the lake's newest signed head is seq {newest}: "
                       "the lake was rolled back (or truncated with its checkpoints)",
                       seq=head.seq, writer_id=head.writer_id)
            continue
        stored = con.execute("SELECT chain_hash, _file FROM idx WHERE writer_id = ? AND seq = ?",
                             [head.writer_id, head.seq]).fetchall()
        expired_at = {b: h for a, b, h in expected.expired.get(head.writer_id, []) if a <= head.seq <= b}
        if not stored:
            if head.seq in expired_at and expired_at[head.seq] == head.chain_hash:
                continue  # expired by policy, and the expire checkpoint recorded the same hash
            if any(a <= head.seq <= b for a, b, _ in expected.expired.get(head.writer_id, [])):
                continue  # expired by policy: its hash is beyond reach (the link after the range is checked)
            report.add("expected_head", f"{where}: no stored event at that seq", seq=head.seq,
                       writer_id=head.writer_id)
            continue
        for chain_hash, file in stored:
            if chain_hash != head.chain_hash:
                report.add("expected_head", f"{where}: the stored event has chain_hash {chain_hash[:16]}…, "
                           f"not {head.chain_hash[:16]}…: history up to it was rewritten",
                           file=file, seq=head.seq, writer_id=head.writer_id, column="chain_hash")
