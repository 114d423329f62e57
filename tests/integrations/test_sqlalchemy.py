"""auditlake.sdk.sqlalchemy: every committed change of a registered model or
table is one event, on SQLite and on a real PostgreSQL server.

Each test runs on both engines (``engine`` is parametrized).  Query counts
are statements the database received, counted with an Engine listener,
with and without auditlake on the same data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from auditlake import sdk
from auditlake.sdk import sqlalchemy as audit_sqlalchemy
from auditlake.sdk.testing import AuditEvents, configure_for_tests
from tests.integrations.conftest import PostgresServer


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column("account_name", String(80))  # attribute and column names differ
    status: Mapped[str] = mapped_column(String(20), default="open")
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0.00"))
    password_hash: Mapped[str | None] = mapped_column(String(80), default=None)
    notes: Mapped[str | None] = mapped_column(String(200), default=None)
    revision: Mapped[int] = mapped_column(Integer, default=0, onupdate=lambda: _REVISIONS.pop(0))


class Membership(Base):
    """A composite primary key."""

    __tablename__ = "memberships"
    org_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    user_id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(20))


class Doctor(Base):
    __tablename__ = "doctors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    patients: Mapped[list[Patient]] = relationship(back_populates="doctor")


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    ssn: Mapped[str] = mapped_column(String(20))
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("doctors.id"))
    doctor: Mapped[Doctor | None] = relationship(back_populates="patients")


class Unaudited(Base):
    __tablename__ = "unaudited"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(String(20))


ledger = Table(
    "ledger", Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("account", String(40)),
    Column("amount", Numeric(12, 2)),
)

#: Values of Account.revision's Python-side onupdate default, in call order.
_REVISIONS: list[int] = []


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh database with the test tables: a SQLite file, or a new
    database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        name = server.create_database(f"sa_{uuid.uuid4().hex[:12]}")
        eng = create_engine(server.url(name), pool_size=8)
    Base.metadata.create_all(eng)
    _REVISIONS[:] = list(range(1, 1000))
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def events() -> Iterator[AuditEvents]:
    """The SDK recording in memory, and the test models registered."""
    view = configure_for_tests(tenant_id="t-test")
    audit_sqlalchemy.register(Account, exclude=["notes"])
    audit_sqlalchemy.register(Membership)
    audit_sqlalchemy.register(Patient, reads=True, read_ids_max=5)
    audit_sqlalchemy.register(Doctor)
    audit_sqlalchemy.register(ledger, resource_type="ledger_entry")
    try:
        yield view
    finally:
        audit_sqlalchemy.unregister()


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements ``engine`` sends inside the block."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def changes(event_: dict[str, Any]) -> dict[str, Any]:
    return json.loads(event_["changes"] or "{}")  # type: ignore[no-any-return]


def metadata(event_: dict[str, Any]) -> dict[str, Any]:
    return json.loads(event_["metadata"] or "{}")  # type: ignore[no-any-return]


def seed_accounts(engine: Engine, n: int) -> None:
    with Session(engine) as session:
        session.add_all([Account(id=i, name=f"acct-{i}", balance=Decimal(i)) for i in range(1, n + 1)])
        session.commit()


def by_resource(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["resource_id"]: e for e in found}


def extra_statements(engine: Engine, events: AuditEvents, operation: Callable[[], None],
                     reset: Callable[[], None]) -> tuple[int, int]:
    """(statements without auditlake, with it) for ``operation`` on the same data."""
    audit_sqlalchemy.unregister()
    with statements(engine) as plain:
        operation()
    reset()
    audit_sqlalchemy.register(Account, exclude=["notes"])
    audit_sqlalchemy.register(ledger, resource_type="ledger_entry")
    with statements(engine) as captured:
        operation()
    return len(plain), len(captured)


# -- the unit of work ------------------------------------------------------------------


def test_insert_records_one_create_with_the_values_and_the_generated_key(engine: Engine, events: AuditEvents) -> None:
    with sdk.actor(user_id="alice"), Session(engine) as session:
        session.add_all([Account(name="first", balance=Decimal("10.50")), Account(name="second")])
        session.commit()
    created = events.find(action="create", resource_type="accounts")
    assert len(created) == 2
    first = next(e for e in created if changes(e)["name"]["after"] == "first")
    assert first["user_id"] == "alice" and first["tenant_id"] == "t-test" and first["outcome"] == "success"
    assert first["resource_id"] == str(changes(first)["id"]["after"])
    assert changes(first) == {
        "id": {"before": None, "after": int(first["resource_id"])},
        "name": {"before": None, "after": "first"},  # the attribute name, not the column's
        "status": {"before": None, "after": "open"},
        "balance": {"before": None, "after": "10.50"},
        "revision": {"before": None, "after": 0},
    }


def test_update_records_only_the_changed_fields_before_and_after(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 1)
    events.clear()
    with sdk.actor(user_id="bob"), Session(engine) as session:
        account = session.get(Account, 1)
        assert account is not None
        account.status = "frozen"
        account.notes = "excluded from the policy"
        account.name = account.name  # set to the same value: no change
        session.commit()
    event_ = events.assert_recorded(action="update", resource_type="accounts", resource_id="1")
    assert event_["user_id"] == "bob"
    assert changes(event_) == {"status": {"before": "open", "after": "frozen"},
                               "revision": {"before": 0, "after": 1}}


def test_a_change_of_excluded_fields_alone_records_nothing(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 1)
    events.clear()
    with Session(engine) as session:
        account = session.get(Account, 1)
        assert account is not None
        account.notes = "only an excluded field"
        session.commit()
    assert [e for e in events.events if e["action"] == "update" and "notes" in changes(e)] == []
    # revision's onupdate fires on any UPDATE: that is a real change of a captured field.
    assert [changes(e) for e in events.find(action="update")] == [{"revision": {"before": 0, "after": 1}}]


def test_secret_fields_are_redacted_as_the_sdk_diff_does(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        session.add(Patient(id=1, name="Ann", ssn="123-45-6789"))
        session.add(Account(id=1, name="x", password_hash="argon2..."))
        session.commit()
    patient = events.assert_recorded(action="create", resource_type="patients")
    assert changes(patient)["ssn"] == {"before": None, "after": "[REDACTED]"}
    account = events.assert_recorded(action="create", resource_type="accounts")
    assert changes(account)["password_hash"] == {"before": None, "after": "[REDACTED]"}
    assert "123-45-6789" not in json.dumps(events.events)


def test_updating_an_object_expired_by_commit_reads_its_old_values_in_one_select(
        engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 3)
    with Session(engine) as session:
        accounts = session.scalars(select(Account).order_by(Account.id)).all()
        session.commit()  # expires every attribute
        events.clear()
        for account in accounts:
            account.status = "closed"  # the ORM does not load the old value
        with statements(engine) as sent:
            session.commit()
    assert sum(1 for s in sent if s.lstrip().upper().startswith("SELECT")) >= 1
    ours = [s for s in sent if "IN (" in s.upper() and "accounts" in s]
    assert len(ours) == 1  # one SELECT for the three objects' old values, not one each
    for i in (1, 2, 3):
        event_ = events.assert_recorded(action="update", resource_id=str(i))
        assert changes(event_)["status"] == {"before": "open", "after": "closed"}


def test_delete_records_the_last_values(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 2)
    events.clear()
    with sdk.actor(user_id="carol"), Session(engine) as session:
        account = session.get(Account, 2)
        session.delete(account)
        session.commit()
    event_ = events.assert_recorded(action="delete", resource_type="accounts", resource_id="2")
    assert event_["user_id"] == "carol"
    assert changes(event_)["name"] == {"before": "acct-2", "after": None}
    assert changes(event_)["balance"] == {"before": "2.00", "after": None}


def test_composite_keys_are_joined_with_commas(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        session.add(Membership(org_id="acme", user_id=7, role="admin"))
        session.commit()
        membership = session.get(Membership, ("acme", 7))
        assert membership is not None
        membership.role = "viewer"
        session.commit()
    assert events.assert_recorded(action="create", resource_type="memberships")["resource_id"] == "acme,7"
    updated = events.assert_recorded(action="update", resource_type="memberships")
    assert updated["resource_id"] == "acme,7"
    assert changes(updated) == {"role": {"before": "admin", "after": "viewer"}}


def test_unregistered_models_are_not_recorded_and_cost_no_query(engine: Engine, events: AuditEvents) -> None:
    with statements(engine) as sent, Session(engine) as session:
        session.add(Unaudited(id=1, value="a"))
        session.commit()
        row = session.get(Unaudited, 1)
        assert row is not None
        row.value = "b"
        session.execute(update(Unaudited).values(value="c"))
        session.execute(delete(Unaudited))
        session.commit()
    assert events.events == []
    assert not any("FOR UPDATE" in s or "IN (" in s.upper() for s in sent)


# -- transactions ----------------------------------------------------------------------


def test_nothing_is_recorded_before_commit_and_nothing_after_rollback(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        session.add(Account(id=1, name="kept back"))
        session.flush()
        assert events.events == []  # flushed, not committed
        session.rollback()
        session.add(Account(id=2, name="also rolled back"))
        session.execute(update(Account).values(status="x"))
        session.rollback()
    assert events.events == []
    with Session(engine) as session:
        assert session.scalars(select(Account)).all() == []


def test_a_rolled_back_savepoint_discards_its_own_events_only(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        session.add(Account(id=1, name="outer"))
        with session.begin_nested():  # released: its events wait for the outer commit
            session.add(Account(id=2, name="released savepoint"))
        savepoint = session.begin_nested()
        session.add(Account(id=3, name="rolled back savepoint"))
        session.execute(update(Account).where(Account.id == 1).values(status="rolled back"))
        session.flush()
        savepoint.rollback()
        assert events.events == []
        session.commit()
    assert sorted(e["resource_id"] for e in events.find(action="create")) == ["1", "2"]
    assert events.find(action="update") == []


def test_a_released_savepoint_is_discarded_with_its_rolled_back_transaction(
        engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        with session.begin_nested():
            session.add(Account(id=1, name="released, then the outer rolls back"))
        session.rollback()
    assert events.events == []


def test_a_failed_flush_records_nothing(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 1)
    events.clear()
    with Session(engine) as session:
        session.add(Account(id=1, name="duplicate key"))
        with pytest.raises(Exception, match="(?i)unique|duplicate"):
            session.commit()
        session.rollback()
        session.add(Account(id=2, name="after the failure"))
        session.commit()
    assert [e["resource_id"] for e in events.events] == ["2"]


def test_the_actor_is_the_one_in_force_at_flush_time(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        with sdk.actor(user_id="dave", tenant_id="acme", ip_address="10.0.0.9"):
            session.add(Account(id=1, name="made by dave"))
            session.flush()
        with sdk.actor(user_id="erin", tenant_id="acme"):
            session.add(Account(id=2, name="made by erin"))
            session.commit()  # autoflush of erin's change, one commit for both
    assert events.assert_recorded(resource_id="1")["user_id"] == "dave"
    assert events.assert_recorded(resource_id="1")["ip_address"] == "10.0.0.9"
    assert events.assert_recorded(resource_id="2")["user_id"] == "erin"
    assert {e["tenant_id"] for e in events.events} == {"acme"}


def test_concurrent_sessions_in_threads_keep_their_own_actors_and_transactions(
        engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 40)
    events.clear()
    errors: list[BaseException] = []
    ready = threading.Barrier(4)

    def work(worker: int) -> None:
        try:
            with sdk.actor(user_id=f"worker-{worker}"):
                ready.wait(10)
                for i in range(worker * 10 + 1, worker * 10 + 11):
                    with Session(engine) as session:
                        account = session.get(Account, i)
                        assert account is not None
                        account.status = f"by-{worker}"
                        session.flush()
                        if i % 2:
                            session.commit()
                        else:
                            session.rollback()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    updated = events.find(action="update")
    assert sorted(int(e["resource_id"]) for e in updated) == [i for i in range(1, 41) if i % 2]
    for e in updated:
        worker = (int(e["resource_id"]) - 1) // 10
        assert e["user_id"] == f"worker-{worker}"
        assert changes(e)["status"] == {"before": "open", "after": f"by-{worker}"}


def test_a_session_joined_to_an_outer_transaction_waits_for_its_commit(engine: Engine, events: AuditEvents) -> None:
    with engine.connect() as conn:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            session.add(Account(id=1, name="inside a test transaction"))
            session.commit()  # releases the session's savepoint only
        assert events.events == []
        outer.rollback()
    assert events.events == []
    with engine.connect() as conn:
        outer = conn.begin()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            session.add(Account(id=2, name="committed by the outer transaction"))
            session.commit()
        outer.commit()
    assert [e["resource_id"] for e in events.events] == ["2"]


# -- bulk statements ----------------------------------------------------------------------


def test_orm_bulk_update_records_each_row_at_one_extra_select(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 20)

    def operation() -> None:
        with Session(engine) as session:
            session.execute(update(Account).where(Account.balance > 10).values(
                status="review", balance=Account.balance * 2))
            session.commit()

    def reset() -> None:
        with Session(engine) as session:
            session.execute(update(Account).where(Account.balance > 10).values(
                status="open", balance=Account.balance / 2))
            session.commit()

    events.clear()
    plain, captured = extra_statements(engine, events, operation, reset)
    assert captured == plain + 1, (plain, captured)
    updated = by_resource(events.find(action="update"))
    assert sorted(map(int, updated)) == list(range(11, 21))
    assert changes(updated["15"])["status"] == {"before": "open", "after": "review"}
    assert changes(updated["15"])["balance"] == {"before": "15.00", "after": "30.00"}  # evaluated by the database
    assert metadata(updated["15"]) == {"bulk": True}


def test_orm_bulk_delete_records_each_row_at_one_extra_select(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 10)

    def operation() -> None:
        with sdk.actor(user_id="janitor"), Session(engine) as session:
            session.execute(delete(Account).where(Account.id <= 5))
            session.commit()

    events.clear()
    plain, captured = extra_statements(engine, events, operation, lambda: seed_accounts(engine, 5))
    assert captured == plain + 1, (plain, captured)
    deleted = by_resource(events.find(action="delete"))
    assert sorted(map(int, deleted)) == [1, 2, 3, 4, 5]
    assert deleted["3"]["user_id"] == "janitor"
    assert changes(deleted["3"])["name"] == {"before": "acct-3", "after": None}


def test_orm_bulk_update_by_primary_key_reads_all_old_rows_in_one_select(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 50)
    rows = [{"id": i, "status": f"s{i}"} for i in range(1, 51)]

    def operation() -> None:
        with Session(engine) as session:
            session.execute(update(Account), rows)
            session.commit()

    def reset() -> None:
        with Session(engine) as session:
            session.execute(update(Account).values(status="open"))
            session.commit()

    events.clear()
    plain, captured = extra_statements(engine, events, operation, reset)
    assert captured == plain + 1, (plain, captured)
    updated = by_resource(events.find(action="update"))
    assert len(updated) == 50
    assert changes(updated["42"])["status"] == {"before": "open", "after": "s42"}


def test_orm_bulk_insert_records_each_row_with_its_generated_key(engine: Engine, events: AuditEvents) -> None:
    rows = [{"name": f"bulk-{i}"} for i in range(30)]

    def operation() -> None:
        with Session(engine) as session:
            session.execute(insert(Account), rows)
            session.commit()

    plain, captured = extra_statements(engine, events, operation, lambda: None)
    # The keys come back by RETURNING in the INSERT itself (insertmanyvalues
    # pages of 1,000 rows): no extra statement below a page.
    assert captured == plain, (plain, captured)
    created = events.find(action="create")
    assert len(created) == 30
    with Session(engine) as session:
        stored = dict(session.execute(select(Account.id, Account.name).where(Account.id > 30)).all())
    for e in created:
        assert stored[int(e["resource_id"])] == changes(e)["name"]["after"]


def test_legacy_bulk_methods_are_captured(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        session.bulk_save_objects([Account(id=i, name=f"saved-{i}") for i in (1, 2)])
        session.bulk_insert_mappings(Account, [{"id": 3, "name": "mapped-3"}])  # type: ignore[arg-type]
        session.bulk_update_mappings(Account, [{"id": 1, "name": "renamed-1"}])  # type: ignore[arg-type]
        session.commit()
    assert sorted(e["resource_id"] for e in events.find(action="create")) == ["1", "2", "3"]
    renamed = events.assert_recorded(action="update", resource_id="1")
    assert changes(renamed)["name"] == {"before": "saved-1", "after": "renamed-1"}


def test_core_statements_on_a_registered_table_are_captured(engine: Engine, events: AuditEvents) -> None:
    with sdk.actor(user_id="batch-job"), engine.begin() as conn:
        conn.execute(ledger.insert(), [{"account": f"a{i}", "amount": Decimal(i)} for i in range(1, 6)])
        conn.execute(ledger.insert().values(account="single", amount=Decimal("9.99")))
        conn.execute(ledger.update().where(ledger.c.amount >= 4).values(amount=ledger.c.amount + 100))
        conn.execute(ledger.delete().where(ledger.c.account == "a1"))
        assert events.events == []  # not committed yet
    found = events.events
    assert {e["resource_type"] for e in found} == {"ledger_entry"}
    assert {e["user_id"] for e in found} == {"batch-job"}
    created = by_resource([e for e in found if e["action"] == "create"])
    assert len(created) == 6 and changes(created["6"])["account"]["after"] == "single"
    updated = by_resource([e for e in found if e["action"] == "update"])
    assert sorted(updated) == ["4", "5", "6"]
    assert changes(updated["5"]) == {"amount": {"before": "5.00", "after": "105.00"}}
    assert [e["resource_id"] for e in found if e["action"] == "delete"] == ["1"]


def test_multi_values_and_from_select_inserts_are_captured(engine: Engine, events: AuditEvents) -> None:
    with engine.begin() as conn:
        conn.execute(ledger.insert().values([{"id": 1, "account": "m1", "amount": 1},
                                             {"id": 2, "account": "m2", "amount": 2}]))
        conn.execute(ledger.insert().from_select(
            ["id", "account", "amount"], select(ledger.c.id + 10, ledger.c.account, ledger.c.amount)))
    created = events.find(action="create")
    assert sorted(e["resource_id"] for e in created if e["resource_id"]) == ["1", "2"]
    assert changes(by_resource(created)["2"])["account"] == {"before": None, "after": "m2"}
    # INSERT ... FROM SELECT: the rows are the database's own; one event says how many.
    (copied,) = [e for e in created if not e["resource_id"]]
    assert metadata(copied) in ({"bulk": True, "from_select": True, "rowcount": 2},
                                {"bulk": True, "from_select": True})  # psycopg reports rowcount -1 here


def test_core_statement_query_counts(engine: Engine, events: AuditEvents) -> None:
    def fill() -> None:
        with engine.begin() as conn:
            conn.execute(ledger.delete())
            conn.execute(ledger.insert(), [{"id": i, "account": "x", "amount": i} for i in range(1, 101)])

    fill()
    for operation, extra in (
        (lambda c: c.execute(ledger.update().where(ledger.c.id > 50).values(account="y")), 1),
        (lambda c: c.execute(ledger.delete().where(ledger.c.id > 90)), 1),
        (lambda c: c.execute(ledger.insert().values(id=1000, account="z", amount=1)), 0),
    ):
        def run(operation: Callable[[Any], Any] = operation) -> None:
            with engine.begin() as conn:
                operation(conn)

        plain, captured = extra_statements(engine, events, run, fill)
        assert captured == plain + extra, (plain, captured)
        fill()


def test_core_rollback_and_savepoints_discard_their_events(engine: Engine, events: AuditEvents) -> None:
    with engine.connect() as conn:
        conn.execute(ledger.insert().values(id=1, account="rolled back", amount=1))
        conn.rollback()
        conn.execute(ledger.insert().values(id=2, account="kept", amount=1))
        savepoint = conn.begin_nested()
        conn.execute(ledger.insert().values(id=3, account="savepoint rolled back", amount=1))
        savepoint.rollback()
        with conn.begin_nested():
            conn.execute(ledger.insert().values(id=4, account="savepoint released", amount=1))
        assert events.events == []
        conn.commit()
    assert sorted(e["resource_id"] for e in events.events) == ["2", "4"]


def test_executemany_update_by_another_column_costs_one_select_per_parameter_set(
        engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 6)
    events.clear()
    statement = update(Account.__table__).where(Account.__table__.c.account_name == bindparam("who")).values(
        status=bindparam("new_status"))
    params = [{"who": "acct-1", "new_status": "a"}, {"who": "acct-2", "new_status": "b"}]
    with statements(engine) as sent, engine.begin() as conn:
        conn.execute(statement, params)
    assert sum(1 for s in sent if "FOR UPDATE" in s or s.lstrip().upper().startswith("SELECT")) == 2
    updated = by_resource(events.find(action="update"))
    assert changes(updated["1"])["status"] == {"before": "open", "after": "a"}
    assert changes(updated["2"])["status"] == {"before": "open", "after": "b"}


def test_postgresql_locks_the_rows_it_reads_before_an_update(postgres: PostgresServer, events: AuditEvents) -> None:
    # PostgreSQL only: SQLite has no row locks (its single writer already
    # excludes a concurrent change between the SELECT and the UPDATE).
    engine = create_engine(postgres.url(postgres.create_database(f"sa_{uuid.uuid4().hex[:12]}")))
    try:
        Base.metadata.create_all(engine)
        seed_accounts(engine, 3)
        with statements(engine) as sent, Session(engine) as session:
            session.execute(update(Account).where(Account.id < 3).values(status="x"))
            session.commit()
    finally:
        engine.dispose()
    pre = [s for s in sent if s.lstrip().upper().startswith("SELECT")]
    assert len(pre) == 1 and "FOR UPDATE OF accounts" in pre[0]


def test_a_server_side_expression_in_set_is_evaluated_in_the_same_select(engine: Engine, events: AuditEvents) -> None:
    seed_accounts(engine, 2)
    events.clear()
    with Session(engine) as session:
        session.execute(update(Account).where(Account.id == 2).values(name=func.upper(Account.name)))
        session.commit()
    event_ = events.assert_recorded(action="update", resource_id="2")
    assert changes(event_)["name"] == {"before": "acct-2", "after": "ACCT-2"}
    assert changes(event_)["revision"] == {"before": 0, "after": 1}  # the Python onupdate default


# -- sensitive reads -------------------------------------------------------------------------


def test_reads_are_one_event_per_query_naming_a_bounded_list_of_ids(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        doctor = Doctor(id=1, name="House")
        session.add(doctor)
        session.add_all([Patient(id=i, name=f"p{i}", ssn="x", doctor=doctor) for i in range(1, 13)])
        session.commit()
    events.clear()
    with sdk.actor(user_id="nurse"), Session(engine) as session:
        assert len(session.scalars(select(Patient).order_by(Patient.id)).all()) == 12
        session.expunge_all()
        patient = session.get(Patient, 7)
        assert session.get(Patient, 7) is patient  # the identity map: no query, no event
    reads = events.find(action="read", resource_type="patients")
    assert len(reads) == 2, [(e["resource_id"], e["metadata"]) for e in reads]
    page, one = reads
    assert page["user_id"] == "nurse" and page["resource_id"] == ""
    assert metadata(page) == {"ids": ["1", "2", "3", "4", "5"], "count": 12, "truncated": True}
    assert one["resource_id"] == "7" and metadata(one) == {"ids": ["7"], "count": 1}
    assert events.find(action="read", resource_type="doctors") == []  # reads not asked for


def test_reads_through_a_relationship_are_recorded_too(engine: Engine, events: AuditEvents) -> None:
    with Session(engine) as session:
        session.add(Doctor(id=1, name="Grey", patients=[Patient(id=i, name="p", ssn="x") for i in (1, 2, 3)]))
        session.commit()
    events.clear()
    with Session(engine) as session:
        doctor = session.get(Doctor, 1)
        assert doctor is not None and len(doctor.patients) == 3  # a lazy load: one query
    assert [metadata(e) for e in events.find(action="read")] == [{"ids": ["1", "2", "3"], "count": 3}]


# -- the changes format --------------------------------------------------------------------


_secrets = Table("secrets_demo", MetaData(), Column("id", Integer, primary_key=True),
                 Column("name", String), Column("api_token", String), Column("PassWord", String), Column("doc", String))
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.sampled_from(["a", "b", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["k", "secret", "v"]), inner,
                                                                  max_size=3),
    max_leaves=6,
)
_rows = st.dictionaries(st.sampled_from(["id", "name", "api_token", "PassWord", "doc"]), _values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(before=_rows, after=_rows, extra=st.sampled_from([(), ("doc",), ("NAME",)]))
def test_changes_are_exactly_what_the_sdk_diff_reports(before: dict[str, Any], after: dict[str, Any],
                                                       extra: tuple[str, ...]) -> None:
    from auditlake.sdk._diff import DEFAULT_REDACT, diff_dict
    from auditlake.sdk.sqlalchemy import CapturePolicy
    from auditlake.sdk.sqlalchemy._policy import _table_capture

    capture = _table_capture(CapturePolicy(redact=extra), _secrets, None)
    assert capture.changes(before, after) == diff_dict(before, after, redact=DEFAULT_REDACT + extra)


# -- registration ---------------------------------------------------------------------------


def test_registering_a_declarative_base_captures_every_model_under_it(engine: Engine) -> None:
    view = configure_for_tests(tenant_id="t-test")
    audit_sqlalchemy.register(Base, exclude=["notes"])  # a field only Account has
    try:
        with Session(engine) as session:
            session.add(Unaudited(id=1, value="now audited"))
            session.add(Account(id=1, name="a", notes="excluded"))
            session.commit()
        assert {e["resource_type"] for e in view.events} == {"unaudited", "accounts"}
        assert "notes" not in changes(view.assert_recorded(resource_type="accounts"))
    finally:
        audit_sqlalchemy.unregister()


def test_policies_are_checked_when_registered() -> None:
    with pytest.raises(ValueError, match="include: nickname not a field of Account"):
        audit_sqlalchemy.register(Account, include=["nickname"])
    with pytest.raises(ValueError, match="read_ids_max"):
        audit_sqlalchemy.CapturePolicy(read_ids_max=0)
    with pytest.raises(ValueError, match="exclude: a list of field names"):
        audit_sqlalchemy.CapturePolicy(exclude="notes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a mapped class, a declarative base or a Table"):
        audit_sqlalchemy.register(object())
    assert audit_sqlalchemy.registered(Account) is None


def test_custom_names_for_type_actions_and_key(engine: Engine) -> None:
    view = configure_for_tests(tenant_id="t-test")
    audit_sqlalchemy.register(Membership, resource_type="membership", create_action="member_added",
                              resource_id=lambda key: f"{key[0]}/{key[1]}")
    try:
        with Session(engine) as session:
            session.add(Membership(org_id="acme", user_id=1, role="owner"))
            session.commit()
        view.assert_recorded(action="member_added", resource_type="membership", resource_id="acme/1")
    finally:
        audit_sqlalchemy.unregister()


def test_an_unconfigured_sdk_never_breaks_the_commit(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    sdk.shutdown()
    audit_sqlalchemy.register(Account)
    try:
        with Session(engine) as session:
            session.add(Account(id=1, name="still committed"))
            session.commit()
        with Session(engine) as session:
            assert session.get(Account, 1) is not None
    finally:
        audit_sqlalchemy.unregister()


# -- end to end ----------------------------------------------------------------------------


def test_changes_land_in_the_lake_through_a_real_collector(collector_factory: Any, tmp_path: Path) -> None:
    collector = collector_factory()
    sdk.configure(endpoint=collector.endpoint, api_key=collector.api_key("acme"), service_name="sa-e2e",
                  tenant_id="acme", spool_dir=str(tmp_path / "spool"))
    engine = create_engine(f"sqlite:///{tmp_path / 'e2e.db'}")
    Base.metadata.create_all(engine)
    _REVISIONS[:] = list(range(1, 100))
    audit_sqlalchemy.register(Account, exclude=["notes"])
    try:
        with sdk.actor(user_id="e2e-user"), Session(engine) as session:
            session.add_all([Account(id=i, name=f"lake-{i}") for i in (1, 2, 3)])
            session.commit()
            session.execute(update(Account).where(Account.id >= 2).values(status="closed"))
            session.commit()
            session.delete(session.get(Account, 3))
            session.commit()
        sdk.flush(timeout=10)
        assert collector.wait_for_count(6, "service = 'sa-e2e'") == 6
        rows = collector.query("SELECT action, resource_type, resource_id, user_id, changes, metadata "
                               "FROM events WHERE service = 'sa-e2e' ORDER BY created_at, id")
    finally:
        audit_sqlalchemy.unregister()
        engine.dispose()
    assert [(r["action"], r["resource_id"]) for r in rows] == [
        ("create", "1"), ("create", "2"), ("create", "3"), ("update", "2"), ("update", "3"), ("delete", "3")]
    assert {r["user_id"] for r in rows} == {"e2e-user"} and {r["resource_type"] for r in rows} == {"accounts"}
    assert json.loads(rows[3]["changes"])["status"] == {"before": "open", "after": "closed"}
    assert json.loads(rows[3]["metadata"]) == {"bulk": True}


def test_the_example_app_lands_its_events_in_the_lake_with_one_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITLAKE_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    example = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app.py"
    done = subprocess.run([sys.executable, str(example), "--db", str(tmp_path / "clinic.db")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in the lake: 52 events" in done.stdout
    assert "update  patients/7    by dr.jones" in done.stdout and "[REDACTED]" in done.stdout


def test_the_postgres_fixture_fails_with_the_make_target_when_postgresql_is_missing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.integrations import conftest

    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setattr(conftest.glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.fail.Exception, match="make postgres"):
        conftest.start_postgres(tmp_path / "pg")

