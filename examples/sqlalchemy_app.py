"""A small clinic app on SQLAlchemy whose data changes are audited with no
call to record() in the application code: auditlake.sdk.sqlalchemy turns
every committed create, update and delete (bulk statements included) into
an event, and reads of patient records into one event per query.

    .venv/bin/python examples/sqlalchemy_app.py

With no ``AUDITLAKE_ENDPOINT`` set it starts a throwaway collector on a
temporary lake, runs, shows what landed in the lake with DuckDB, and stops
it.  Against a running collector (``make demo`` prints its address; the
demo key writes tenant acme-health)::

    AUDITLAKE_ENDPOINT=127.0.0.1:4317 AUDITLAKE_API_KEY=alk_... \\
        .venv/bin/python examples/sqlalchemy_app.py --db clinic.db

The application's database is SQLite (``--db``, default a temporary file).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from sqlalchemy import ForeignKey, String, create_engine, delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from auditlake import sdk
from auditlake.sdk import sqlalchemy as audit_sqlalchemy

TENANT = "acme-health"


class Base(DeclarativeBase):
    pass


class Ward(Base):
    __tablename__ = "wards"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    patients: Mapped[list[Patient]] = relationship(back_populates="ward")


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    born: Mapped[date]
    ssn: Mapped[str] = mapped_column(String(11))  # redacted in every event: "ssn" is on the SDK's list
    status: Mapped[str] = mapped_column(String(20), default="admitted")
    ward_id: Mapped[int | None] = mapped_column(ForeignKey("wards.id"))
    ward: Mapped[Ward | None] = relationship(back_populates="patients")
    search_text: Mapped[str] = mapped_column(String(200), default="")  # derived: not worth auditing


def setup_audit() -> None:
    """The whole integration: which models, which fields, which reads."""
    audit_sqlalchemy.register(Base)  # every model: creates, updates, deletes
    audit_sqlalchemy.register(Patient, exclude=["search_text"], reads=True, read_ids_max=20)


def work(engine: Engine) -> None:
    """A morning at the clinic: every line is plain SQLAlchemy."""
    with sdk.actor(user_id="admin.lee", tenant_id=TENANT, ip_address="10.1.4.22"), Session(engine) as session:
        session.add_all([Ward(id=1, name="Cardiology"), Ward(id=2, name="Oncology")])
        session.add_all([
            Patient(id=i, name=f"Patient {i}", born=date(1960 + i, 1 + i % 12, 11), ssn=f"000-00-{i:04d}",
                    ward_id=1 + i % 2, search_text=f"patient {i}")
            for i in range(1, 31)
        ])
        session.commit()  # 32 create events, sent only now

    with sdk.actor(user_id="dr.jones", tenant_id=TENANT, ip_address="10.1.4.23"), Session(engine) as session:
        ward = session.get(Ward, 1)
        assert ward is not None
        names = [p.name for p in ward.patients]  # the ward's list: ONE read event naming the ids
        patient = session.get(Patient, 7)  # one record: a read event with resource_id 7
        assert patient is not None and names
        patient.status = "in surgery"  # update patients/7 status: admitted -> in surgery
        patient.ssn = "000-00-9999"  # reported as changed, values [REDACTED]
        session.commit()

    with sdk.actor(user_id="nurse.kim", tenant_id=TENANT), Session(engine) as session:
        session.add(Patient(id=99, name="Typo", born=date(2000, 1, 1), ssn="000-00-0099"))
        session.rollback()  # rolled back: nothing recorded
        # A bulk UPDATE: one event per row, at one extra SELECT.
        session.execute(update(Patient).where(Patient.ward_id == 2).values(status="discharged"))
        session.commit()

    with sdk.actor(user_id="admin.lee", tenant_id=TENANT), Session(engine) as session:
        session.execute(delete(Patient).where(Patient.id > 28))  # bulk DELETE: events 29 and 30
        session.commit()


def expected_events() -> int:
    # 32 creates, 2 reads (the ward's patients, patient 7), 1 update, 15 bulk updates, 2 deletes.
    return 32 + 2 + 1 + 15 + 2


@contextmanager
def local_collector() -> Iterator[tuple[str, str, Path]]:
    """A throwaway collector on a temporary lake: (endpoint, ingest key, data dir)."""
    data = Path(tempfile.mkdtemp(prefix="auditlake-sqlalchemy-"))
    cli = [sys.executable, "-m", "auditlake.collector"]
    key = subprocess.run([*cli, "keys", "create", "--data", str(data), "--tenant", TENANT],
                         capture_output=True, text=True, check=True).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = data / "ready"
    proc = subprocess.Popen([*cli, "serve", "--data", str(data), "--grpc-listen", f"127.0.0.1:{port}",
                             "--http-listen", "", "--seal-interval", "0.2", "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the local collector did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}", key, data
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def show_lake(data: Path, expected: int) -> int:
    """Wait until the events are queryable, then print them as the lake has them."""
    query = [sys.executable, "-m", "auditlake.collector", "query", "--data", str(data), "--format", "jsonl"]
    deadline = time.monotonic() + 20
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        out = subprocess.run([*query, "SELECT action, resource_type, resource_id, user_id, changes, metadata "
                              "FROM events WHERE service = 'clinic-sqlalchemy' ORDER BY created_at, id"],
                             capture_output=True, text=True, check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) >= expected:
            break
        time.sleep(0.2)
    print(f"in the lake: {len(rows)} events")
    for row in rows:
        if row["action"] != "create" or row["resource_id"] in ("1", "7"):
            detail = row["changes"] if row["changes"] not in ("", "{}") else row["metadata"]
            print(f"  {row['action']:<7} {row['resource_type']}/{row['resource_id'] or '-':<4} "
                  f"by {row['user_id']:<10} {detail}")
    return len(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="the application's SQLite file (default: a new temporary file)")
    args = p.parse_args()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="clinic-")) / "clinic.db"
    db.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)
    setup_audit()

    if os.environ.get("AUDITLAKE_ENDPOINT"):
        sdk.configure(service_name="clinic-sqlalchemy")
        work(engine)
        sdk.flush(timeout=10)
        recorded = sdk.stats().recorded
        sdk.shutdown(timeout=10)
        print(f"recorded {recorded} events to {os.environ['AUDITLAKE_ENDPOINT']}")
        return 0 if recorded == expected_events() else 1
    with local_collector() as (endpoint, key, data):
        sdk.configure(endpoint=endpoint, api_key=key, service_name="clinic-sqlalchemy",
                      spool_dir=str(data / "app-spool"))
        work(engine)
        sdk.shutdown(timeout=10)
        stored = show_lake(data, expected_events())
    return 0 if stored == expected_events() else 1


if __name__ == "__main__":
    sys.exit(main())
