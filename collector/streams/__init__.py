"""Streams: every stored event forwarded to SIEMs and webhooks, at least once.

Owns: the ``[[streams]]`` settings and their credentials (``settings``),
the lake read as a per-writer feed in seq order (``feed``), the vectorised
encodings — JSON, OCSF, Splunk HEC, RFC 5424 syslog (``encode``) — the
destinations (``destinations``: signed webhook, Splunk HEC, syslog over TCP
or TLS), the durable cursors and published status (``cursor``), and the
delivery threads with retries, backoff and lag (``run``).
docs/streams.md describes it.

Imports: ``lake``, ``storage`` and the foundation (it reads the lake as
``admin`` and ``retention`` do, at their level); never ``admin``,
``retention`` or ``ingest``.
Imported by: ``cli``/``server`` only.
"""
