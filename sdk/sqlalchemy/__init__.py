"""SQLAlchemy integration: every committed create, update and delete of a
registered model or table becomes one audit event, bulk statements included.

    from auditlake import sdk
    from auditlake.sdk import sqlalchemy as audit_sqlalchemy

    sdk.configure(service_name="billing")
    audit_sqlalchemy.register(Base, exclude=["last_seen_at"])   # every model of a declarative base
    audit_sqlalchemy.register(Patient, reads=True)              # ... and reads of patients

    with sdk.actor(user_id="u1", tenant_id="acme"), Session(engine) as session:
        session.get(Invoice, 7).status = "paid"
        session.commit()        # -> update invoices/7 {"status": {"before": "open", "after": "paid"}}

What is captured, and where (all through SQLAlchemy's event API):

* The unit of work (``Session.add``/attribute changes/``Session.delete``):
  ``after_flush`` reads each registered object's attribute history (before
  and after values the ORM already holds).  No extra query, except one
  ``SELECT`` per table per flush for objects whose old values the ORM does
  not hold (attributes expired by a commit, or deferred).
* Statements (``session.execute(update(Model).where(...))``, ORM bulk
  INSERT/UPDATE by primary key, Core ``conn.execute(table.delete()...)``):
  the engine's ``before_execute``/``after_execute``.  Extra queries per
  statement: UPDATE and DELETE one ``SELECT ... FOR UPDATE OF <table>`` of
  the affected rows before the statement (their keys and old values; the
  UPDATE's new values are its SET expressions evaluated in that same
  SELECT); INSERT none (a multi-row INSERT that does not send its keys gets
  ``RETURNING`` of them, batched by SQLAlchemy's insertmanyvalues).  The one
  exception: an executemany UPDATE/DELETE whose WHERE is not the primary
  key costs one SELECT per parameter set (the statement itself runs once
  per parameter set).  docs/integrations.md has the table.
* Transactions: events wait with the transaction (or savepoint) that made
  them and are recorded only after it commits; a rollback, or a rolled
  back savepoint, discards its own events only.
* Reads (``reads=True``): one ``read`` event per ORM query returning rows
  of the model, naming at most ``read_ids_max`` ids and the count.

The actor (``sdk.actor()``) is captured on the caller's thread when the
change is made (flush or statement), since the export thread has none.

Event fields: ``resource_type`` the table name (``resource_type=`` to
change it); ``resource_id`` the primary key, a composite key's parts
``str()``-ed and joined by ``,`` (``resource_id=`` a function of the key
tuple to change it); ``changes`` the SDK's diff format for the captured
fields, redacted as :func:`auditlake.sdk.diff` does plus ``redact=``.
Field names are the mapped attribute names (for a Core table, column
keys), the same whichever way a row changed.
"""

from __future__ import annotations

import sqlalchemy

if int(sqlalchemy.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"auditlake.sdk.sqlalchemy needs SQLAlchemy 2.0 or later (found {sqlalchemy.__version__}): "
        "pip install -U sqlalchemy"
    )


from auditlake.sdk.sqlalchemy._policy import CapturePolicy  # noqa: E402
from auditlake.sdk.sqlalchemy._registry import register, registered, unregister  # noqa: E402

__all__ = ["CapturePolicy", "register", "registered", "unregister"]
