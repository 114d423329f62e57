"""Admin: the collector's HTTP server: the search UI, the JSON API and
exports, behind user logins, served by uvicorn in a background thread.

Routes (HTML unless under /api/): ``/login``, ``/logout`` (POST), ``/`` search,
``/events/{id}`` detail, ``/export`` download, ``/integrity``, ``/account``
(API tokens), ``/users`` (admins); ``/api/v1/events``, ``/api/v1/events/{id}``,
``/api/v1/stats``, ``/api/v1/export``, ``/api/v1/exports/{eid}[/manifest]``,
``/api/v1/integrity``, ``/api/v1/openapi.json``.  docs/admin.md describes them.
Beside them, without a login, for operators' tools: ``/metrics`` (Prometheus
text: the collector process's families, asked through its status socket,
and this process's integrity status), ``/healthz`` (liveness: the collector
process answers) and ``/readyz`` (readiness: it takes events); see
``OpsEndpoints`` and docs/operations.md.  With ``tls_cert`` and ``tls_key``
in ``[collector]`` the listener speaks HTTPS only.

Every read (search page, detail, API call, export) is recorded as an event
(readaudit.py) with the reader's name, the filter and the rows returned.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from auditlake.collector.admin.deadline import deadline_protocol
from auditlake.collector.admin.export_runs import ExportRegistry
from auditlake.collector.admin.listener import HttpsContext, address_of, bind_listener
from auditlake.collector.config import ServerTls
from auditlake.collector.errors import ConfigError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class AdminConfig:
    """Settings of the admin server (TOML table ``[admin]``)."""

    #: Minutes between background integrity verifications (0: only at start and on demand).
    verify_interval_minutes: float = 60.0
    #: A session ends after this many idle minutes, and after ``session_max_hours`` in any case.
    session_idle_minutes: float = 30.0
    session_max_hours: float = 12.0
    #: Failed logins (per user name, and per client address) before delays start.
    login_free_failures: int = 5
    #: DuckDB threads for admin queries and exports (0: half the cores, at least one).
    query_threads: int = 0
    #: Seconds a client has to send a whole request (head and body); a
    #: connection still sending after that is closed (Slowloris).
    request_timeout_s: float = 20.0
    #: Connections and requests in progress at once; more are answered 503.
    max_connections: int = 256
    #: Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto
    #: are believed (for the client address in login throttling and read
    #: audit events, and the cookie's Secure flag).  Empty: none, the TCP
    #: peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    #: Exports running at once, per user and in all; more answer 429.
    max_exports_per_user: int = 2
    max_exports: int = 4
    #: Signed export manifests kept in DIR/exports/ (the newest).
    keep_export_manifests: int = 10_000
    #: DuckDB memory for admin queries and exports (MiB); ingest never waits for it.
    query_memory_mb: int = 1024
    #: Seconds an admin query may run before it is interrupted (exports excepted).
    query_timeout_s: float = 30.0
    #: CPU priority of the admin process: "idle" (Linux SCHED_IDLE: it runs on
    #: the CPU time ingest leaves, so exports and searches never slow ingest,
    #: and wait while ingest saturates every core), "low" (nice 10), "normal".
    priority: str = "idle"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and value < 0:
                raise ConfigError(f"[admin].{f.name} must not be negative")
        for name in ("request_timeout_s", "max_connections", "max_exports_per_user", "max_exports",
                     "keep_export_manifests", "query_memory_mb", "query_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[admin].{name} must be positive")
        if self.priority not in ("idle", "low", "normal"):
            raise ConfigError(f"[admin].priority must be idle, low or normal, got {self.priority!r}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ConfigError(f"[admin].trusted_proxies: {proxy!r} is not an address or network") from exc

    @classmethod
    def from_toml(cls, toml: dict[str, Any]) -> AdminConfig:
        table = toml.get("admin", {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(table) - set(known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in [admin]: {', '.join(sorted(unknown))}")
        try:
            values: dict[str, Any] = {}
            for k, v in table.items():
                if known[k] == "int":
                    values[k] = int(v)
                elif known[k] == "float":
                    values[k] = float(v)
                elif known[k] == "str":
                    values[k] = str(v)
                elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                    values[k] = tuple(v)
                else:
                    raise ConfigError(f"[admin].{k} must be a list of strings, got {v!r}")
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[admin]: {exc}") from exc


# -- integrity status --------------------------------------------------------------


class _Abandoned(Exception):
    """Raised from verify_lake's progress callback to stop a run early."""


