"""Proof documents: self-contained JSON files that prove one event is in a
writer's signed log (inclusion), or that a later signed log extends an
earlier one (consistency), checkable with no lake at hand.

Owns the two document formats (docs/integrity.md section 8 specifies them
for outside implementers) and their checks.  Making a proof needs the
writer's leaf hashes (``integrity.writer_tree``); checking one needs only
the document and the writer's public key.

Imports: integrity's chain encoding, checkpoints, signing and merkle; no
lake, no storage.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from auditlake.collector.integrity.chain import CANONICAL_FIELDS, LEGACY_CANONICAL_FIELDS
from auditlake.collector.integrity.checkpoint import ChainCheckpoint, canonical_json
from auditlake.collector.integrity.merkle import (
    ProofError,
    from_hex,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)
from auditlake.collector.integrity.signing import KeyRing

INCLUSION_TYPE = "auditlake-inclusion-proof"
CONSISTENCY_TYPE = "auditlake-consistency-proof"
PROOF_VERSION = 1


def encode_fields(fields: Sequence[tuple[str, str]]) -> bytes:
    """An event's canonical encoding (docs/integrity.md section 2) from its
    fields' canonical texts, in order: ``len,text`` joined with commas."""
    return ",".join(f"{len(text.encode())},{text}" for _, text in fields).encode()


def signed_document(checkpoint: ChainCheckpoint, signature: bytes) -> dict[str, Any]:
    """A checkpoint as stored: its body and its base64 signature."""
    return {**checkpoint.body(), "signature": base64.b64encode(signature).decode()}


def inclusion_document(
    fields: Sequence[tuple[str, str]],
    path: Sequence[bytes],
    checkpoint: ChainCheckpoint,
    signature: bytes,
) -> dict[str, Any]:
    """The inclusion proof of the event whose canonical field texts are
    ``fields`` (its ``seq`` among them) in ``checkpoint``'s tree."""
    seq = int(dict(fields)["seq"])
    return {
        "type": INCLUSION_TYPE,
        "version": PROOF_VERSION,
        "writer_id": checkpoint.writer_id,
        "leaf_index": seq - 1,
        "tree_size": checkpoint.tree_size,
        "event": [[name, text] for name, text in fields],
        "audit_path": [h.hex() for h in path],
        "checkpoint": signed_document(checkpoint, signature),
    }


def consistency_document(
    first: tuple[ChainCheckpoint, bytes], second: tuple[ChainCheckpoint, bytes], path: Sequence[bytes]
) -> dict[str, Any]:
    """The proof that ``second``'s tree extends ``first``'s (same writer)."""
    return {
        "type": CONSISTENCY_TYPE,
        "version": PROOF_VERSION,
        "writer_id": first[0].writer_id,
        "first": signed_document(*first),
        "second": signed_document(*second),
        "proof": [h.hex() for h in path],
    }


