"""Storage: the one seam between the collector and the bytes of the lake.

Owns: the data directory's layout and lock (``datadir``), local-disk
durability primitives (``local``), the :class:`~.store.Store` interface with
its local-directory and object-store implementations (``store``), conditional
writes (``conditional``), leases over them (``lease``), resolving a
tier's or a ``--lake``'s location to a store (``tiers``), and what a lake
shared by several collectors keeps beside its files: the writer registry and
each writer's lease (``writers``), the maintenance lease (``maintenance``),
and the shared JSON documents of keys and users (``fleet_doc``).

Imports: only the foundation (``errors``, ``config``, ``schema``).
Imported by: every other subpackage; nothing reads or writes lake files,
checkpoints or indexes around it.
"""
