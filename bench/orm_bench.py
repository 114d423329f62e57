"""ORM capture overhead: auditlake's SQLAlchemy and Django integrations next
to the same work without them, measured in the same run.

* per-row cost of a captured INSERT and UPDATE in a transaction of 100 rows;
* a bulk UPDATE of 10,000 rows: extra queries and extra time.

Rows come from :func:`sqlalchemy_rows` and :func:`django_rows` (each
integration's own section of this file).

    .venv/bin/python bench/orm_bench.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

Row = tuple[str, str, str, str]


# -- SQLAlchemy ------------------------------------------------------------------


#
# In this process: SQLite in memory, one model, the same work with
# auditlake.sdk.sqlalchemy registered and without it (unregistered: no
# listener at all), alternating rounds.  The SDK exports to an exporter that
# acknowledges every batch; each round ends with sdk.flush(), and two
# clocks are read: the caller's wall time (the commit returns: what the
# application waits) and the process CPU time of all threads up to the
# flush (the export thread's packing included, its idle waiting not).


class _SaDiscard:
    """An exporter that acknowledges every batch and keeps nothing."""

    def export(self, request: Any, timeout: float) -> Any:
        from auditlake.packing import event_count
        from auditlake.sdk import ExportResult, ExportStatus

        return ExportResult(ExportStatus.OK, accepted=event_count(request))

    def close(self) -> None:
        pass


def _sa_setup() -> tuple[Any, Any]:
    """(engine, model class) of a fresh in-memory database."""
    from sqlalchemy import Column, Integer, Numeric, String, create_engine
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class Account(Base):  # the columns of the Django rows' model
        __tablename__ = "accounts"
        id = Column(Integer, primary_key=True)
        name = Column(String(100), nullable=False)
        ward = Column(String(10), default="A")
        age = Column(Integer, nullable=True)
        balance = Column(Numeric(10, 2), default=0)
        notes = Column(String(200), default="")

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return engine, Account


def _sa_timed(capture: bool, model: Any, work: Any) -> tuple[float, float]:
    """(caller's wall seconds, CPU seconds of all threads including the flush) of ``work()``."""
    import time

    from auditlake import sdk
    from auditlake.sdk import sqlalchemy as audit_sqlalchemy

    if capture:
        audit_sqlalchemy.register(model)
    else:
        audit_sqlalchemy.unregister()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        wall = time.perf_counter() - wall
        if capture:
            sdk.flush(timeout=30)
        return wall, time.process_time() - cpu
    finally:
        audit_sqlalchemy.unregister()


def _sa_per_row(engine: Any, model: Any, rounds: int, batch: int) -> dict[tuple[str, bool], tuple[float, float]]:
    """Median (wall, CPU) µs per row of INSERT and UPDATE in transactions of ``batch`` rows."""
    import statistics

    from sqlalchemy import delete, select
    from sqlalchemy.orm import Session

    samples: dict[tuple[str, bool], list[tuple[float, float]]] = {}

    def insert() -> None:
        with Session(engine) as session:
            session.add_all([model(name=f"row {i}", age=i % 90, balance=i) for i in range(batch)])
            session.commit()

    def update() -> None:
        with Session(engine) as session:
            for row in session.scalars(select(model).limit(batch)):
                row.ward = "B" if row.ward == "A" else "A"
                row.balance = row.balance + 1
            session.commit()

    for _ in range(rounds):
        for capture in (False, True):  # alternate: both see the same machine noise
            with Session(engine) as session:
                session.execute(delete(model))
                session.commit()
            samples.setdefault(("insert", capture), []).append(_sa_timed(capture, model, insert))
            samples.setdefault(("update", capture), []).append(_sa_timed(capture, model, update))
    return {k: (statistics.median(w for w, _ in v) / batch * 1e6, statistics.median(c for _, c in v) / batch * 1e6)
            for k, v in samples.items()}


def _sa_bulk(engine: Any, model: Any, rows: int, rounds: int) -> dict[bool, tuple[float, float, int]]:
    """(median wall seconds, median CPU seconds, statements sent) of one bulk UPDATE of ``rows`` rows."""
    import statistics

    from sqlalchemy import delete, event, insert, update
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        session.execute(delete(model))
        session.execute(insert(model), [{"id": i, "name": f"row {i}", "balance": i} for i in range(1, rows + 1)])
        session.commit()
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        sent.append(statement)

    results: dict[bool, tuple[list[tuple[float, float]], int]] = {}
    for i in range(rounds):
        for capture in (False, True):
            ward = f"W{i}{int(capture)}"

            def bulk(ward: str = ward) -> None:
                with Session(engine) as session:
                    session.execute(update(model).where(model.id > 0).values(ward=ward, balance=model.balance + 1))
                    session.commit()

            sent.clear()
            event.listen(engine, "before_cursor_execute", count)
            try:
                timed = _sa_timed(capture, model, bulk)
            finally:
                event.remove(engine, "before_cursor_execute", count)
            statements = sum(1 for s in sent if s.split(None, 1)[0].upper() in ("SELECT", "UPDATE"))
            results.setdefault(capture, ([], statements))[0].append(timed)
    return {k: (statistics.median(w for w, _ in v[0]), statistics.median(c for _, c in v[0]), v[1])
            for k, v in results.items()}


def sqlalchemy_rows(quick: bool = False) -> list[Row]:
    """Rows (metric, auditlake, baseline, ratio) for the SQLAlchemy integration."""
    import gc

    from auditlake import sdk

    sdk.configure(exporter=_SaDiscard(), service_name="orm-bench", tenant_id="bench", spool_enabled=False,
                  queue_max_size=200_000)
    try:
        engine, model = _sa_setup()
        gc.collect()
        per_row = _sa_per_row(engine, model, rounds=5 if quick else 30, batch=100)
        bulk_rows = 2_000 if quick else 10_000
        bulk = _sa_bulk(engine, model, bulk_rows, rounds=1 if quick else 5)
        engine.dispose()
    finally:
        sdk.shutdown(timeout=10)
    out: list[Row] = []
    for op in ("insert", "update"):
        (wall, cpu), (plain_wall, plain_cpu) = per_row[(op, True)], per_row[(op, False)]
        out.append((f"SQLAlchemy ORM {op.upper()}, transactions of 100 rows (SQLite): per row, caller's thread",
                    f"{wall:.1f} µs (+{wall - plain_wall:.1f} µs)", f"plain SQLAlchemy: {plain_wall:.1f} µs",
                    f"{wall / plain_wall:.2f}×"))
        out.append((f"SQLAlchemy ORM {op.upper()}, 100 rows: per row, CPU of all threads (export included)",
                    f"{cpu:.1f} µs (+{cpu - plain_cpu:.1f} µs)", f"plain SQLAlchemy: {plain_cpu:.1f} µs",
                    f"{cpu / plain_cpu:.2f}×"))
    (wall, cpu, sent), (plain_wall, plain_cpu, plain_sent) = bulk[True], bulk[False]
    out.append((f"SQLAlchemy bulk UPDATE of {bulk_rows:,} rows (SQLite): statements",
                f"{sent} (+{sent - plain_sent}: SELECT ... FOR UPDATE of the old rows)",
                f"plain SQLAlchemy: {plain_sent}", f"+{sent - plain_sent}"))
    out.append((f"SQLAlchemy bulk UPDATE of {bulk_rows:,} rows (SQLite): caller's time, {bulk_rows:,} events",
                f"{wall * 1000:.0f} ms (+{(wall - plain_wall) / bulk_rows * 1e6:.1f} µs/row)",
                f"plain SQLAlchemy: {plain_wall * 1000:.0f} ms", f"{wall / plain_wall:.1f}×"))
    out.append((f"SQLAlchemy bulk UPDATE of {bulk_rows:,} rows: CPU of all threads (export included)",
                f"{cpu * 1000:.0f} ms (+{(cpu - plain_cpu) / bulk_rows * 1e6:.1f} µs/row)",
                f"plain SQLAlchemy: {plain_cpu * 1000:.0f} ms", f"{cpu / plain_cpu:.1f}×"))
    return out


# -- Django ----------------------------------------------------------------------
#
# Runs in a child process (Django is configured once per process): SQLite in
# memory, four models with the same columns — Plain (nothing), Audited
# (auditlake.sdk.django), History (django-simple-history), Logged
# (django-auditlog) — and the SDK exporting to an exporter that acknowledges
# every batch, so the SDK's whole client-side cost (capture, enqueue, the
# export thread packing batches) is in the figures, and no network is.

_DJANGO_MODELS = '''
from auditlog.registry import auditlog
from django.db import models
from simple_history.models import HistoricalRecords


class Columns(models.Model):
    name = models.CharField(max_length=100)
    ward = models.CharField(max_length=10, default="A")
    age = models.IntegerField(null=True)
    balance = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    notes = models.TextField(blank=True)

    class Meta:
        abstract = True


class Plain(Columns):
    pass


class Audited(Columns):  # settings.AUDITLAKE registers it
    pass


class History(Columns):
    history = HistoricalRecords()


class Logged(Columns):
    pass


auditlog.register(Logged)
'''

_DJANGO_KINDS = ("Plain", "Audited", "History", "Logged")


def _django_setup() -> Any:
    """Configure Django in this process with the four bench models; returns the models module."""
    import importlib
    import tempfile

    import django
    from django.conf import settings
    from django.core.management import call_command

    from auditlake import sdk
    from auditlake.sdk import ExportResult, ExportStatus

    class Acknowledge:
        """A collector that acknowledges every batch at once."""

        def export(self, request: Any, timeout: float) -> ExportResult:
            return ExportResult(ExportStatus.OK)

        def close(self) -> None:
            pass

    app_dir = Path(tempfile.mkdtemp(prefix="auditlake-bench-django-"))
    (app_dir / "benchapp").mkdir()
    (app_dir / "benchapp" / "__init__.py").write_text("")
    (app_dir / "benchapp" / "models.py").write_text(_DJANGO_MODELS)
    sys.path.insert(0, str(app_dir))
    apps = ["django.contrib.contenttypes", "django.contrib.auth", "simple_history", "auditlog", "benchapp",
            "auditlake.sdk.django"]
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=apps, USE_TZ=True, DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        MIGRATION_MODULES={label: None for label in ("contenttypes", "auth", "auditlog", "benchapp")},
        AUDITLAKE={"models": {"benchapp.Audited": {}}},
    )
    sdk.configure(exporter=Acknowledge(), service_name="bench", tenant_id="bench", spool_enabled=False)
    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    return importlib.import_module("benchapp.models")