class IntegrityMonitor:
    """Runs verify.verify_lake in a background thread (at start, every
    interval, and on demand) and keeps the last result for the UI."""

    def __init__(self, data: Any, interval_s: float) -> None:
        self.data = data
        self.interval_s = interval_s
        self.status: dict[str, Any] = {"state": "pending", "ok": None, "time": None}
        #: Unix time the last verification ended (0: none yet), for /metrics.
        self.finished_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="auditlake-integrity", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread (a running verification stops at its next step)."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def request(self) -> None:
        """Verify now (in the background)."""
        self._wake.set()

    def _loop(self) -> None:
        if self._stop.wait(1.0):  # let the collector finish starting first
            return
        while not self._stop.is_set():
            self.run_once()
            self._wake.wait(self.interval_s if self.interval_s > 0 else None)
            self._wake.clear()

    def run_once(self) -> dict[str, Any]:
        """Verify once; returns (and keeps) the status."""
        with self._running:
            self.status = {**self.status, "state": "running"}
            started = time.time()
            try:
                status = self._verify()
            except _Abandoned:
                status = {"ok": None, "source": "stopped", "summary": "verification stopped", "problems": []}
            except Exception as exc:  # noqa: BLE001 - shown to admins, never fatal
                log.exception("integrity verification failed to run")
                status = {"ok": False, "source": "error", "summary": f"verification could not run: {exc}",
                          "problems": [str(exc)]}
            status.update(state="done", time=_iso_now(), seconds=round(time.time() - started, 2),
                          heads=self.heads())
            self.status = status
            self.finished_at = time.time()
            return status

    def _verify(self) -> dict[str, Any]:
        try:
            from auditlake.collector.integrity.verify import verify_lake  # noqa: PLC0415
        except ImportError:
            return {"ok": None, "source": "checkpoints",
                    "summary": "full verification is not available in this build; showing signed chain heads",
                    "problems": []}
        def progress(phase: str, done: int, total: int) -> None:
            if self._stop.is_set():  # the collector is stopping: abandon this run
                raise _Abandoned()

        report = verify_lake(self.data, progress=progress)
        problems = [str(p) for p in getattr(report, "problems", [])]
        return {
            "ok": bool(report.ok),
            "source": "verify",
            "summary": f"{getattr(report, 'events', 0):,} events, {getattr(report, 'files', 0):,} files, "
                       f"{getattr(report, 'checkpoints', 0):,} checkpoints verified",
            "problems": problems[:100],
            "problem_count": len(problems),
        }

    def heads(self) -> list[dict[str, Any]]:
        """The newest signed checkpoint of each writer, read now."""
        from auditlake.collector.integrity.checkpoint import read_checkpoints  # noqa: PLC0415
        from auditlake.collector.storage.tiers import checkpoint_tier  # noqa: PLC0415

        try:
            newest: dict[str, Any] = {}
            for s in read_checkpoints(checkpoint_tier(self.data)):
                newest[s.checkpoint.writer_id] = s.checkpoint
            return [{"writer_id": c.writer_id, "seal": c.seal, "seq": c.seq, "chain_hash": c.chain_hash,
                     "time": c.time, "kind": c.kind} for _, c in sorted(newest.items())]
        except (OSError, ValueError) as exc:
            return [{"error": str(exc)}]


def _iso_now() -> str:
    from auditlake.collector.admin.search import iso  # noqa: PLC0415

    return iso(dt.datetime.now(dt.UTC).replace(microsecond=0))


# -- meta-audit writer ------------------------------------------------------------


