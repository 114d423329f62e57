"""Reading the checkpoints: every signed checkpoint of the data dir and of
the mirror folders, read through a Store; names, signatures and the
checkpoint chain checked; mirrors compared with the primary folder (a mirror
holding checkpoints the primary lacks shows a deleted tail)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from auditlake.collector.errors import ConfigError
from auditlake.collector.integrity.checkpoint import ChainCheckpoint, SignedCheckpoint, canonical_json
from auditlake.collector.integrity.signing import KeyRing, load_public_key
from auditlake.collector.integrity.verify.report import VerifyReport, WriterSummary
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.store import Store, StoredObject
from auditlake.collector.storage.tiers import fleet_state
from auditlake.collector.storage.writers import list_writers

#: Checkpoint kinds of the contract (docs/integrity.md, "Checkpoint kinds").
KINDS = ("seal", "compact", "move", "expire", "erase")

#: One writer's checkpoints by seal number.
Seals = dict[int, SignedCheckpoint]
#: Every writer's checkpoints.
ByWriter = dict[str, Seals]


#: What ``--public-key`` may be: a key, a PEM file (one or more keys), or several.
PublicKeys = Ed25519PublicKey | KeyRing | Path | str | Sequence[Path | str]


def load_key(data: DataDir, public_key: PublicKeys | None) -> tuple[KeyRing | None, str]:
    """The keys to check signatures with, and where they came from (for the
    report): the keys given; else, in a shared lake, the writers' keys its
    registry holds; else the data dir's own public key."""
    if isinstance(public_key, KeyRing):
        return public_key, "given"
    if isinstance(public_key, Ed25519PublicKey):
        ring = KeyRing()
        ring.add(public_key)
        return ring, "given"
    if public_key is not None:
        paths = [Path(public_key)] if isinstance(public_key, str | Path) else [Path(p) for p in public_key]
        ring = KeyRing()
        for path in paths:
            try:
                ring.add_text(path.read_text(), str(path))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read public key {path}: {exc}") from exc
        return ring, ", ".join(str(p) for p in paths)
    if data.shared_lake:
        ring = KeyRing()
        for w in list_writers(fleet_state(data)):
            ring.add_text(w.public_key_pem, f"writer {w.writer_id}'s registry record", w.writer_id)
        if len(ring):
            return ring, ("the lake's writer registry (keys kept beside the data they sign prove nothing "
                          "against whoever can write the bucket: pass --public-key with the keys "
                          "`auditlake keys public` gave you)")
        return None, "none"
    pub = data.keys / "signing.pub.pem"
    if pub.exists():
        ring = KeyRing()
        ring.add(load_public_key(pub))
        return ring, f"{pub} (from the data dir: pass --public-key to trust "\
            "a key obtained separately)"
    return None, "none"


def _checkpoint_objects(folder: Store) -> list[StoredObject]:
    """The ``<writer>/<name>.json`` objects of a checkpoint folder, in path order."""
    found = [o for o in folder.list() if o.key.count("/") == 1 and o.key.endswith(".json")]
    return sorted(found, key=lambda o: o.key.split("/"))


def checkpoint_listing(folders: Sequence[Store]) -> list[tuple[str, int]]:
    """(path, size) of every checkpoint: equal listings before and after
    listing the lake mean the checkpoints did not change meanwhile."""
    return [(folder.path(o.key), o.size) for folder in folders for o in _checkpoint_objects(folder)]


