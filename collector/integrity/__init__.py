"""Integrity: what makes the lake tamper-evident, and the check of it.

Owns: the canonical encoding and hash chain (``chain``), each writer's
RFC 9162 Merkle tree (``merkle``), signed checkpoints (``checkpoint``), the
Ed25519 signing key (``signing``), the verifier (``verify``), and proofs
(``proofs``: the documents; ``writer_tree``: a writer's tree rebuilt from
the lake; ``proof_command``: ``auditlake proof`` and ``auditlake monitor``),
all specified in docs/integrity.md.

Imports: ``storage`` and the foundation.
Imported by: ``lake`` (sealing chains and signs), ``ingest``, ``retention``,
``admin``, and the top-level ``cli``/``server``.
"""
