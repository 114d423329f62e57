"""Checkpoints: each seal's chain head and the files it wrote, signed with
Ed25519 and kept apart from the lake (DIR/checkpoints/, plus an optional mirror).

Each checkpoint store (a :class:`~auditlake.collector.storage.store.Store`,
or a directory taken as a local one) holds ``<writer>/<seal>-<kind>.json``;
a checkpoint is created once and never overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditlake.collector.integrity.signing import SigningKey
from auditlake.collector.storage.store import LocalStore, Store

CHECKPOINT_VERSION = 1


def canonical_json(body: dict[str, Any]) -> bytes:
    """The signed bytes: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class FileEntry:
    """A lake file as recorded in a checkpoint (path relative to the lake root)."""

    path: str
    sha256: str
    bytes: int
    rows: int
    first_seq: int
    last_seq: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "rows": self.rows,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileEntry:
        return cls(d["path"], d["sha256"], int(d["bytes"]), int(d["rows"]),
                   int(d["first_seq"]), int(d["last_seq"]))


@dataclass(frozen=True)
class ChainCheckpoint:
    """A signed statement: writer W's chain reached ``seq`` with ``chain_hash``
    at ``time``, and this seal added ``files`` (and, for a compaction or a
    retention step, removed ``removed``)."""

    writer_id: str
    seal: int
    seq: int
    chain_hash: str
    time: str
    kind: str = "seal"
    files: tuple[FileEntry, ...] = ()
    removed: tuple[FileEntry, ...] = ()
    previous: str = ""  # sha256 of the previous checkpoint's signed bytes
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The signed content."""
        return {
            "version": CHECKPOINT_VERSION,
            "writer_id": self.writer_id,
            "seal": self.seal,
            "seq": self.seq,
            "chain_hash": self.chain_hash,
            "time": self.time,
            "kind": self.kind,
            "files": [f.to_json() for f in self.files],
            "removed": [f.to_json() for f in self.removed],
            "previous": self.previous,
            "extra": self.extra,
        }

    def digest(self) -> str:
        """sha256 of the signed bytes (what the next checkpoint's ``previous`` holds)."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def file_name(self) -> str:
        return f"{self.seal:010d}-{self.kind}.json"

    def key(self) -> str:
        """Its key in a checkpoint store: ``<writer>/<seal>-<kind>.json``."""
        return f"{self.writer_id}/{self.file_name()}"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ChainCheckpoint:
        return cls(
            writer_id=body["writer_id"],
            seal=int(body["seal"]),
            seq=int(body["seq"]),
            chain_hash=body["chain_hash"],
            time=body["time"],
            kind=body.get("kind", "seal"),
            files=tuple(FileEntry.from_json(f) for f in body.get("files", [])),
            removed=tuple(FileEntry.from_json(f) for f in body.get("removed", [])),
            previous=body.get("previous", ""),
            extra=dict(body.get("extra", {})),
        )


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint as read from disk, with its signature (checked or not)."""

    checkpoint: ChainCheckpoint
    signature: bytes
    path: Path

    def verify(self, public: Ed25519PublicKey) -> bool:
        """True when the signature matches the body and key."""
        try:
            public.verify(self.signature, canonical_json(self.checkpoint.body()))
        except InvalidSignature:
            return False
        return True


def checkpoint_store(location: Store | Path, name: str = "checkpoints") -> Store:
    """A checkpoint store: ``location`` itself, or a local store over a directory."""
    return location if isinstance(location, Store) else LocalStore(location, name)


def write_checkpoint(
    checkpoint: ChainCheckpoint, key: SigningKey, locations: Iterable[Store | Path]
) -> None:
    """Sign and durably write ``checkpoint`` to each store (the primary
    first, then mirrors; a directory is taken as a local store), under
    ``<writer>/``.  Idempotent: writing it again where the same signed bytes
    are stored is harmless; other bytes under its name raise
    ``ObjectExistsError`` (a checkpoint is never overwritten)."""
    body = checkpoint.body()
    doc = dict(body)
    doc["signature"] = base64.b64encode(key.sign(canonical_json(body))).decode()
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    final = checkpoint.key()
    # The temporary name keeps the writer folder's ``*.json`` glob clean.
    temp = final[: -len(".json")] + ".tmp"
    for location in locations:
        store = checkpoint_store(location)
        store.publish(store.stage(final, data, temp_key=temp))


def read_checkpoints(root: Store | Path, writer_id: str | None = None) -> list[SignedCheckpoint]:
    """Every checkpoint in the store ``root`` (a directory is taken as a local
    store; all writers, or one), in seal order.  Unreadable files raise
    ValueError naming the file."""
    store = checkpoint_store(root)
    out: list[SignedCheckpoint] = []
    for obj in store.list(writer_id or ""):
        folder, _, name = obj.key.rpartition("/")
        # <writer>/<name>.json only (not hidden), as the folder's *.json glob
        if not folder or "/" in folder or name.startswith(".") or not name.endswith(".json"):
            continue
        path = Path(store.path(obj.key))
        try:
            doc = json.loads(store.read(obj.key))
            sig = base64.b64decode(doc.pop("signature"))
            out.append(SignedCheckpoint(ChainCheckpoint.from_body(doc), sig, path))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"checkpoint {path} is unreadable: {exc}") from exc
    out.sort(key=lambda s: (s.checkpoint.writer_id, s.checkpoint.seal))
    return out
