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

#: Version 2 signs the writer's Merkle tree head (``tree_size``,
#: ``tree_root``) and its signed bytes are RFC 8785 (JCS); version 1
#: checkpoints, written before the tree existed, keep their own bytes.
CHECKPOINT_VERSION = 2

#: JCS numbers are IEEE doubles: integers beyond this lose precision.
_JCS_MAX_INT = 2**53 - 1


def _check_jcs_domain(value: object, where: str = "body") -> None:
    """Checkpoint bodies hold objects, arrays, strings, integers, booleans
    and null only; then Python's sorted, compact, UTF-8 JSON is exactly the
    RFC 8785 serialisation (floats, whose JCS form needs ECMAScript number
    formatting, are refused rather than approximated)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: a key must be a string, not {key!r}")
            if any(ord(ch) > 0xFFFF for ch in key):
                # RFC 8785 sorts keys by UTF-16 code units; Python by code points
                raise TypeError(f"{where}: key {key!r} is outside the Basic Multilingual Plane")
            _check_jcs_domain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_jcs_domain(item, f"{where}[{i}]")
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if abs(value) > _JCS_MAX_INT:
            raise TypeError(f"{where}: integer {value} is beyond 2**53 - 1")
    else:
        raise TypeError(f"{where}: {type(value).__name__} has no place in a checkpoint body")


def canonical_json(body: dict[str, Any]) -> bytes:
    """The signed bytes of a checkpoint ``body``.

    Version 2 (and anything that is not a version-1 checkpoint, e.g. an
    export manifest): RFC 8785 JSON Canonicalization Scheme, i.e. keys
    sorted, no whitespace, UTF-8, for the value domain above.  Version 1:
    the same but with every non-ASCII character escaped as ``\\uXXXX``
    (``json.dumps(..., ensure_ascii=True)``), as those checkpoints were signed."""
    if body.get("version") == 1:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    _check_jcs_domain(body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


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
    #: The writer's Merkle tree over events 1..``seq`` (RFC 9162): its size
    #: (always ``seq``) and root in hex; None in a version-1 checkpoint.
    tree_size: int | None = None
    tree_root: str = ""

    @property
    def version(self) -> int:
        """2 when the checkpoint signs a tree head, else 1 (written before trees)."""
        return 1 if self.tree_size is None else CHECKPOINT_VERSION

    def body(self) -> dict[str, Any]:
        """The signed content."""
        body: dict[str, Any] = {
            "version": self.version,
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
        if self.tree_size is not None:
            body["tree_size"] = self.tree_size
            body["tree_root"] = self.tree_root
        return body

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
            tree_size=None if body.get("tree_size") is None else int(body["tree_size"]),
            tree_root=str(body.get("tree_root", "")),
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


#: The key of an ``expire`` checkpoint's ``extra`` that lists the subtrees
#: kept of the events it expired: ``[{"writer", "start", "size", "hash"}]``
#: (docs/integrity.md section 4, docs/retention.md "Proofs after expiry").
SUBTREES_KEY = "subtrees"

#: Kept subtrees by writer: first leaf (0-based) -> (size, root).
KeptSubtrees = dict[str, dict[int, tuple[int, bytes]]]


def read_kept_subtrees(checkpoint: ChainCheckpoint, into: KeptSubtrees) -> None:
    """Add ``checkpoint``'s kept subtrees (an ``expire`` checkpoint's
    ``extra.subtrees``) to ``into``; ValueError saying what is malformed."""
    items = checkpoint.extra.get(SUBTREES_KEY, [])
    try:
        if not isinstance(items, list):
            raise TypeError("not a list")
        for item in items:
            writer, start, size = str(item["writer"]), item["start"], item["size"]
            if type(start) is not int or type(size) is not int or start < 0 or size < 1 or size & (size - 1) \
                    or start % size:
                raise ValueError(f"{start!r}, {size!r} is not a complete aligned subtree")
            text = item["hash"]
            if not isinstance(text, str) or len(text) != 64 or text != text.lower():
                raise ValueError(f"{text!r:.80} is not 64 lowercase hex digits")
            root = bytes.fromhex(text)
            if into.setdefault(writer, {}).setdefault(start, (size, root)) != (size, root):
                raise ValueError(f"writer {writer}'s subtree at leaf {start} is kept twice, differently")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


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
