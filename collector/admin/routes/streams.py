"""Stream routes: where each SIEM stream stands (docs/streams.md).

- ``GET /api/v1/streams``: every configured stream's lag (events and
  seconds behind), delivered count, consecutive failures, last error and
  per-writer cursor, as the collector's stream threads last published them.

The streams run in the collector process; this process reads the status
files they publish (``DIR/state/streams/<name>.status.json``, written by
``streams/cursor.py``: the admin layer may not import ``streams``, so the
file is the contract, and tests/streams pins it).  A lag tells every
tenant's event count: admins only.  A refused read is recorded; an
admin's read is not: the status holds no event, and a monitor polling it
would otherwise fill the log (and feed the streams their own echo).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.routes.audit import record
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import api_endpoint, json_error
from auditlake.collector.admin.routes.principal import Principal

#: Where the collector's stream threads publish their status, under DIR.
STATUS_DIR = Path("state") / "streams"
STATUS_SUFFIX = ".status.json"


def stream_statuses(root: Path) -> list[dict[str, Any]]:
    """Each stream's published status in data directory ``root``, by name."""
    folder = root / STATUS_DIR
    out = []
    for path in sorted(folder.glob(f"*{STATUS_SUFFIX}")) if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced this instant: the next request sees it
    return out


@api_endpoint
async def streams(request: Request, who: Principal) -> Response:
    """Every stream's status."""
    if not who.user.is_admin:
        await record(request, action="read", user=who.user.name, tenants=None, outcome="denied",
                     reason="stream status is for admins", details={"path": request.url.path})
        return json_error(403, "only admins may read stream status: it tells every tenant's event count")
    admin = admin_context(request)
    found = await run_in_threadpool(stream_statuses, admin.data.root)
    return JSONResponse({"streams": found})


ROUTES: list[BaseRoute] = [Route("/api/v1/streams", streams)]