def _parse(folder: Store, key: str, path: Path, report: VerifyReport) -> SignedCheckpoint | None:
    try:
        doc = json.loads(folder.read(key))
        sig = base64.b64decode(doc.pop("signature"), validate=True)
        cp = ChainCheckpoint.from_body(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        report.add("unreadable_checkpoint", f"checkpoint {path} cannot be parsed: {exc}",
                   file=str(path), writer_id=path.parent.name)
        return None
    return SignedCheckpoint(cp, sig, path)


def read_checkpoint_folder(folder: Store, report: VerifyReport) -> ByWriter:
    """Every parseable checkpoint of one folder; unparseable, misnamed and
    doubled ones are problems."""
    out: ByWriter = {}
    for obj in _checkpoint_objects(folder):
        path = Path(folder.path(obj.key))
        signed = _parse(folder, obj.key, path, report)
        if signed is None:
            continue
        cp = signed.checkpoint
        if cp.writer_id != path.parent.name or path.name != cp.file_name():
            report.add(
                "bad_checkpoint",
                f"checkpoint {path} says writer {cp.writer_id} seal {cp.seal} kind {cp.kind}, "
                f"which does not match its file name (renamed or copied)",
                file=str(path), writer_id=cp.writer_id)
        seals = out.setdefault(cp.writer_id, {})
        if cp.seal in seals:
            report.add(
                "broken_checkpoint_chain",
                f"two checkpoints of writer {cp.writer_id} claim seal {cp.seal}: "
                f"{seals[cp.seal].path.name} and {path.name}",
                file=str(path), writer_id=cp.writer_id)
            continue
        seals[cp.seal] = signed
    return out


def signature_holds(signed: SignedCheckpoint, key: KeyRing | None) -> bool:
    """True when keys are given and one trusted for the checkpoint's writer
    made its signature over its content."""
    if key is None:
        return False
    return key.verify(signed.checkpoint.writer_id, signed.signature, canonical_json(signed.checkpoint.body()))


# -- mirrors -----------------------------------------------------------------------------


def merge_checkpoints(primary: ByWriter, mirrors: Sequence[tuple[str, ByWriter]],
                      key: KeyRing | None, report: VerifyReport) -> ByWriter:
    """Primary checkpoints, completed by mirrors; every difference is a problem."""
    merged: ByWriter = {w: dict(s) for w, s in primary.items()}
    for mirror_root, mirror in mirrors:
        for writer, seals in mirror.items():
            have = merged.setdefault(writer, {})
            for seal, m in sorted(seals.items()):
                p = primary.get(writer, {}).get(seal)
                if p is None:
                    _only_in_mirror(m, primary.get(writer, {}), mirror_root, key, have, report)
                elif m.checkpoint.digest() != p.checkpoint.digest() or m.signature != p.signature:
                    _differs_in_mirror(p, m, key, have, report)
        _warn_when_behind(primary, mirror, mirror_root, report)
    return merged


def _only_in_mirror(m: SignedCheckpoint, primary_seals: Seals, mirror_root: str,
                    key: KeyRing | None, have: Seals, report: VerifyReport) -> None:
    cp = m.checkpoint
    writer, seal = cp.writer_id, cp.seal
    primary_max = max(primary_seals, default=0)
    if seal > primary_max:
        report.add(
            "checkpoints_truncated",
            f"mirror {mirror_root} holds checkpoint seal {seal} of writer "
            f"{writer} (head seq {cp.seq}, {cp.time}) but "
            f"the primary checkpoints stop at seal {primary_max}: newer "
            "checkpoints were deleted from the data dir",
            file=str(m.path), seq=cp.seq, writer_id=writer)
    else:
        report.add(
            "missing_checkpoint",
            f"checkpoint seal {seal} of writer {writer} is missing from the "
            f"primary folder; mirror {mirror_root} has it",
            file=str(m.path), writer_id=writer)
    # A validly signed copy stands in for the deleted one.
    if signature_holds(m, key) and seal not in have:
        have[seal] = m


def _differs_in_mirror(p: SignedCheckpoint, m: SignedCheckpoint, key: KeyRing | None,
                       have: Seals, report: VerifyReport) -> None:
    pm, mm = signature_holds(p, key), signature_holds(m, key)
    which = ("the mirror's copy is validly signed, the primary's is not" if mm and not pm
             else "the primary's copy is validly signed, the mirror's is not" if pm and not mm
             else "both are validly signed: the signing key signed two versions"
             if pm and mm else "neither is validly signed")
    report.add(
        "mirror_mismatch",
        f"checkpoint seal {p.checkpoint.seal} of writer {p.checkpoint.writer_id} differs between "
        f"{p.path} and {m.path}: {which}",
        file=str(p.path), writer_id=p.checkpoint.writer_id)
    if mm and not pm:
        have[p.checkpoint.seal] = m


def _warn_when_behind(primary: ByWriter, mirror: ByWriter, mirror_root: str, report: VerifyReport) -> None:
    for writer, seals in primary.items():
        mirror_max = max(mirror.get(writer, {}), default=0)
        if seals and mirror_max < max(seals):
            report.warnings.append(
                f"mirror {mirror_root} is behind for writer {writer}: it ends at seal "
                f"{mirror_max}, the primary at {max(seals)} (a mirror added later, or it "
                "lags a running collector)")


# -- the checkpoint chain --------------------------------------------------------------


def check_checkpoint_chain(writer: str, seals: Seals, key: KeyRing | None,
                           report: VerifyReport) -> None:
    """Each checkpoint signed and of a known kind; seals from 1 without gaps,
    each linking to the one before; heads never move back, and only seals move them."""
    prev: SignedCheckpoint | None = None
    for seal in sorted(seals):
        s = seals[seal]
        _check_alone(writer, s, key, report)
        _check_after(writer, prev, s, report)
        prev = s


def _check_alone(writer: str, s: SignedCheckpoint, key: KeyRing | None, report: VerifyReport) -> None:
    cp = s.checkpoint
    if key is not None and not signature_holds(s, key):
        report.add(
            "bad_signature",
            f"checkpoint {s.path} (writer {writer}, seal {cp.seal}, kind {cp.kind}): the "
            "Ed25519 signature does not match its content: the checkpoint was edited or "
            "signed with another key",
            file=str(s.path), seq=cp.seq, writer_id=writer)
    if cp.kind not in KINDS:
        report.add("bad_checkpoint", f"checkpoint {s.path} has unknown kind {cp.kind!r}",
                   file=str(s.path), writer_id=writer)


def _check_after(writer: str, prev: SignedCheckpoint | None, s: SignedCheckpoint, report: VerifyReport) -> None:
    cp = s.checkpoint
    seal = cp.seal
    expected_seal = prev.checkpoint.seal + 1 if prev else 1
    if seal != expected_seal:
        missing = f"{expected_seal}" if seal == expected_seal + 1 else f"{expected_seal}..{seal - 1}"
        report.add(
            "broken_checkpoint_chain",
            f"writer {writer}: checkpoint seal(s) {missing} are missing before "
            f"{s.path.name} (deleted checkpoints)",
            file=str(s.path), writer_id=writer)
    if prev is None:
        if seal == 1 and cp.previous:
            report.add(
                "broken_checkpoint_chain",
                f"checkpoint {s.path.name} is the first of writer {writer} but links to a "
                f"previous checkpoint {cp.previous[:16]}…",
                file=str(s.path), writer_id=writer)
        return
    p = prev.checkpoint
    if cp.previous != p.digest():
        report.add(
            "broken_checkpoint_chain",
            f"checkpoint {s.path.name} of writer {writer}: 'previous' is "
            f"{cp.previous[:16]}… but the checkpoint before it ({prev.path.name}) digests "
            f"to {p.digest()[:16]}…: a checkpoint between them was deleted, "
            "replaced or edited",
            file=str(s.path), writer_id=writer)
    if cp.seq < p.seq:
        report.add(
            "bad_checkpoint",
            f"checkpoint {s.path.name} of writer {writer} moves the head back from seq "
            f"{p.seq} to {cp.seq}", file=str(s.path), seq=cp.seq, writer_id=writer)
    if cp.kind != "seal" and (cp.seq, cp.chain_hash) != (p.seq, p.chain_hash):
        report.add(
            "bad_checkpoint",
            f"{cp.kind} checkpoint {s.path.name} of writer {writer} changes the chain "
            f"head (a {cp.kind} never adds events)",
            file=str(s.path), seq=cp.seq, writer_id=writer)


# -- all of it ----------------------------------------------------------------------------


def read_checkpoints(primary: Store, mirrors: Sequence[Store], key: KeyRing | None,
                     report: VerifyReport) -> ByWriter:
    """The lake's checkpoints (the primary folder completed by mirrors), each
    writer's chain of them checked, and a summary line per writer started."""
    first = read_checkpoint_folder(primary, report)
    others = [(m.root, read_checkpoint_folder(m, report)) for m in mirrors]
    merged = merge_checkpoints(first, others, key, report)
    for writer, seals in sorted(merged.items()):
        check_checkpoint_chain(writer, seals, key, report)
        if seals:
            head = seals[max(seals)].checkpoint
            report.writers.append(WriterSummary(
                writer, head_seq=head.seq, head_hash=head.chain_hash, head_time=head.time,
                checkpoints=len(seals)))
    report.checkpoints = sum(len(s) for s in merged.values())
    return merged


# -- the data dir's own writer -----------------------------------------------------------

#: The sealer's progress record in ``DIR/state`` (lake.seal_progress, a layer
#: above): ``seal`` is the number of the newest checkpoint its writer committed.
_SEAL_STATE = "seal.json"


def sealed_without_checkpoints(data: DataDir, writers: ByWriter) -> tuple[str, str, int] | None:
    """(writer id, what says it sealed, its seal number; 0 when unreadable)
    when ``DIR/writer_id`` names a writer
    that, by ``DIR/state/seal.json``, has committed checkpoints, and yet no
    checkpoint of it is in the lake: its checkpoints (and with them its files'
    place in the lake) were deleted.  None otherwise, and for a collector
    that never sealed: it has a writer id and keys but no seal record."""
    try:
        writer = (data.root / "writer_id").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not writer or writer in writers:
        return None
    try:
        raw = (data.state / _SEAL_STATE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None  # never sealed
    try:
        seal = int(json.loads(raw).get("seal", 0))
    except (ValueError, TypeError, AttributeError):
        return writer, f"{data.state / _SEAL_STATE} exists but cannot be read", 0
    if seal < 1:
        return None
    return writer, f"{data.state / _SEAL_STATE} records seal {seal}", seal


def check_own_writer(data: DataDir, writers: ByWriter, report: VerifyReport) -> None:
    """Report the data dir's writer when it sealed but has no checkpoint left."""
    found = sealed_without_checkpoints(data, writers)
    if found is None:
        return
    writer, evidence, seal = found
    # Only the newest commit can be unfinished (committed, not yet signed):
    # with seal 1 that is the whole chain, so a crash there looks the same.
    unfinished = (" (or the collector stopped between committing its first seal and signing it: "
                  "it finishes that when it starts again)" if seal == 1 else "")
    report.add(
        "missing_writer",
        f"this data dir's writer {writer} (DIR/writer_id) has sealed events ({evidence}), "
        "but the lake holds no checkpoint of it: its checkpoints were deleted, and with "
        f"them every file and event it sealed is unaccounted for or gone{unfinished}",
        writer_id=writer)
