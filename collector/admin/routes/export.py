"""Export routes: downloads of a whole match, and their signed manifests.

- ``GET /export``: a download from the search page (its filter as the form sends it)
- ``GET /api/v1/export``: the same for scripts (the API's filter)
- ``GET /api/v1/exports/{eid}``: progress of a download in flight
- ``GET /api/v1/exports/{eid}/manifest``: the manifest of a finished download

Export ids are made by the server (``X-Auditlake-Export-Id``); a client may
pass its own ``eid`` handle to poll progress, looked up among its own
exports only.  Only the user who started an export (or an admin) sees its
progress and manifest.  A download is recorded twice: durably before its
first byte (``export_started``), and when it ends, complete or not
(``export``).  Exports run a few at a time (429 with Retry-After beyond),
and one whose client hung up stops at its next chunk.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.export import EXTENSIONS, FORMATS, MEDIA_TYPES, ExportRun
from auditlake.collector.admin.export_runs import ExportEntry, ExportLimitReached
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import api_endpoint, json_error, ui_endpoint
from auditlake.collector.admin.routes.params import filter_of, single
from auditlake.collector.admin.routes.principal import Principal
from auditlake.collector.admin.search import QueryParameterError, effective_tenants
from auditlake.collector.storage.tiers import checkpoint_tier

_EID_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


async def export(request: Request, who: Principal) -> Response:
    """Stream the events matching the URL's filter in the asked format."""
    admin = admin_context(request)
    f = filter_of(request, ui_mode=request.url.path == "/export")
    fmt = single(request, "format") or ""
    if fmt not in FORMATS:
        raise QueryParameterError("format", f"must be one of {', '.join(FORMATS)}")
    handle = single(request, "eid") or ""
    if handle and not _valid_eid(handle):
        raise QueryParameterError("eid", "8-64 characters of A-Z a-z 0-9 _ -")
    tenants = effective_tenants(f, who.scope)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run = ExportRun(admin.reader, f, who.scope, fmt, "", user=who.user.name,
                    signing_key=getattr(admin.collector, "signing_key", None),
                    checkpoints_root=checkpoint_tier(admin.data))
    try:
        entry = admin.exports.start(who.user.name, run, handle)
    except ValueError as exc:
        raise QueryParameterError("eid", str(exc)) from exc
    except ExportLimitReached as exc:
        resp = json_error(429, str(exc))
        resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp
    run.file_name = name = f"auditlake-{stamp}-{entry.eid[:12]}.{EXTENSIONS[fmt]}"
    details: dict[str, object] = {"filter": f.describe(), "format": fmt, "export_id": entry.eid}
    try:
        # On record before the first byte leaves, even if the process dies mid-way.
        await run_in_threadpool(admin.audit_durably, action="export_started", user=who.user.name,
                                tenants=tenants, request=request, resource_id=entry.eid, details=details)
    except BaseException:
        admin.exports.finish(entry)
        raise
    manifest_url = f"/api/v1/exports/{entry.eid}/manifest"
    return StreamingResponse(_stream(request, who, entry, tenants, details), media_type=MEDIA_TYPES[fmt], headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Auditlake-Export-Id": entry.eid,
        "Link": f'<{manifest_url}>; rel="describedby"',
    })


async def _stream(request: Request, who: Principal, entry: ExportEntry, tenants: tuple[str, ...] | None,
                  details: dict[str, object]) -> AsyncIterator[bytes]:
    """The run's chunks, each made in a worker thread.  When the client
    hangs up, Starlette cancels this generator: the run is closed at once
    (its DuckDB cursor released) instead of encoding on for no one."""
    admin = admin_context(request)
    run: ExportRun = entry.run
    chunks: Iterator[bytes] = run.chunks()
    try:
        while True:
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None:
                break
            yield chunk
    finally:
        # Shielded: after a hang-up this generator runs inside a cancelled
        # scope, where any await would be cancelled again before its work.
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(chunks.close)  # type: ignore[attr-defined]
            if run.done and run.manifest is not None:
                await run_in_threadpool(admin.exports.save_manifest, entry.eid, run.manifest)
        admin.exports.finish(entry)
        admin.audit(action="export", user=who.user.name, tenants=tenants, request=request,
                    resource_id=entry.eid, outcome="success" if run.done else "failure",
                    reason="" if run.done else "the download ended early",
                    details={**details, "rows": run.rows, "complete": run.done,
                             "sha256": run.manifest["sha256"] if run.manifest else ""})


@api_endpoint
async def export_progress(request: Request, who: Principal) -> Response:
    """Rows, bytes and state of one of ``who``'s exports."""
    entry = _export_entry(request, who)
    if entry is None:
        return json_error(404, "no export with this id (of yours)")
    run = entry.run
    done = bool(run.done)
    state = "done" if done else "running" if entry.running else "ended early"
    return JSONResponse({"id": entry.eid, "state": state, "rows": run.rows, "total": run.total, "bytes": run.nbytes,
                         "done": done, "manifest": f"/api/v1/exports/{entry.eid}/manifest" if done else None})


@api_endpoint
async def export_manifest(request: Request, who: Principal) -> Response:
    """The manifest of one of ``who``'s finished exports, kept in memory or
    on disk (DIR/exports/) since."""
    admin = admin_context(request)
    eid = request.path_params["eid"]
    entry = _export_entry(request, who)
    manifest = entry.run.manifest if entry else None
    if manifest is None and _valid_eid(eid):
        doc = admin.exports.load_manifest(eid)
        if doc is not None and (doc.get("exported_by") == who.user.name or who.user.is_admin):
            manifest = doc
    if manifest is None:
        return json_error(404, "no finished export with this id (of yours)")
    return JSONResponse(manifest, headers={
        "Content-Disposition": f'attachment; filename="{manifest.get("file", eid)}.manifest.json"'})


def _export_entry(request: Request, who: Principal) -> ExportEntry | None:
    """The URL's export when ``who`` may see it (by export id or own handle)."""
    return admin_context(request).exports.find(request.path_params["eid"], who.user.name, who.user.is_admin)


def _valid_eid(eid: str) -> bool:
    return 8 <= len(eid) <= 64 and set(eid) <= _EID_OK


ROUTES: list[BaseRoute] = [
    Route("/export", ui_endpoint(export)),
    Route("/api/v1/export", api_endpoint(export)),
    Route("/api/v1/exports/{eid}", export_progress),
    Route("/api/v1/exports/{eid}/manifest", export_manifest),
]
