"""Retention: the lake over the years.

Owns: the policy and legal holds (``policy``), planning a run (``plan``),
moving partitions to the cold tier (``move``), expiring them (``expire``),
one run tying those together (``run``), the system tenant's meta-audit
(``events``), the checkpoints the steps sign (``checkpoints``), the run's
report (``report``), stopping and fault injection (``interrupts``), running
it on a schedule or from the command line (``job``), and importing existing
history (``backfill``), each step signed.  The cold index and the cold
tier's read side belong to ``lake.cold``.  docs/retention.md describes it.

Imports: ``ingest`` (validation of imported rows), ``lake``, ``integrity``,
``storage`` and the foundation; never ``admin``.
Imported by: ``cli``/``server`` only.
"""
