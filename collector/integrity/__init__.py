"""Integrity: what makes the lake tamper-evident, and the check of it.

Owns: the canonical encoding and hash chain (``chain``), signed checkpoints
(``checkpoint``), the Ed25519 signing key (``signing``) and the verifier
(``verify``), all specified in docs/integrity.md.

Imports: ``storage`` and the foundation.
Imported by: ``lake`` (sealing chains and signs), ``ingest``, ``retention``,
``admin``, and the top-level ``cli``/``server``.
"""