class AuditWriter:
    """Builds, validates and stores meta-audit events off the request path,
    several per WAL record when reads come in bursts."""

    def __init__(self, store: Callable[[Any], Any],
                 tenant_known: Callable[[str], bool] = lambda tenant: True) -> None:
        self._store = store
        self._tenant_known = tenant_known
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.written = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="auditlake-read-audit", daemon=True)
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        """Queue one event (the keyword arguments of readaudit.meta_event)."""
        self._queue.put(event)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event has been handed to the collector."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        import pyarrow as pa  # noqa: PLC0415

        from auditlake.collector.admin.readaudit import meta_event  # noqa: PLC0415
        from auditlake.collector.lake.batch import AcceptedBatch  # noqa: PLC0415

        stopping = False
        while not stopping:
            items = [self._queue.get()]
            while len(items) < 500:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = [i for i in items if i is not None]
            stopping = len(events) != len(items)
            try:
                if events:
                    tables = [meta_event(**_in_known_tenant(e, self._tenant_known)) for e in events]
                    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
                    self._store(AcceptedBatch(f"admin-{secrets.token_hex(12)}",
                                              int(time.time() * 1_000_000), table))
                    self.written += len(events)
            except Exception:  # noqa: BLE001 - the collector is stopping; log, keep going
                log.exception("could not record %d meta-audit event(s)", len(events))
            finally:
                for _ in items:
                    self._queue.task_done()


def _in_known_tenant(event: dict[str, Any], known: Callable[[str], bool]) -> dict[str, Any]:
    """The event, moved to the system tenant when the tenant a reader named
    does not exist (a reader must not create tenants by naming them); the
    name it was given stays in the details."""
    tenant = event.get("tenant")
    if tenant is None or known(tenant):
        return event
    return {**event, "tenant": None, "details": {**(event.get("details") or {}), "named_tenant": tenant}}


# -- the server --------------------------------------------------------------------


class _ReadOnlyHost:
    """What AdminServer needs from a Collector, for serving a lake without
    one (benchmarks, tools): meta-audit events are built and dropped."""

    def __init__(self, data: Any, listen: str, signing_key: Any) -> None:
        from auditlake.collector.config import CollectorConfig  # noqa: PLC0415

        self.data = data
        self.config = CollectorConfig(http_listen=listen)
        self.signing_key = signing_key
        self.dropped = 0

    def store(self, batch: Any) -> None:
        self.dropped += 1


