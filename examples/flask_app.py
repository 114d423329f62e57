"""A Flask patient service audited with auditlake.

    AUDITLAKE_API_KEY=alk_... AUDITLAKE_SERVICE_NAME=patients flask --app examples.flask_app run

Flask-Login authenticates (its ``request_loader`` reads the demo bearer
token ``Bearer <user>@<tenant>``); the WSGI ``AuditMiddleware`` takes the
user from ``flask_login.current_user`` for every event of the request, with
the client address, user agent and request id, and records every ``GET
/patients/<patient_id>`` as a ``read`` of a ``patient`` (a rule keyed by
the URL rule) and the CSV export (an endpoint marked with ``@audit_route``)
when the response ends (streamed bodies included); ``@audited`` records
updates with a redacted diff, and ``denied`` for a forbidden deletion.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Flask, Request, Response, abort, jsonify, request
from flask_login import LoginManager, UserMixin, login_required

from auditlake import sdk
from auditlake.sdk.wsgi import AuditMiddleware, RouteRule, audit_route

PATIENTS: dict[str, dict[str, Any]] = {
    "p1": {"name": "Ada Lovelace", "dob": "1815-12-10", "ssn": "123-45-6789"},
    "p2": {"name": "Alan Turing", "dob": "1912-06-23", "ssn": "987-65-4321"},
}


class User(UserMixin):  # type: ignore[misc]  # flask-login ships no type hints
    """The authenticated caller; ``tenant_id`` gives the audit events' tenant."""

    def __init__(self, user_id: str, tenant_id: str) -> None:
        self.id = user_id
        self.tenant_id = tenant_id


def user_from_token(incoming: Request) -> User | None:
    """Demo authentication: ``Authorization: Bearer user@tenant``."""
    header = incoming.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    user, _, tenant = header[7:].partition("@")
    return User(user, tenant)


@sdk.audited(
    "update",
    "patient",
    resource_id="patient_id",
    changes=lambda args, result: sdk.diff(args["before"], result),
)
def update_patient(patient_id: str, before: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply ``patch``; the event carries the diff (the SSN redacted)."""
    PATIENTS[patient_id] = {**before, **patch}
    return PATIENTS[patient_id]


@sdk.audited("delete", "patient", resource_id="patient_id")
def delete_patient(patient_id: str) -> None:
    """Only admins may delete; others are recorded as denied."""
    if not (sdk.current_actor().user_id or "").startswith("admin"):
        raise PermissionError("only admins delete patients")
    PATIENTS.pop(patient_id, None)


def create_app() -> Flask:
    """The Flask application with the audit middleware around it."""
    flask_app = Flask(__name__)
    login = LoginManager(flask_app)
    login.request_loader(user_from_token)
    if not sdk.is_configured():  # tests configure an in-memory SDK first
        sdk.configure(service_name="patients-flask")

    @flask_app.errorhandler(PermissionError)
    def forbidden(error: PermissionError) -> tuple[Response, int]:
        return jsonify(detail=str(error)), 403

    @flask_app.get("/patients/<patient_id>")
    @login_required
    def get_patient(patient_id: str) -> Response:
        if patient_id not in PATIENTS:
            abort(404)
        return jsonify({k: v for k, v in PATIENTS[patient_id].items() if k != "ssn"})

    @flask_app.patch("/patients/<patient_id>")
    @login_required
    def patch_patient(patient_id: str) -> Response:
        if patient_id not in PATIENTS:
            abort(404)
        after = update_patient(patient_id, dict(PATIENTS[patient_id]), request.get_json())
        return jsonify({k: v for k, v in after.items() if k != "ssn"})

    @flask_app.delete("/patients/<patient_id>")
    @login_required
    def remove_patient(patient_id: str) -> tuple[str, int]:
        delete_patient(patient_id)
        return "", 204

    @flask_app.get("/export.csv")
    @login_required
    @audit_route("export", "patient")  # the view itself says what it records
    def export_csv() -> Response:
        def rows() -> Iterator[str]:
            yield "id,name\n"
            for patient_id, patient in list(PATIENTS.items()):
                yield f"{patient_id},{patient['name']}\n"

        return Response(rows(), mimetype="text/csv")

    flask_app.wsgi_app = AuditMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app,
        trusted_proxies=["10.0.0.0/8"],
        # Checked against flask_app.url_map at the first request: a typo is logged.
        routes=[RouteRule("GET", "/patients/<patient_id>", "read", "patient")],
    )
    return flask_app


if __name__ == "__main__":
    create_app().run()