class _DjangoQueries:
    """Counts the statements a connection executes (``connection.execute_wrapper``);
    unlike CaptureQueriesContext it has no 9,000-query ceiling."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def _django_per_row(models: Any, rounds: int, n: int = 100) -> dict[str, Any]:
    """Median µs per captured INSERT and UPDATE, transactions of ``n`` rows; queries per row."""
    import statistics
    import time

    from django.db import connection, transaction

    times: dict[str, dict[str, list[float]]] = {k: {"insert": [], "update": []} for k in _DJANGO_KINDS}
    for r in range(rounds):  # interleaved, so every kind sees the same machine noise
        for kind in _DJANGO_KINDS:
            model = getattr(models, kind)
            t0 = time.perf_counter()
            with transaction.atomic():
                for i in range(n):
                    model.objects.create(name=f"n{i}", age=i, balance="12.50")
            times[kind]["insert"].append((time.perf_counter() - t0) / n * 1e6)
            rows = list(model.objects.order_by("-pk")[:n])
            t0 = time.perf_counter()
            with transaction.atomic():
                for row in rows:
                    row.ward = f"w{r % 10}"
                    row.age += 1
                    row.save()
            times[kind]["update"].append((time.perf_counter() - t0) / n * 1e6)
    queries: dict[str, dict[str, int]] = {}
    for kind in _DJANGO_KINDS:
        model = getattr(models, kind)
        inserted, updated = _DjangoQueries(), _DjangoQueries()
        with transaction.atomic(), connection.execute_wrapper(inserted):
            row = model.objects.create(name="q", age=1)
        row.ward = "q"
        with transaction.atomic(), connection.execute_wrapper(updated):
            row.save()
        queries[kind] = {"insert": inserted.count, "update": updated.count}
    median = {k: {op: statistics.median(v) for op, v in ops.items()} for k, ops in times.items()}
    return {"us": median, "queries": queries}


def _django_bulk(models: Any, n: int, rounds: int) -> dict[str, Any]:
    """bulk_update (and QuerySet.update) of ``n`` rows: queries, median seconds, rows captured."""
    import statistics
    import time

    from auditlog.models import LogEntry
    from django.db import connection, transaction
    from simple_history.utils import bulk_update_with_history

    from auditlake import sdk

    def captured() -> int:
        return (sdk.stats().recorded + models.History.history.count()
                + LogEntry.objects.filter(action=LogEntry.Action.UPDATE).count())

    def timed(work: Any) -> dict[str, float]:
        """Seconds up to the commit (auditlake records at commit); queries
        inside the transaction (BEGIN and COMMIT are not counted)."""
        before = captured()
        sent = _DjangoQueries()
        t0 = time.perf_counter()
        with transaction.atomic(), connection.execute_wrapper(sent):
            work()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "queries": sent.count, "captured": captured() - before}

    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):  # interleaved, as above
        for kind in _DJANGO_KINDS:
            model = getattr(models, kind)
            model.objects.all().delete()
            model.objects.bulk_create([model(name=f"b{i}", age=i) for i in range(n)])
            objs = list(model.objects.all())
            for obj in objs:
                obj.ward = f"bulk{r}"
            if kind == "History":
                run = timed(lambda objs=objs: bulk_update_with_history(objs, models.History, ["ward"]))
            else:
                run = timed(lambda objs=objs, model=model: model.objects.bulk_update(objs, ["ward"]))
            runs.setdefault(kind, []).append(run)
            if kind == "Logged" and r == 0:  # what auditlog needs to capture the same rows: save() each
                for obj in objs:
                    obj.ward = "saved"
                runs["Logged save() loop"] = [timed(lambda objs=objs: [obj.save() for obj in objs])]
            if kind in ("Plain", "Audited"):
                update = timed(lambda model=model, r=r: model.objects.update(ward=f"queryset{r}"))
                runs.setdefault(f"{kind} update()", []).append(update)
    return {name: {**found[-1], "seconds": statistics.median(run["seconds"] for run in found)}
            for name, found in runs.items()}


def django_child(quick: bool) -> None:
    """The measurements, printed as one JSON line (run by :func:`django_rows`)."""
    import gc
    import json

    from auditlake import sdk

    models = _django_setup()
    gc.collect()
    per_row = _django_per_row(models, rounds=5 if quick else 30)
    bulk = _django_bulk(models, 2_000 if quick else 10_000, rounds=1 if quick else 5)
    sdk.shutdown(timeout=10)
    print(json.dumps({"per_row": per_row, "bulk": bulk}))


def _less_overhead(ours: float, history: float, logged: float) -> str:
    if ours < 1.0:  # within the noise of a shared machine: a ratio would mean nothing
        return "auditlake's overhead within noise"
    return f"{history / ours:.1f}× / {logged / ours:.1f}× less overhead than simple-history / auditlog"


def django_rows(quick: bool = False) -> list[Row]:
    """Rows (metric, auditlake, baseline, ratio) for the Django integration."""
    import json
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import orm_bench; orm_bench.django_child({quick!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the Django bench failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    us, queries, bulk = result["per_row"]["us"], result["per_row"]["queries"], result["bulk"]
    n = "2,000" if quick else "10,000"
    rows: list[Row] = []
    for op, sql in (("insert", "INSERT (create())"), ("update", "UPDATE (save() of a loaded row)")):
        plain, ours = us["Plain"][op], us["Audited"][op]
        history, logged = us["History"][op], us["Logged"][op]
        q = {kind: queries[kind][op] for kind in _DJANGO_KINDS}
        rows.append((
            f"Django {sql} per row, transactions of 100 (SQLite in memory; queries per row)",
            f"+{ours - plain:.0f} µs/row ({ours:.0f} µs; {q['Audited']} queries)",
            f"plain {plain:.0f} µs ({q['Plain']}); django-simple-history +{history - plain:.0f} µs "
            f"({q['History']}); django-auditlog +{logged - plain:.0f} µs ({q['Logged']})",
            _less_overhead(ours - plain, history - plain, logged - plain),
        ))
    plain, ours, history = bulk["Plain"], bulk["Audited"], bulk["History"]
    logged, loop = bulk["Logged"], bulk["Logged save() loop"]
    rows.append((
        f"Django bulk_update() of {n} rows: queries (rows captured)",
        f"{ours['queries']} (+{ours['queries'] - plain['queries']}; {ours['captured']:,} events)",
        f"plain {plain['queries']}; simple-history bulk_update_with_history {history['queries']} "
        f"({history['captured']:,} records); auditlog {logged['queries']} ({logged['captured']} entries: "
        f"bulk_update is not captured; save() per row: {loop['queries']:,} queries)",
        f"+{ours['queries'] - plain['queries']} query",
    ))
    rows.append((
        f"Django bulk_update() of {n} rows: time in the transaction (median of {1 if quick else 5})",
        f"{ours['seconds'] * 1e3:.0f} ms (+{(ours['seconds'] - plain['seconds']) * 1e3:.0f} ms)",
        f"plain {plain['seconds'] * 1e3:.0f} ms; simple-history {history['seconds'] * 1e3:.0f} ms; "
        f"auditlog {logged['seconds'] * 1e3:.0f} ms (nothing captured), save() per row "
        f"{loop['seconds'] * 1e3:.0f} ms",
        f"{ours['seconds'] / plain['seconds']:.2f}× plain",
    ))
    plain_update, our_update = bulk["Plain update()"], bulk["Audited update()"]
    rows.append((
        f"Django QuerySet.update() of {n} rows: queries, time (median of {1 if quick else 5})",
        f"{our_update['queries']} queries, {our_update['seconds'] * 1e3:.0f} ms "
        f"({our_update['captured']:,} events)",
        f"plain {plain_update['queries']} query, {plain_update['seconds'] * 1e3:.0f} ms; "
        "simple-history and auditlog capture nothing",
        f"+{our_update['queries'] - plain_update['queries']} query, "
        f"+{(our_update['seconds'] - plain_update['seconds']) * 1e3:.0f} ms",
    ))
    return rows


# -- both ------------------------------------------------------------------------


def rows(quick: bool = False) -> list[Row]:
    """Every ORM row, SQLAlchemy first."""
    return [*sqlalchemy_rows(quick), *django_rows(quick)]


def bench_rows(quick: bool = False) -> list[Row]:
    """Rows for bench/run.py."""
    return rows(quick)


if __name__ == "__main__":
    from common import table_text

    print(table_text(rows(quick="--quick" in sys.argv)))
