"""Storage: the one seam between the collector and the bytes of the lake.

Owns: the data directory's layout and lock (``datadir``), local-disk
durability primitives (``local``), the :class:`~.store.Store` interface with
its local-directory and object-store implementations (``store``), conditional
writes (``conditional``), leases over them (``lease``), and resolving a
tier's location to a store (``tiers``).

Imports: only the foundation (``errors``, ``config``, ``schema``).
Imported by: every other subpackage; nothing reads or writes lake files,
checkpoints or indexes around it.
"""
