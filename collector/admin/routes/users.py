"""Users route: ``GET /users``, the list of users and their roles (admins only)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import ui_endpoint
from auditlake.collector.admin.routes.pages import page
from auditlake.collector.admin.routes.principal import Principal


@ui_endpoint
async def users_page(request: Request, who: Principal) -> Response:
    """Every user, for admins; a 403 page for everyone else."""
    if not who.user.is_admin:
        return page("error.html", request, who, 403, title="Not allowed", message="Only admins manage users.")
    return page("users.html", request, who, users=admin_context(request).users.users())


ROUTES: list[BaseRoute] = [
    Route("/users", users_page),
]
