"""auditlake.sdk.django: every committed change of a registered model is one
event, bulk operations included, at a constant number of extra queries;
reads on request; the actor from the request; logins.

Each test that takes ``db`` runs twice: on SQLite and on a real PostgreSQL
server (tests/integrations/conftest.py).  Django is configured once per
process with tests/integrations/django_project; the PostgreSQL database is
a second alias, and the project's router sends every query to the alias
the test runs on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.integrations.django_project import Router, add_database, setup

setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.color import no_style  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.db.models import F  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from auditlake import sdk  # noqa: E402
from auditlake.sdk.django._registry import resolve  # noqa: E402
from auditlake.sdk.django._settings import load_options  # noqa: E402
from auditlake.sdk.testing import AuditEvents, configure_for_tests  # noqa: E402
from tests.integrations.django_project.clinic.models import (  # noqa: E402
    Appointment,
    Device,
    Patient,
    PlainAppointment,
    PlainDevice,
    PlainPatient,
    Room,
    VipPatient,
)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
_READY: set[str] = set()


def _prepare(alias: str, request: pytest.FixtureRequest) -> None:
    if alias in _READY:
        return
    if alias == "pg":
        server = request.getfixturevalue("postgres")
        add_database("pg", {
            "ENGINE": "django.db.backends.postgresql", "NAME": server.create_database("auditlake_django"),
            "USER": server.user, "PASSWORD": server.password, "HOST": server.host, "PORT": str(server.port),
        })
    call_command("migrate", database=alias, run_syncdb=True, verbosity=0)
    _READY.add(alias)


def _empty(alias: str) -> None:
    connection = connections[alias]
    tables = [t for t in connection.introspection.django_table_names(only_existing=True)
              if t.startswith(("clinic_", "auth_user"))]
    # Raw SQL: emptying the tables between tests is not a change to capture.
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        for statement in connection.ops.sql_flush(no_style(), tables, allow_cascade=True):
            cursor.execute(statement)


@pytest.fixture(scope="module", autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    connections.close_all()  # before the session's PostgreSQL server stops


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[str]:
    """The alias of the database this test runs on, emptied."""
    alias = "default" if request.param == "sqlite" else "pg"
    _prepare(alias, request)
    _empty(alias)
    Router.alias = alias
    yield alias
    Router.alias = "default"


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Iterator[str]:
    """The PostgreSQL alias, for what only a database with row locks shows."""
    _prepare("pg", request)
    _empty("pg")
    Router.alias = "pg"
    yield "pg"
    Router.alias = "default"


@pytest.fixture
def memory() -> AuditEvents:
    return configure_for_tests(tenant_id="t-default")


def changes(event: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(event["changes"] or "{}"))


def count_queries(db: str, work: Callable[[], object]) -> int:
    """Queries ``work`` sends inside a transaction (BEGIN/COMMIT not counted)."""
    with transaction.atomic(using=db), CaptureQueriesContext(connections[db]) as captured:
        work()
    return len(captured)


def model_events(memory: AuditEvents, *actions: str) -> list[dict[str, Any]]:
    return [e for e in memory.events if e["action"] in actions]


# -- save() ---------------------------------------------------------------------


def test_created_row_is_one_event_with_its_fields_redacted_and_excluded(db: str, memory: AuditEvents) -> None:
    with sdk.actor("dr.who", "clinic"), transaction.atomic(using=db):
        patient = Patient.objects.create(name="Ada", age=36, ssn="123-45-6789", diagnosis="flu",
                                         notes="private", balance=Decimal("9.50"), data={"allergy": "none"})
    event = memory.assert_recorded(action="create", resource_type="clinic.Patient", resource_id=str(patient.pk))
    assert (event["user_id"], event["tenant_id"]) == ("dr.who", "clinic")
    assert changes(event) == {
        "name": {"before": None, "after": "Ada"},
        "ward": {"before": None, "after": "A"},
        "age": {"before": None, "after": 36},
        "ssn": {"before": None, "after": "[REDACTED]"},  # the SDK's own list
        "diagnosis": {"before": None, "after": "[REDACTED]"},  # the model's redact
        "balance": {"before": None, "after": "9.50"},
        "data.allergy": {"before": None, "after": "none"},
    }  # notes excluded, the primary key is the resource_id


def test_update_reports_only_changed_fields_with_stored_before_values(db: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada", ward="A", balance=Decimal("9.50"), data={"a": 1, "b": [1]})
    stale = Patient.objects.get(pk=patient.pk)
    Patient.objects.filter(pk=patient.pk).update(ward="B")  # the row changed behind `stale`'s back
    memory.clear()
    stale.ward = "C"
    stale.age = "41"  # as a form gives it: stored as 41
    stale.balance = Decimal("9.5")  # the same number
    stale.data = {"a": 2, "b": [1]}
    stale.notes = "excluded"
    with transaction.atomic(using=db):
        stale.save()
    event = memory.assert_recorded(action="update", resource_id=str(patient.pk))
    assert changes(event) == {
        "ward": {"before": "B", "after": "C"},  # the database's value, not the stale object's
        "age": {"before": None, "after": 41},
        "data.a": {"before": 1, "after": 2},
    }


def test_save_that_changes_no_audited_field_records_nothing(db: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada")
    memory.clear()
    patient.notes = "excluded field"
    patient.save()
    patient.save(update_fields=["name"])
    assert model_events(memory, "update") == []


def test_update_fields_limits_the_compared_fields(db: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada")
    memory.clear()
    patient.name, patient.ward = "Ada L.", "Z"
    patient.save(update_fields=["name"])
    event = memory.assert_recorded(action="update")
    assert changes(event) == {"name": {"before": "Ada", "after": "Ada L."}}


def test_save_of_existing_row_costs_one_select_and_of_new_row_none(db: str, memory: AuditEvents) -> None:
    audited, plain = Patient.objects.create(name="a"), PlainPatient.objects.create(name="a")
    audited.ward = plain.ward = "B"
    assert count_queries(db, plain.save) == 1
    assert count_queries(db, audited.save) == 2
    assert count_queries(db, lambda: PlainPatient.objects.create(name="b")) == 1
    assert count_queries(db, lambda: Patient.objects.create(name="b")) == 1


def test_proxy_model_saves_are_events_of_the_concrete_model(db: str, memory: AuditEvents) -> None:
    vip = VipPatient.objects.create(name="Grace")
    memory.assert_recorded(action="create", resource_type="clinic.Patient", resource_id=str(vip.pk))


def test_uuid_primary_key_and_renamed_action(db: str, memory: AuditEvents) -> None:
    device = Device.objects.create(serial="D1")
    device.location = "ward B"
    with transaction.atomic(using=db), CaptureQueriesContext(connections[db]) as created:
        Device.objects.create(serial="D2")  # a fresh UUID default: an INSERT, no read first
    device.save()
    assert len(created) == 1
    memory.assert_recorded(action="create", resource_type="device", resource_id=str(device.pk))
    event = memory.assert_recorded(action="edit", resource_type="device", resource_id=str(device.pk))
    assert changes(event) == {"location": {"before": "store", "after": "ward B"}}


# -- transactions -------------------------------------------------------------------


def test_events_are_sent_on_commit_and_never_on_rollback(db: str, memory: AuditEvents) -> None:
    with transaction.atomic(using=db):
        Patient.objects.create(name="kept")
        Patient.objects.bulk_create([Patient(name="kept too")])
        sdk.flush(timeout=5)
        assert memory.exporter.events == []  # not before the commit
    assert {json.loads(e["changes"])["name"]["after"] for e in model_events(memory, "create")} == {
        "kept", "kept too"}
    memory.clear()
    with pytest.raises(RuntimeError), transaction.atomic(using=db):
        Patient.objects.create(name="rolled back")
        Patient.objects.all().update(ward="Q")
        Patient.objects.all().delete()
        raise RuntimeError("abort")
    assert memory.events == []
    assert Patient.objects.filter(ward="Q").count() == 0


def test_a_rolled_back_savepoint_discards_only_its_own_events(db: str, memory: AuditEvents) -> None:
    with transaction.atomic(using=db):
        Patient.objects.create(name="outer")
        with pytest.raises(RuntimeError), transaction.atomic(using=db):
            Patient.objects.create(name="inner")
            Patient.objects.filter(name="outer").update(ward="X")
            raise RuntimeError("roll back the savepoint")
        with transaction.atomic(using=db):
            Patient.objects.create(name="inner kept")
    names = [changes(e)["name"]["after"] for e in model_events(memory, "create")]
    assert names == ["outer", "inner kept"]
    assert model_events(memory, "update") == []


def test_actor_is_the_one_in_scope_when_the_change_ran_not_at_commit(db: str, memory: AuditEvents) -> None:
    with transaction.atomic(using=db):
        with sdk.actor("nurse.kim", "clinic", ip_address="10.1.1.1"):
            Patient.objects.create(name="Ada")
        with sdk.actor("dr.who", "clinic"):
            Patient.objects.all().update(ward="B")
    assert memory.assert_recorded(action="create")["user_id"] == "nurse.kim"
    assert memory.assert_recorded(action="update")["user_id"] == "dr.who"


def test_autocommit_change_is_recorded_at_once(db: str, memory: AuditEvents) -> None:
    Patient.objects.create(name="no transaction")
    memory.assert_recorded(action="create")


# -- QuerySet.update() ---------------------------------------------------------------


def test_queryset_update_records_each_changed_row(db: str, memory: AuditEvents) -> None:
    a, b, c = (Patient.objects.create(name=n, ward=w) for n, w in (("a", "A"), ("b", "A"), ("c", "B")))
    memory.clear()
    with sdk.actor("admin"):
        assert Patient.objects.filter(name__in=["a", "b", "c"]).update(ward="B", notes="x") == 3
    events = model_events(memory, "update")
    assert sorted(e["resource_id"] for e in events) == sorted([str(a.pk), str(b.pk)])  # c had B already
    assert all(changes(e) == {"ward": {"before": "A", "after": "B"}} for e in events)
    assert all(json.loads(e["metadata"]) == {"operation": "update"} and e["user_id"] == "admin" for e in events)


def test_queryset_update_with_expressions_reads_the_computed_values(db: str, memory: AuditEvents) -> None:
    ids = [Patient.objects.create(name=str(i), age=i).pk for i in range(3)]
    memory.clear()
    Patient.objects.filter(pk__in=ids).update(age=F("age") + 10)
    got = {e["resource_id"]: changes(e)["age"] for e in model_events(memory, "update")}
    assert got == {str(pk): {"before": i, "after": i + 10} for i, pk in enumerate(ids)}


def test_update_of_only_excluded_fields_costs_nothing(db: str, memory: AuditEvents) -> None:
    Patient.objects.create(name="a")
    PlainPatient.objects.create(name="a")
    assert count_queries(db, lambda: Patient.objects.update(notes="n")) == count_queries(
        db, lambda: PlainPatient.objects.update(notes="n"))
    assert model_events(memory, "update") == []


@pytest.mark.parametrize("rows", [10, 1000])
def test_bulk_operations_cost_a_constant_number_of_extra_queries(db: str, memory: AuditEvents, rows: int) -> None:
    """The figures docs/integrations.md gives, asserted at two sizes."""
    def seed(model: Any) -> list[Any]:
        return model.objects.bulk_create([model(name=f"p{i}", age=i) for i in range(rows)])

    cost: dict[str, tuple[int, int]] = {}
    objs: dict[Any, list[Any]] = {}
    for model in (PlainPatient, Patient):
        objs[model] = []
    cost["bulk_create"] = (count_queries(db, lambda: objs[PlainPatient].extend(seed(PlainPatient))),
                           count_queries(db, lambda: objs[Patient].extend(seed(Patient))))
    cost["update"] = tuple(  # type: ignore[assignment]
        count_queries(db, lambda m=m: m.objects.filter(age__gte=0).update(ward="B")) for m in (PlainPatient, Patient))
    cost["update_expression"] = tuple(  # type: ignore[assignment]
        count_queries(db, lambda m=m: m.objects.update(age=F("age") + 1)) for m in (PlainPatient, Patient))
    for model in (PlainPatient, Patient):
        for obj in objs[model]:
            obj.ward = "C"
    cost["bulk_update"] = tuple(  # type: ignore[assignment]
        count_queries(db, lambda m=m: m.objects.bulk_update(objs[m], ["ward"])) for m in (PlainPatient, Patient))
    for model, appointment in ((PlainPatient, PlainAppointment), (Patient, Appointment)):
        appointment.objects.bulk_create([appointment(patient=p) for p in objs[model][:5]])
    cost["delete_cascade"] = tuple(  # type: ignore[assignment]
        count_queries(db, lambda m=m: m.objects.all().delete()) for m in (PlainPatient, Patient))
    for model in (PlainDevice, Device):
        model.objects.bulk_create([model(serial=f"s{i}") for i in range(rows)])
    cost["delete"] = tuple(  # type: ignore[assignment]
        count_queries(db, lambda m=m: m.objects.filter(location="store").delete()) for m in (PlainDevice, Device))
    extra = {operation: ours - plain for operation, (plain, ours) in cost.items()}
    assert extra == {
        "bulk_create": 0,  # the primary keys come back from the INSERT
        "update": 1,  # one SELECT ... FOR UPDATE of the rows
        "update_expression": 2,  # ... and one of the values the database computed
        "bulk_update": 1,  # one SELECT ... FOR UPDATE by primary key
        "delete_cascade": 2,  # one SELECT per registered model deleted from (patients, appointments)
        "delete": 1,
    }, cost
    assert cost["update"][0] == 1 and cost["delete"][0] == 1  # Django's own: one statement each
    assert len(model_events(memory, "create")) == rows + 5 + rows
    assert len(model_events(memory, "update")) == 3 * rows
    assert len(model_events(memory, "delete")) == rows + 5 + rows


# -- bulk_update() / bulk_create() -------------------------------------------------------


def test_bulk_update_records_each_changed_row(db: str, memory: AuditEvents) -> None:
    patients = Patient.objects.bulk_create([Patient(name=f"p{i}", ward="A") for i in range(3)])
    memory.clear()
    patients[0].ward = "B"
    patients[1].ward = "C"
    patients[1].name = "not in fields"
    with sdk.actor("u1"):
        Patient.objects.bulk_update(patients, ["ward"])
    events = {e["resource_id"]: changes(e) for e in model_events(memory, "update")}
    assert events == {str(patients[0].pk): {"ward": {"before": "A", "after": "B"}},
                      str(patients[1].pk): {"ward": {"before": "A", "after": "C"}}}
    assert model_events(memory, "update")[0]["metadata"] == '{"operation":"bulk_update"}'


def test_bulk_create_records_each_row_with_its_primary_key(db: str, memory: AuditEvents) -> None:
    created = Patient.objects.bulk_create([Patient(name="a"), Patient(name="b", ssn="1")])
    events = model_events(memory, "create")
    assert [e["resource_id"] for e in events] == [str(p.pk) for p in created]
    assert changes(events[1])["ssn"] == {"before": None, "after": "[REDACTED]"}


def test_bulk_create_update_conflicts_records_creates_and_updates(db: str, memory: AuditEvents) -> None:
    old = Device.objects.create(serial="S1", location="store")
    memory.clear()
    Device.objects.bulk_create([Device(serial="S1", location="ward"), Device(serial="S2", location="ward")],
                               update_conflicts=True, unique_fields=["serial"], update_fields=["location"])
    edit = memory.assert_recorded(action="edit", resource_id=str(old.pk))
    assert changes(edit) == {"location": {"before": "store", "after": "ward"}}
    new = Device.objects.get(serial="S2")
    create = memory.assert_recorded(action="create", resource_id=str(new.pk))
    assert changes(create)["serial"] == {"before": None, "after": "S2"}


def test_bulk_create_ignore_conflicts_records_only_rows_it_created(db: str, memory: AuditEvents) -> None:
    Patient.objects.create(name="exists")
    existing = Device.objects.create(serial="S1")
    memory.clear()
    Device.objects.bulk_create([Device(serial="S1", location="x"), Device(serial="S3")], ignore_conflicts=True)
    creates = model_events(memory, "create")
    assert len(creates) == 1 and changes(creates[0])["serial"]["after"] == "S3"
    assert existing.pk != creates[0]["resource_id"]
    assert model_events(memory, "edit") == []


def test_conflict_handling_costs_one_or_two_selects(db: str, memory: AuditEvents) -> None:
    for model in (PlainDevice, Device):
        model.objects.create(serial="S1")

    def upsert(model: Any) -> Callable[[], object]:
        return lambda: model.objects.bulk_create(
            [model(serial="S1", location="x"), model(serial="S9")],
            update_conflicts=True, unique_fields=["serial"], update_fields=["location"])

    def ignore(model: Any) -> Callable[[], object]:
        return lambda: model.objects.bulk_create([model(serial="S1"), model(serial="S8")], ignore_conflicts=True)

    assert count_queries(db, upsert(Device)) - count_queries(db, upsert(PlainDevice)) == 1
    assert count_queries(db, ignore(Device)) - count_queries(db, ignore(PlainDevice)) == 2
    assert sorted(changes(e)["serial"]["after"] for e in model_events(memory, "create")) == ["S1", "S8", "S9"]


# -- deletes -------------------------------------------------------------------------


def test_instance_delete_records_the_stored_values(db: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada", ward="A", ssn="1")
    Patient.objects.filter(pk=patient.pk).update(ward="B")
    memory.clear()
    pk = patient.pk
    patient.delete()  # the object in memory still says ward A
    event = memory.assert_recorded(action="delete", resource_id=str(pk))
    assert changes(event)["ward"] == {"before": "B", "after": None}
    assert changes(event)["ssn"] == {"before": "[REDACTED]", "after": None}


def test_cascades_are_captured_deletes_and_set_null_updates(db: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada")
    room = Room.objects.create(number="101")
    booked = Appointment.objects.create(patient=patient, room=room)
    other = Appointment.objects.create(patient=Patient.objects.create(name="Bob"), room=room)
    memory.clear()
    room_id = room.pk
    room.delete()  # Room is not registered; its SET_NULL updates registered rows
    assert {e["resource_id"]: changes(e) for e in model_events(memory, "update")} == {
        str(booked.pk): {"room": {"before": room_id, "after": None}},
        str(other.pk): {"room": {"before": room_id, "after": None}},
    }
    memory.clear()
    Patient.objects.filter(name="Ada").delete()
    deleted = {(e["resource_type"], e["resource_id"]) for e in model_events(memory, "delete")}
    assert deleted == {("clinic.Patient", str(patient.pk)), ("clinic.Appointment", str(booked.pk))}


def test_proxy_deletes_and_refused_statements_behave_as_without_capture(db: str, memory: AuditEvents) -> None:
    vip = VipPatient.objects.create(name="Grace")
    Patient.objects.create(name="Ada")
    memory.clear()
    VipPatient.objects.filter(pk=vip.pk).delete()
    memory.assert_recorded(action="delete", resource_type="clinic.Patient", resource_id=str(vip.pk))
    with pytest.raises(TypeError, match="slice"):
        Patient.objects.all()[:1].update(ward="X")
    with pytest.raises(ValueError, match="primary key"):
        Patient.objects.bulk_update([Patient(name="unsaved")], ["name"])
    assert Patient.objects.get(name="Ada").ward == "A"


# -- reads ---------------------------------------------------------------------------


def test_reads_are_one_event_per_query_naming_bounded_ids(db: str, memory: AuditEvents) -> None:
    ids = [p.pk for p in Patient.objects.bulk_create([Patient(name=f"p{i}") for i in range(5)])]
    memory.clear()
    with sdk.actor("dr.who"):
        Patient.objects.get(pk=ids[0])
        patients = list(Patient.objects.order_by("pk"))
        assert len(patients) == 5 and patients[0].pk == ids[0]  # the result cache: no second event
        list(Patient.objects.order_by("pk").values_list("name", flat=True))
        list(Patient.objects.order_by("pk").values("pk", "name"))
        assert sum(1 for _ in Patient.objects.order_by("pk").iterator(chunk_size=2)) == 5
        list(Patient.objects.filter(name="nobody"))  # found nothing: read nothing
        Patient.objects.count()
        Patient.objects.filter(pk=ids[1]).exists()
    reads = [(e["resource_id"], json.loads(e["metadata"])) for e in model_events(memory, "read")]
    first = [str(i) for i in ids[:3]]  # reads: 3 in the settings
    assert reads == [
        (str(ids[0]), {"count": 1, "ids": [str(ids[0])]}),
        ("", {"count": 5, "ids": first}),
        ("", {"count": 5}),  # no primary key among the values
        ("", {"count": 5, "ids": first}),
        ("", {"count": 5, "ids": first}),
    ]
    assert {e["user_id"] for e in model_events(memory, "read")} == {"dr.who"}


def test_capture_own_queries_and_related_access_are_not_misreported(db: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada")
    appointment = Appointment.objects.create(patient=patient)
    memory.clear()
    Patient.objects.all().update(ward="C")
    Patient.objects.filter(pk=patient.pk).delete()  # collector loads: no read
    assert model_events(memory, "read") == []
    Patient.objects.create(name="Bob")
    memory.clear()
    fresh = Appointment.objects.get(pk=Appointment.objects.create(patient=Patient.objects.get(name="Bob")).pk)
    memory.clear()
    assert fresh.patient.name == "Bob"  # a related-object load is a read of the patient
    memory.assert_recorded(action="read", resource_id=str(fresh.patient_id))
    assert appointment.pk  # unused otherwise


# -- the middleware and the auth signals --------------------------------------------------


def test_middleware_takes_the_user_address_agent_and_request_id(db: str, memory: AuditEvents) -> None:
    user = User.objects.create_user("dr.who", password="pw")
    patient = Patient.objects.create(name="Ada")
    memory.clear()
    client = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.7", HTTP_USER_AGENT="tablet/1")
    assert client.post("/login", {"username": "dr.who", "password": "pw"}).status_code == 200
    response = client.post(f"/patients/{patient.pk}/move", {"ward": "C"}, HTTP_X_REQUEST_ID="req-42")
    assert response.status_code == 200
    login = memory.assert_recorded(action="login", user_id=str(user.pk))
    assert (login["ip_address"], login["user_agent"], json.loads(login["metadata"])) == (
        "198.51.100.7", "tablet/1", {"method": "ModelBackend"})
    move = memory.assert_recorded(action="update", resource_type="clinic.Patient")
    assert (move["user_id"], move["ip_address"], move["user_agent"], move["request_id"]) == (
        str(user.pk), "198.51.100.7", "tablet/1", "req-42")
    assert changes(move) == {"ward": {"before": "A", "after": "C"}}
    assert client.post("/logout").status_code == 200
    memory.assert_recorded(action="logout", user_id=str(user.pk))
    assert model_events(memory, "update") == [move]  # last_login is not an audited field


def test_middleware_ignores_forwarded_headers_from_untrusted_peers(db: str, memory: AuditEvents) -> None:
    client = Client(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="198.51.100.7")
    actor = client.get("/whoami").json()
    assert (actor["ip_address"], actor["user_id"]) == ("203.0.113.9", None)
    assert len(actor["request_id"]) == 24  # made up when the request has none


def test_failed_login_is_recorded_with_the_name_tried(db: str, memory: AuditEvents) -> None:
    User.objects.create_user("dr.who", password="pw")
    client = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.66")
    assert client.post("/login", {"username": "eve", "password": "guess"}).status_code == 401
    failed = memory.assert_recorded(action="login_failed")
    assert (failed["user_id"], failed["outcome"], failed["reason"], failed["ip_address"]) == (
        "eve", "failure", "invalid credentials", "192.0.2.66")
    assert "guess" not in json.dumps(memory.events)


def test_user_creation_is_captured_with_the_password_redacted(db: str, memory: AuditEvents) -> None:
    user = User.objects.create_user("dr.who", email="who@example.org", password="pw")
    event = memory.assert_recorded(action="create", resource_type="auth.User", resource_id=str(user.pk))
    assert changes(event) == {"username": {"before": None, "after": "dr.who"},
                              "email": {"before": None, "after": "who@example.org"},
                              "is_staff": {"before": None, "after": False},
                              "password": {"before": None, "after": "[REDACTED]"}}


def test_async_stack_gets_the_request_actor(memory: AuditEvents) -> None:
    async def call() -> dict[str, Any]:
        response = await AsyncClient().get("/whoami", headers={
            "X-Request-ID": "async-1", "X-Forwarded-For": "198.51.100.1", "User-Agent": "async/1"})
        return dict(response.json())

    actor = asyncio.run(call())  # AsyncClient's peer is 127.0.0.1, not a trusted proxy
    assert (actor["ip_address"], actor["user_agent"], actor["request_id"]) == ("127.0.0.1", "async/1", "async-1")


# -- concurrency (PostgreSQL: row locks) ---------------------------------------------------


def _waiting_on_a_lock(db: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    with connections[db].cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.02)
    return False


def test_concurrent_update_reports_the_value_the_other_transaction_committed(pg: str, memory: AuditEvents) -> None:
    patient = Patient.objects.create(name="Ada", ward="A")
    memory.clear()
    first_wrote, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> threading.Thread:
        def target() -> None:
            try:
                work()
            except BaseException as error:  # noqa: BLE001 - reported by the test
                errors.append(error)
            finally:
                connections.close_all()

        thread = sdk.start_thread(target)
        return thread

    def first() -> None:
        with sdk.actor("first"), transaction.atomic(using=pg):
            Patient.objects.filter(pk=patient.pk).update(ward="B")
            first_wrote.set()
            release.wait(10)

    def second() -> None:
        first_wrote.wait(10)
        with sdk.actor("second"), transaction.atomic(using=pg):
            Patient.objects.filter(pk=patient.pk).update(ward="C")

    threads = [run(first), run(second)]
    assert first_wrote.wait(10)
    assert _waiting_on_a_lock(pg)  # the second's SELECT ... FOR UPDATE waits for the first
    release.set()
    for thread in threads:
        thread.join(10)
    assert not errors, errors
    by_actor = {e["user_id"]: changes(e)["ward"] for e in model_events(memory, "update")}
    assert by_actor == {"first": {"before": "A", "after": "B"}, "second": {"before": "B", "after": "C"}}


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ({"modles": {}}, "unknown key(s) modles"),
    ({"models": {"clinic.Nobody": {}}}, "'clinic.Nobody' is not an installed model"),
    ({"models": {"nowhere": {}}}, "'nowhere' is not an installed app label"),
    ({"models": {"clinic.Patient": {"fields": ["name"], "exclude": ["ward"]}}}, "give one of the two"),
    ({"models": {"clinic.Patient": {"fields": ["nmae"]}}}, "fields names no audited field of the model: nmae"),
    ({"models": {"clinic.Patient": {"reads": "yes"}}}, "True, False or a number"),
    ({"actions": {"erase": "x"}}, "unknown action(s) erase"),
    ({"resource_type": "table"}, "one of label, label_lower, model_name, db_table"),
    ({"trusted_proxies": 10}, "a list of names"),
])
def test_bad_settings_are_refused_at_start_up_naming_the_key(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        resolve(load_options(setting))
    assert message in str(raised.value)


def test_models_can_be_named_by_app_all_or_excluded() -> None:
    every = resolve(load_options({"models": "__all__", "exclude_models": ["contenttypes", "clinic.Room"]}))
    assert Patient in every and VipPatient in every and User in every and Room not in every
    assert every[VipPatient] is every[Patient]
    clinic = resolve(load_options({"models": {"clinic": {}}, "resource_type": "model_name"}))
    assert {shape.resource_type for shape in clinic.values()} >= {"patient", "device", "room"}
    assert User not in clinic


def test_importing_without_django_says_how_to_install_it() -> None:
    code = "import sys; sys.modules['django'] = None; import auditlake.sdk.django"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "pip install django" in result.stderr


# -- end to end ------------------------------------------------------------------------


def test_changes_land_in_the_lake_through_a_real_collector(collector_factory: Any, tmp_path: Any) -> None:
    collector = collector_factory()
    _prepare("default", None)  # type: ignore[arg-type]
    _empty("default")
    sdk.configure(endpoint=collector.endpoint, api_key=collector.api_key("acme"), tenant_id="acme",
                  spool_dir=str(tmp_path / "spool"), batch_delay=0.05)
    with sdk.actor("dr.who"), transaction.atomic():
        patients = Patient.objects.bulk_create([Patient(name=f"p{i}", ssn="123") for i in range(3)])
        for patient in patients:
            patient.ward = "B"
        Patient.objects.bulk_update(patients, ["ward"])
        Patient.objects.filter(pk=patients[0].pk).delete()
    assert sdk.flush(timeout=10)
    assert collector.wait_for_count(7) == 7
    rows = collector.query("SELECT action, resource_type, resource_id, user_id, changes FROM events "
                           "ORDER BY created_at, id")
    assert [r["action"] for r in rows] == ["create"] * 3 + ["update"] * 3 + ["delete"]
    assert {r["user_id"] for r in rows} == {"dr.who"}
    assert json.loads(rows[3]["changes"]) == {"ward": {"before": "A", "after": "B"}}
    assert json.loads(rows[6]["changes"])["ssn"] == {"before": "[REDACTED]", "after": None}
    assert rows[6]["resource_id"] == str(patients[0].pk)
