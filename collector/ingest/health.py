"""Health: whether this collector should be sent events now, for load
balancers and orchestrators.

One question, two answers: the standard gRPC health service
(``grpc.health.v1.Health``, grpcio-health-checking) on the ingest port, and
the readiness the admin HTTP listener reports on ``/readyz`` (asked through
the status socket, ingest/status_socket.py).  Both come from one
``Readiness`` value, evaluated by the collector (server.py): not ready while
it starts, while it seals the events it replayed from its write-ahead log
after a restart, while another process holds its writer id (a shared lake),
and once it is stopping.  The gRPC statuses are pushed to watchers
(``Health/Watch``) as they change, at most every ``interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

#: The name a health check asks about for the whole server.
OVERALL = health.OVERALL_HEALTH


@dataclass(frozen=True)
class Readiness:
    """Whether the collector takes events now; when not, what it is doing."""

    ready: bool
    #: ``starting``, ``recovering``, ``serving``, ``writer_lost`` or ``stopping``.
    phase: str
    #: Why it is not ready, for people ("" when ready).
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        """The form the status socket sends."""
        return {"ready": self.ready, "phase": self.phase, "reason": self.reason}


STARTING = Readiness(False, "starting", "the collector is starting")


class IngestHealth:
    """The gRPC health service of one collector, kept in step with its
    ``Readiness`` by a thread that asks ``check()`` every ``interval_s``."""

    def __init__(self, check: Callable[[], Readiness], services: Sequence[str], *,
                 interval_s: float = 0.5) -> None:
        self._check = check
        self._services = (OVERALL, *services)
        self._interval_s = interval_s
        # Non-blocking Watch: a watcher holds no worker thread and no slot
        # of max_concurrent_rpcs, so health watchers cannot starve ingest.
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        self.current = STARTING
        self._publish(STARTING)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, server: grpc.Server) -> None:
        """Serve ``grpc.health.v1.Health`` on ``server`` (before it starts)."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def start(self) -> None:
        """Evaluate now, then keep evaluating in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="auditlake-health", daemon=True)
        self._thread.start()

    def refresh(self) -> Readiness:
        """Evaluate now and publish a change; returns the readiness."""
        try:
            now = self._check()
        except Exception as exc:  # noqa: BLE001 - a broken check means "not ready", never a dead thread
            log.exception("the readiness check failed")
            now = Readiness(False, "unknown", f"the readiness check failed: {exc}")
        if now != self.current:
            (log.info if now.ready else log.warning)(
                "health: %s%s", "SERVING" if now.ready else "NOT_SERVING", f" ({now.reason})" if now.reason else "")
            self._publish(now)
        self.current = now
        return now

    def _publish(self, readiness: Readiness) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if readiness.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in self._services:
            self.servicer.set(name, status)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.refresh()

    def shut_down(self) -> None:
        """NOT_SERVING for good (the collector is stopping: balancers move
        clients away while in-flight calls finish), and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.current = Readiness(False, "stopping", "the collector is stopping")
        self.servicer.enter_graceful_shutdown()