class AdminServer:
    """The admin UI and API of one collector.  ``start()`` serves in a
    background thread; ``address`` is the bound ``host:port``."""

    def __init__(self, collector: Any, *, users_dir: Path | None = None, toml: dict[str, Any] | None = None) -> None:
        from auditlake.collector.admin.search import LakeReader  # noqa: PLC0415
        from auditlake.collector.admin.users import (  # noqa: PLC0415
            LoginThrottle,
            SessionStore,
            ThrottlePolicy,
            UserStore,
        )
        from auditlake.collector.ingest.keys import IngestKeyStore  # noqa: PLC0415
        from auditlake.collector.storage.store import LocalStore  # noqa: PLC0415
        from auditlake.collector.storage.tiers import fleet_state  # noqa: PLC0415

        self.collector = collector
        self.data = collector.data
        if toml is None:
            toml = getattr(collector, "config_toml", None)
            if toml is None:
                from auditlake.collector.config import load_toml  # noqa: PLC0415

                toml = load_toml(self.data.config_file)
        self.config = AdminConfig.from_toml(toml)
        self.listen = collector.config.http_listen
        # Users, API tokens, sessions and ingest keys are the fleet's: every
        # collector of the lake reads and changes the same ones.
        fleet = LocalStore(users_dir, "keys") if users_dir is not None else fleet_state(self.data)
        self.users = UserStore(fleet)
        self.sessions = SessionStore(fleet, idle_s=self.config.session_idle_minutes * 60,
                                     absolute_s=self.config.session_max_hours * 3600)
        self.ingest_keys = IngestKeyStore(fleet)
        self.throttle = LoginThrottle(ThrottlePolicy(free_failures=self.config.login_free_failures))
        # Half the cores by default: ingest keeps the rest, whatever the HTTP side asks.
        self.reader = LakeReader(self.data, threads=self.config.query_threads or max(1, (os.cpu_count() or 2) // 2),
                                 memory_limit_mb=self.config.query_memory_mb,
                                 timeout_s=self.config.query_timeout_s)
        self.integrity = IntegrityMonitor(self.data, self.config.verify_interval_minutes * 60)
        self.audit_writer = AuditWriter(collector.store, self.tenant_exists)
        self._tenants_seen: dict[str, float] = {}
        self.exports = ExportRegistry(self.data.root / "exports", max_per_user=self.config.max_exports_per_user,
                                      max_total=self.config.max_exports,
                                      keep_manifests=self.config.keep_export_manifests)
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self.verify_in_background = True
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.address = ""
        #: The certificate files of HTTPS (None: plain HTTP).
        self.tls = _served_tls(collector, toml)
        self._https: HttpsContext | None = None
        #: How to ask the collector process for "metrics" and "health" (None:
        #: there is none, a read-only server).
        self.ask_collector: Callable[[str], bytes] | None = (
            None if isinstance(collector, _ReadOnlyHost) else _status_socket_of(self.data))
        #: This process's own metrics (the integrity status), apart from any other registry.
        self.metrics_registry = _admin_registry(self)
        self.app = OpsEndpoints(build_app(self), self)

    @classmethod
    def for_reading(cls, data: Any, *, listen: str = "127.0.0.1:0", users_dir: Path | None = None) -> AdminServer:
        """A server over ``data`` without a running collector (read-only;
        exports signed with a throwaway key, meta-audit events dropped)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

        from auditlake.collector.integrity.signing import SigningKey  # noqa: PLC0415

        host = _ReadOnlyHost(data, listen, SigningKey(Ed25519PrivateKey.generate()))
        server = cls(host, users_dir=users_dir, toml={"admin": {"verify_interval_minutes": 0}})
        server.verify_in_background = False
        return server

    # -- lifecycle -----------------------------------------------------------

    def start(self, listener: socket.socket | None = None) -> None:
        """Bind (errors here are ConfigError), or take the given listening
        socket, and serve in a background thread."""
        import uvicorn  # noqa: PLC0415

        sock = listener if listener is not None else bind_listener(self.listen)
        self._socket = sock
        self.address = address_of(sock)
        # X-Forwarded-For/-Proto are believed only from the configured proxies
        # (the TLS terminator): the client address feeds login throttling and
        # the meta-audit events, the scheme the cookie's Secure flag.
        proxies = list(self.config.trusted_proxies)
        https: dict[str, Any] = {}
        if self.tls is not None:
            self._https = HttpsContext(self.tls)
            https = {"ssl_certfile": str(self.tls.cert), "ssl_keyfile": str(self.tls.key)}
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None,
                                server_header=False, timeout_graceful_shutdown=3,
                                http=deadline_protocol(self.config.request_timeout_s),
                                limit_concurrency=self.config.max_connections, **https)
        if self._https is not None:
            # Our context (TLS 1.2 at least, re-read when the files change)
            # in place of the one uvicorn builds from the same files.
            config.load()
            config.ssl = self._https.context
            self._https.start_watching()
        self._server = uvicorn.Server(config)
        # uvicorn installs signal handlers only on the main thread; ours is not.
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="auditlake-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self.audit_writer.start()
        if self.verify_in_background:
            self.integrity.start()
        log.info("admin UI on %s://%s", "https" if self.tls is not None else "http", self.address)

    def stop(self) -> None:
        """Stop serving (in-flight requests get a few seconds)."""
        self.integrity.stop()
        if self._https is not None:
            self._https.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
        self.audit_writer.stop()  # after the last request: every read is recorded
        self.integrity.join(5.0)
        self.reader.close()

    # -- helpers used by the routes -------------------------------------------

    def audit(self, *, action: str, user: str, tenants: Sequence[str] | None, details: dict[str, Any],
              request: Any = None, resource_id: str = "", outcome: str = "success", reason: str = "",
              resource_type: str = "audit_log") -> None:
        """Record a read of the log.  The event is built, validated and
        stored by a background thread (``AuditWriter``) so the reader does not
        wait for it; its time is the time of the read."""
        tenant = tenants[0] if tenants is not None and len(tenants) == 1 else None
        ip = request.client.host if request is not None and request.client else ""
        ua = request.headers.get("user-agent", "") if request is not None else ""
        self.audit_writer.put(dict(action=action, user=user, tenant=tenant, resource_id=resource_id,
                                   details=details, ip=ip, user_agent=ua, outcome=outcome, reason=reason,
                                   resource_type=resource_type, at_us=int(time.time() * 1_000_000)))

    def tenant_exists(self, tenant: str) -> bool:
        """Whether ``tenant`` is real: an ingest key writes it, a user is
        granted it, or the lake holds an event of it (the lake's answer is
        kept a minute)."""
        now = time.monotonic()
        if now - self._tenants_seen.get(tenant, -1e9) < 60.0:
            return True
        known = any(tenant in k.tenants for k in self.ingest_keys.keys())  # noqa: SIM118 - a method
        known = known or any(tenant in u.tenants for u in self.users.users())
        if not known:
            cur = self.reader.cursor()
            try:
                known = bool(cur.execute("SELECT 1 FROM events WHERE tenant_id = ? LIMIT 1", [tenant]).fetchall())
            finally:
                cur.close()
        if known:
            if len(self._tenants_seen) > 10_000:
                self._tenants_seen.clear()
            self._tenants_seen[tenant] = now
        return known

    def cached(self, key: tuple[Any, ...], ttl: float, fn: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and now - hit[0] < ttl:
            return hit[1]
        value = fn()
        self._cache[key] = (now, value)
        if len(self._cache) > 256:
            self._cache.pop(next(iter(self._cache)))
        return value

    def audit_durably(self, *, action: str, user: str, tenants: Sequence[str] | None, details: dict[str, Any],
                      request: Any = None, resource_id: str = "", outcome: str = "success", reason: str = "",
                      resource_type: str = "audit_log") -> None:
        """Record a read of the log and return once it is durable (in the
        write-ahead log): for what must be on record before it happens."""
        from auditlake.collector.admin.readaudit import meta_event  # noqa: PLC0415
        from auditlake.collector.lake.batch import AcceptedBatch  # noqa: PLC0415

        event = _in_known_tenant(dict(
            action=action, user=user, tenant=tenants[0] if tenants is not None and len(tenants) == 1 else None,
            resource_id=resource_id, details=details,
            ip=request.client.host if request is not None and request.client else "",
            user_agent=request.headers.get("user-agent", "") if request is not None else "",
            outcome=outcome, reason=reason, resource_type=resource_type), self.tenant_exists)
        table = meta_event(**event)
        durable = self.collector.store(AcceptedBatch(f"admin-{secrets.token_hex(12)}",
                                                     int(time.time() * 1_000_000), table))
        if durable is not None:
            durable.result()


# -- TLS, metrics and health ------------------------------------------------------


def _served_tls(collector: Any, toml: dict[str, Any]) -> ServerTls | None:
    """The certificate files this listener serves with: the running
    collector's, else (in the admin process, whose host carries no
    settings) ``[collector]`` of the TOML file and ``AUDITLAKE_TLS_*``."""
    tls: ServerTls | None = getattr(collector.config, "tls", None)
    if tls is not None or isinstance(collector, _ReadOnlyHost):
        return tls
    from auditlake.collector.config import collector_config  # noqa: PLC0415

    return collector_config(toml).tls


def _status_socket_of(data: Any) -> Callable[[str], bytes]:
    """Asks the collector process of ``data`` through its status socket."""
    from auditlake.collector.ingest.status_socket import ask  # noqa: PLC0415

    state = Path(data.state)
    return lambda what: ask(state, what)


def _admin_registry(server: AdminServer) -> Any:
    """A registry of this process's families: the last integrity
    verification the admin shows (``/integrity``), read at each scrape."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415
    from prometheus_client.registry import Collector  # noqa: PLC0415

    class IntegrityGauges(Collector):
        """The integrity monitor's last result."""

        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Any:
            status = server.integrity.status
            monitor = server.integrity
            if status.get("ok") is not None:  # a verification that ran to the end
                yield GaugeMetricFamily("auditlake_integrity_ok", "1 when the last verification of the lake "
                                        "found no problem, 0 when it found some", value=int(bool(status["ok"])))
                yield GaugeMetricFamily("auditlake_integrity_problems", "Problems the last verification found",
                                        value=int(status.get("problem_count", len(status.get("problems", [])))))
            yield GaugeMetricFamily("auditlake_integrity_last_verify_timestamp_seconds", "Unix time the last "
                                    "verification ended (0: none yet)", value=monitor.finished_at)
            yield GaugeMetricFamily("auditlake_integrity_verify_seconds", "Seconds the last verification took",
                                    value=float(status.get("seconds") or 0.0))
            yield GaugeMetricFamily("auditlake_integrity_running", "1 while a verification runs",
                                    value=int(status.get("state") == "running"))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(IntegrityGauges())
    return registry


