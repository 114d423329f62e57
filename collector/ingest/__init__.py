"""Ingest: how events enter the collector.

Owns: the gRPC ``AuditService`` with decoding, validation and backpressure
(``receive``), OpenTelemetry's ``LogsService/Export`` mapped onto the same
path (``otlp``, docs/otlp.md), tenant-scoped ingest keys (``keys``), the
inbox through which other commands add events (``inbox``), and what an
operator watches on the ingest side: TLS credentials (``tls``), gRPC health
(``health``), Prometheus metrics (``metrics``) and the status socket the
admin process reads them through (``status_socket``); docs/operations.md.  Everything it accepts goes to
the lake's write path (``lake.writer``), durable before it answers.

Imports: ``lake``, ``integrity``, ``storage`` and the foundation.
Imported by: ``retention`` and ``admin`` (to store their own audit events
through the same validation), ``cli``/``server``.
"""
