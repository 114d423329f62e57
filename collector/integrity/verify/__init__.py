"""Verify: re-read the lake and its signed checkpoints, recompute every hash,
and name each problem (changed, removed, inserted, reordered or misplaced
events and files, truncation, bad signatures, a broken checkpoint chain).

The checks are specified in docs/integrity.md.  The parts, in the order a
verification runs them (``run``):

- ``checkpoints``: read the checkpoints and mirrors, check signatures and
  the checkpoint chain;
- ``listing``: the files in the hot and cold tiers, and the files the
  checkpoints say must exist;
- ``digest``: each file's sha256 and footer, compared with its checkpoint;
- ``index`` and ``rows``: the DuckDB index of every stored event and the
  row checks on it (gaps, duplicates, tails, placement, signed heads);
- ``links`` and ``explain``: the re-hash of every link, and naming what a
  failed link means;
- ``report`` and ``command``: the findings, and ``auditlake verify``.

All file access goes through the storage seam (``storage.store.Store``).
"""

from __future__ import annotations

from auditlake.collector.integrity.verify.checkpoints import KINDS
from auditlake.collector.integrity.verify.command import cmd_verify, register
from auditlake.collector.integrity.verify.report import (
    PROBLEM_KINDS,
    Problem,
    ProgressFn,
    VerifyReport,
    WriterSummary,
)
from auditlake.collector.integrity.verify.run import verify_lake

__all__ = [
    "KINDS",
    "PROBLEM_KINDS",
    "Problem",
    "ProgressFn",
    "VerifyReport",
    "WriterSummary",
    "cmd_verify",
    "register",
    "verify_lake",
]