class OpsEndpoints:
    """Pure ASGI: ``/metrics``, ``/healthz`` and ``/readyz`` answered before
    the admin app (no login, no session), everything else passed on.

    /metrics is readable without credentials, as Prometheus expects: it
    holds counts, sizes and times, never a tenant, user, key or event
    (ingest/metrics.py keeps it so); an operator who must hide even those
    keeps the listener private or filters the path at the proxy
    (docs/operations.md)."""

    PATHS = ("/metrics", "/healthz", "/readyz")

    def __init__(self, app: Callable[..., Any], server: AdminServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool  # noqa: PLC0415

        if scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"GET only\n", "text/plain; charset=utf-8"
        else:
            # The collector is asked over a socket: off the event loop.
            status, body, content_type = await run_in_threadpool(self.answer, scope["path"])
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", content_type.encode()), (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def answer(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) of one of PATHS."""
        ask = self.server.ask_collector
        if path == "/metrics":
            from prometheus_client import generate_latest  # noqa: PLC0415

            from auditlake.collector.ingest.metrics import CONTENT_TYPE  # noqa: PLC0415

            collector = b""
            if ask is not None:
                try:
                    collector = ask("metrics")
                except OSError as exc:
                    log.warning("/metrics: the collector process does not answer (%s)", exc)
            reachable = (b"# HELP auditlake_collector_reachable 1 when the collector process answered this "
                         b"scrape (its families are above)\n# TYPE auditlake_collector_reachable gauge\n"
                         b"auditlake_collector_reachable " + (b"1" if collector else b"0") + b"\n")
            own = generate_latest(self.server.metrics_registry)
            return 200, collector + own + (reachable if ask is not None else b""), CONTENT_TYPE
        if ask is None:  # a read-only server: no ingest to wait for
            health: dict[str, Any] = {"ready": True, "phase": "read-only", "reason": ""}
        else:
            try:
                health = json.loads(ask("health"))
            except (OSError, ValueError) as exc:
                health = {"ready": False, "phase": "unreachable",
                          "reason": f"the collector process does not answer: {exc}"}
        if path == "/healthz":  # alive: the collector process answered, whatever it said
            alive = health["phase"] != "unreachable"
            body = {"ok": True} if alive else {"ok": False, "reason": health["reason"]}
            return (200 if alive else 503), (json.dumps(body) + "\n").encode(), "application/json"
        return (200 if health.get("ready") else 503), (json.dumps(health) + "\n").encode(), "application/json"


# -- the ASGI app ---------------------------------------------------------------------


def build_app(server: AdminServer) -> Any:
    """The ASGI application of ``server`` (admin/app.py assembles it)."""
    from auditlake.collector.admin.app import build_app as assemble  # noqa: PLC0415

    return assemble(server)


# -- CLI ----------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``auditlake users ...`` (the admin UI's users)."""
    from auditlake.collector.admin.users import register_users  # noqa: PLC0415

    register_users(sub)