@dataclass(frozen=True)
class ProofCheck:
    """What a check established: ``ok``, and each step with its result."""

    ok: bool
    steps: tuple[tuple[str, bool, str], ...]
    summary: str

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-able value."""
        return {"ok": self.ok, "summary": self.summary,
                "steps": [{"check": c, "ok": ok, "detail": d} for c, ok, d in self.steps]}


class _Steps:
    def __init__(self) -> None:
        self.steps: list[tuple[str, bool, str]] = []

    def add(self, check: str, ok: bool, detail: str = "") -> bool:
        self.steps.append((check, ok, detail))
        return ok

    def result(self, summary_ok: str) -> ProofCheck:
        failed = [s for s in self.steps if not s[1]]
        if failed:
            check, _, detail = failed[0]
            return ProofCheck(False, tuple(self.steps), f"FAILED: {check}: {detail}" if detail else f"FAILED: {check}")
        return ProofCheck(True, tuple(self.steps), summary_ok)


def read_signed(doc: object, what: str) -> tuple[ChainCheckpoint, bytes]:
    """A signed checkpoint document as (checkpoint, signature); ProofError
    naming ``what`` when it is not one."""
    if not isinstance(doc, dict):
        raise ProofError(f"{what}: not a checkpoint document")
    body = dict(doc)
    try:
        signature = base64.b64decode(str(body.pop("signature")), validate=True)
        checkpoint = ChainCheckpoint.from_body(body)
    except (KeyError, ValueError, TypeError) as exc:
        raise ProofError(f"{what}: not a signed checkpoint ({exc})") from None
    if checkpoint.body() != body:
        # a field the format does not know, or one in another form, is not signed as read
        raise ProofError(f"{what}: fields outside the checkpoint format")
    if checkpoint.tree_size is None:
        raise ProofError(f"{what}: a version-1 checkpoint signs no tree head")
    return checkpoint, signature


def _signature_ok(steps: _Steps, what: str, checkpoint: ChainCheckpoint, signature: bytes, keys: KeyRing) -> bool:
    ok = keys.verify(checkpoint.writer_id, signature, canonical_json(checkpoint.body()))
    return steps.add(f"{what} signature", ok,
                     f"Ed25519 by writer {checkpoint.writer_id}'s key" if ok else
                     f"no key trusted for writer {checkpoint.writer_id} made this signature")


def _proof_document(doc: object, kind: str) -> dict[str, Any]:
    """``doc`` when it is a proof document of ``kind`` in this version; ProofError otherwise."""
    if not isinstance(doc, dict) or doc.get("type") != kind:
        raise ProofError(f"not an {kind} document")
    if doc.get("version") != PROOF_VERSION:
        raise ProofError(f"proof version {doc.get('version')!r} is not {PROOF_VERSION}")
    return doc


def check_inclusion(doc: object, keys: KeyRing) -> ProofCheck:
    """Check an inclusion proof document against the trusted ``keys``."""
    steps = _Steps()
    try:
        doc = _proof_document(doc, INCLUSION_TYPE)
        checkpoint, signature = read_signed(doc.get("checkpoint"), "checkpoint")
        fields = doc.get("event")
        if not isinstance(fields, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in fields
        ):
            raise ProofError("event: a list of [field, text] pairs is required")
        named = dict((n, t) for n, t in fields)
        path = [from_hex(h) for h in doc.get("audit_path", [])]
        index, size = doc.get("leaf_index"), doc.get("tree_size")
    except (ProofError, ValueError) as exc:
        steps.add("document", False, str(exc))
        return steps.result("")
    _signature_ok(steps, "checkpoint", checkpoint, signature, keys)
    names = tuple(n for n, _ in fields)
    steps.add("fields", names in (CANONICAL_FIELDS, LEGACY_CANONICAL_FIELDS),
              "the fields of encoding version 2 (or 1), in order" if names in (
                  CANONICAL_FIELDS, LEGACY_CANONICAL_FIELDS) else
              f"{list(names)} are not the hashed fields of docs/integrity.md section 2 in order")
    steps.add("writer", named.get("writer_id") == checkpoint.writer_id == doc.get("writer_id"),
              f"event writer {named.get('writer_id')!r}, checkpoint writer {checkpoint.writer_id!r}")
    steps.add("position", named.get("seq") == str(index + 1 if isinstance(index, int) else index)
              and size == checkpoint.tree_size,
              f"seq {named.get('seq')}, leaf index {index}, tree size {size} (signed: {checkpoint.tree_size})")
    encoding = encode_fields(fields)
    leaf = hash_leaf(encoding)
    try:
        verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=path,  # type: ignore[arg-type]
                         root=from_hex(checkpoint.tree_root))
        steps.add("audit path", True, f"leads to the signed root {checkpoint.tree_root}")
    except (ProofError, ValueError) as exc:
        steps.add("audit path", False, str(exc))
    return steps.result(
        f"OK: event {named.get('id')} is event {named.get('seq')} of writer {checkpoint.writer_id}'s log "
        f"of {checkpoint.tree_size}, signed {checkpoint.time} (encoding sha256 "
        f"{hashlib.sha256(encoding).hexdigest()[:16]}…)")


def check_consistency(doc: object, keys: KeyRing) -> ProofCheck:
    """Check a consistency proof document against the trusted ``keys``."""
    steps = _Steps()
    try:
        doc = _proof_document(doc, CONSISTENCY_TYPE)
        first, first_sig = read_signed(doc.get("first"), "first")
        second, second_sig = read_signed(doc.get("second"), "second")
        path = [from_hex(h) for h in doc.get("proof", [])]
    except (ProofError, ValueError) as exc:
        steps.add("document", False, str(exc))
        return steps.result("")
    return check_heads(first, first_sig, second, second_sig, path, keys, steps)


def check_heads(
    first: ChainCheckpoint, first_sig: bytes, second: ChainCheckpoint, second_sig: bytes,
    path: Sequence[bytes], keys: KeyRing, steps: _Steps | None = None,
) -> ProofCheck:
    """Check that signed tree head ``second`` extends signed tree head ``first``."""
    steps = steps or _Steps()
    _signature_ok(steps, "first checkpoint", first, first_sig, keys)
    _signature_ok(steps, "second checkpoint", second, second_sig, keys)
    steps.add("writer", first.writer_id == second.writer_id,
              f"{first.writer_id!r} and {second.writer_id!r}")
    steps.add("order", first.seal <= second.seal,
              f"checkpoint {first.seal} then {second.seal}")
    assert first.tree_size is not None and second.tree_size is not None
    try:
        if first.tree_size == 0:
            steps.add("proof", not path, "every log extends the empty log")
        else:
            verify_consistency(first_size=first.tree_size, second_size=second.tree_size,
                               first_root=from_hex(first.tree_root), second_root=from_hex(second.tree_root),
                               proof=path)
            steps.add("proof", True, f"the log of {second.tree_size} extends the log of {first.tree_size}")
    except (ProofError, ValueError) as exc:
        steps.add("proof", False, str(exc))
    return steps.result(
        f"OK: writer {second.writer_id}'s log of {second.tree_size} events (checkpoint {second.seal}) "
        f"contains its log of {first.tree_size} (checkpoint {first.seal}) unchanged")
