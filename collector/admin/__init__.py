"""Admin: people reading the lake.

Owns: the HTTP server and its routes (UI pages and the JSON API), search,
users and sessions, exports with signed manifests, the OpenAPI document,
the activity chart, templates and static files, and the audit of every read
(``readaudit``).  docs/admin.md describes it.

Imports: ``ingest`` (read-audit events go through its validation), ``lake``,
``integrity``, ``storage`` and the foundation; never ``retention``.
Imported by: ``cli``/``server`` only.
"""
