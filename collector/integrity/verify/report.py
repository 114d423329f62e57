"""Reporting what verify found: each :class:`Problem`, the per-writer
summary and the :class:`VerifyReport` with its text and JSON forms (what
``auditlake verify`` prints, and what the admin UI shows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Problem kinds, and what each means (printed by ``--format json`` consumers
#: and documented in docs/integrity.md).
PROBLEM_KINDS: dict[str, str] = {
    "changed_event": "an event's content no longer hashes to its stored chain_hash",
    "changed_hash": "an event's stored chain_hash was altered",
    "reordered_events": "events were moved to other positions of the chain",
    "missing_events": "sequence numbers are missing (and no expire checkpoint explains them)",
    "truncated": "the lake ends before the newest signed chain head",
    "duplicate_seq": "two stored events carry the same writer and sequence number",
    "unsigned_events": "events after the newest signed chain head",
    "unknown_writer": "events of a writer that has no signed checkpoint",
    "missing_writer": "the data dir's writer has sealed, but the lake has no checkpoint of it left",
    "head_mismatch": "the stored chain_hash at a checkpoint's seq differs from the signed one",
    "tree_head": "a checkpoint's signed Merkle tree head is not the tree of the stored events",
    "expected_head": "the lake does not pass through a head recorded earlier (--expect-head)",
    "changed_file": "a file's bytes differ from the sha256 its checkpoint signed",
    "missing_file": "a file a checkpoint lists (and none removes) is not in the lake",
    "unlisted_file": "a file in the lake that no checkpoint lists",
    "removed_file": "a file a checkpoint removed (compaction, move, expiry) is in the lake again",
    "moved_file": "a listed file is at another path than its checkpoint says",
    "misplaced_event": "an event is in another file than the one its checkpoint lists",
    "file_rows": "a file holds other rows than its checkpoint lists",
    "wrong_partition": "an event's created_at date differs from its date= partition",
    "unreadable_file": "a lake file cannot be read as Parquet",
    "bad_signature": "a checkpoint's Ed25519 signature does not match its content",
    "broken_checkpoint_chain": "a checkpoint's previous link or seal number does not follow",
    "missing_checkpoint": "a checkpoint is missing from the primary folder",
    "checkpoints_truncated": "a mirror holds newer checkpoints than the primary folder",
    "mirror_mismatch": "a checkpoint differs between the primary folder and a mirror",
    "unreadable_checkpoint": "a checkpoint file cannot be parsed",
    "bad_checkpoint": "a checkpoint contradicts the contract (kind, head, removed files)",
    "no_public_key": "no public key to check signatures with",
}

#: ``progress(phase, done, total)``: called as each phase (digest, index, hash) advances.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Problem:
    """One finding: what kind, in words, and where (file, seq, column) when known."""

    kind: str
    message: str
    file: str | None = None
    seq: int | None = None
    column: str | None = None
    writer_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The finding as JSON-ready data, without the fields that are not known."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class WriterSummary:
    """What was verified of one writer's chain."""

    writer_id: str
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int = 0
    head_hash: str = ""
    head_time: str = ""
    checkpoints: int = 0
    expired_events: int = 0


@dataclass
class VerifyReport:
    """The result of verify_lake: problems (empty when clean) and a summary."""

    data: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    writers: list[WriterSummary] = field(default_factory=list)
    events: int = 0
    events_hashed: int = 0
    files: int = 0
    files_digested: int = 0
    bytes_digested: int = 0
    checkpoints: int = 0
    #: Signed Merkle tree heads checked against the tree of the stored events.
    tree_heads: int = 0
    #: Workers the re-hash of whole files ran on (0: this thread): threads
    #: with the C loop, else processes.
    hash_workers: int = 0
    #: Where the per-event loop of that re-hash ran: "C" (the optional
    #: extension integrity._chainhash) or "Python"; "" when files were not
    #: re-hashed one by one (a file may hold a NULL: the stream re-hashes).
    hash_loop: str = ""
    mirrors: list[str] = field(default_factory=list)
    public_key: str = ""
    date_from: str | None = None
    date_to: str | None = None
    started: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add(self, kind: str, message: str, *, file: str | None = None, seq: int | None = None,
            column: str | None = None, writer_id: str | None = None) -> None:
        """Record one problem."""
        self.problems.append(Problem(kind, message, file=file, seq=seq, column=column, writer_id=writer_id))

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``auditlake verify --format json``)."""
        return {
            "ok": self.ok,
            "data": self.data,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "events": self.events,
            "events_hashed": self.events_hashed,
            "events_per_second": round(self.events_hashed / self.seconds) if self.seconds else 0,
            "files": self.files,
            "files_digested": self.files_digested,
            "bytes_digested": self.bytes_digested,
            "checkpoints": self.checkpoints,
            "tree_heads": self.tree_heads,
            "hash_workers": self.hash_workers,
            "hash_loop": self.hash_loop,
            "mirrors": self.mirrors,
            "public_key": self.public_key,
            "range": {"from": self.date_from, "to": self.date_to},
            "writers": [w.__dict__ for w in self.writers],
            "problems": [p.to_json() for p in self.problems],
            "warnings": self.warnings,
        }

    def to_text(self) -> str:
        """A summary an auditor can keep, then every problem."""
        lines = [
            f"auditlake verify: {'OK' if self.ok else 'PROBLEMS FOUND'}",
            f"data:          {self.data}",
            f"started:       {self.started} ({self.seconds:.2f} s)",
            f"range:         {self.date_from or 'all'} .. {self.date_to or 'all'}",
            f"public key:    {self.public_key}",
            f"events:        {self.events:,} stored, {self.events_hashed:,} re-hashed",
            f"files:         {self.files:,} ({self.files_digested:,} digested, "
            f"{self.bytes_digested:,} bytes)",
            f"checkpoints:   {self.checkpoints:,}"
            + (f" (mirrors: {', '.join(self.mirrors)})" if self.mirrors else ""),
            f"tree heads:    {self.tree_heads:,} checked against the events",
        ]
        for w in self.writers:
            seqs = f"{w.first_seq}..{w.last_seq}" if w.first_seq is not None else "none"
            lines.append(
                f"writer {w.writer_id}: {w.events:,} events, seq {seqs}, signed head seq "
                f"{w.head_seq} {w.head_hash} at {w.head_time}, {w.checkpoints} checkpoints"
                + (f", {w.expired_events:,} expired by policy" if w.expired_events else "")
            )
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines) + "\n"

    def sort_problems(self) -> None:
        """Order the problems by writer, kind, seq and file (stable: ties keep the order found)."""
        self.problems.sort(key=lambda p: (p.writer_id or "", p.kind, p.seq or 0, p.file or ""))
