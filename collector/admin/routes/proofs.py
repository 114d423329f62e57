"""Proof routes: Merkle proofs over HTTP (docs/integrity.md section 8).

- ``GET /api/v1/events/{id}/proof``: the inclusion proof of one event
  (``?download=1``: as an attachment, ``proof-<id>.json``)
- ``GET /api/v1/proofs/consistency?writer=W&from=SEAL[&to=SEAL]``: the proof
  that a later checkpoint's log extends an earlier one's
- ``GET /api/v1/checkpoints/heads``: every writer's newest signed tree head
- ``GET /api/v1/checkpoints/{writer}/head``: one writer's

An event's proof is for whoever may read the event (the same 404 for an
event of another tenant as ``/api/v1/events/{id}``); it carries that event's
fields and its writer's signed checkpoint, nothing of other events but
hashes.  Tree heads and consistency proofs tell each writer's event count
over every tenant, like the integrity page's chain heads: admins only, and
monitors (the role made for ``auditlake monitor --url``): these three are
the only endpoints marked ``for_monitors``, which every other refuses a
monitor (``principal.py``).
Making a proof may read a writer's whole chain: it runs on a worker thread,
one at a time (``admin/proofs.py`` keeps the trees between requests).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from auditlake.collector.admin.proofs import ProofNotFound, ProofSource, ProofUnavailable
from auditlake.collector.admin.routes.audit import record
from auditlake.collector.admin.routes.context import admin_context
from auditlake.collector.admin.routes.errors import api_endpoint, json_error
from auditlake.collector.admin.routes.params import single
from auditlake.collector.admin.routes.principal import Principal, for_monitors
from auditlake.collector.admin.search import QueryParameterError
from auditlake.collector.schema import MAX_BYTES

#: Characters kept from an event id in the download's file name.
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
#: A seal number: what a checkpoint's ``seal`` can be (JCS integers stop at 2**53).
_SEAL = re.compile(r"[0-9]{1,16}")
_FLAGS = {"1": True, "true": True, "0": False, "false": False}
#: The longest writer id looked up (writer ids are short: a name or a hex id).
MAX_WRITER_BYTES = 128


@api_endpoint
async def event_proof(request: Request, who: Principal) -> Response:
    """The inclusion proof of the URL's event (when ``who`` may read its tenant)."""
    event_id = request.path_params["id"]
    if len(event_id.encode("utf-8", "replace")) > MAX_BYTES["id"] or "\x00" in event_id:
        raise QueryParameterError("id", f"is longer than {MAX_BYTES['id']} bytes")
    download = _flag(request, "download")
    admin = admin_context(request)
    # The view, scoped to the reader's tenants, says which stored copy they
    # were shown (writer and seq); the proof is of that copy, never of a
    # same-id event of another tenant.
    ev = await run_in_threadpool(admin.reader.event, event_id, who.scope)
    if ev is None:
        return json_error(404, "no event with this id (or not one you may read)")
    doc = await _build(admin.proofs, admin.proofs.inclusion, admin.data, str(ev["writer_id"]), int(ev["seq"]),
                       str(ev["id"]), str(ev["tenant_id"]))
    if isinstance(doc, Response):
        return doc
    await record(request, action="read", user=who.user.name, tenants=(ev["tenant_id"],), resource_id=ev["id"],
                 details={"view": "api-proof", "event_id": ev["id"], "rows": 1,
                          "tree_size": doc["tree_size"], "download": download})
    name = f"proof-{_UNSAFE_IN_NAME.sub('_', event_id)[:120]}.json" if download else None
    return _document(doc, name)


@for_monitors
@api_endpoint
async def consistency_proof(request: Request, who: Principal) -> Response:
    """The consistency proof between two checkpoints of one writer."""
    writer = _writer(single(request, "writer"), "writer")
    first = _seal(request, "from")
    second = _seal(request, "to") if single(request, "to") is not None else None
    if first is None:
        raise QueryParameterError("from", "is required: the seal number of the earlier checkpoint")
    if second is not None and second < first:
        raise QueryParameterError("to", f"checkpoint {second} is before checkpoint {first} (from)")
    denied = await _admins_and_monitors_only(request, who, "consistency proofs")
    if denied is not None:
        return denied
    admin = admin_context(request)
    doc = await _build(admin.proofs, admin.proofs.consistency, admin.data, writer, first, second)
    if isinstance(doc, Response):
        return doc
    await record(request, action="read", user=who.user.name, tenants=None, resource_id=writer,
                 details={"view": "api-consistency-proof", "writer_id": writer,
                          "from": doc["first"]["seal"], "to": doc["second"]["seal"]})
    return _document(doc, None)


@for_monitors
@api_endpoint
async def writer_head(request: Request, who: Principal) -> Response:
    """The URL's writer's newest checkpoint that signs a tree head, as stored."""
    writer = _writer(request.path_params["writer"], "writer")
    denied = await _admins_and_monitors_only(request, who, "signed tree heads")
    if denied is not None:
        return denied
    admin = admin_context(request)
    doc = await _build(admin.proofs, admin.proofs.head, admin.data, writer)
    if isinstance(doc, Response):
        return doc
    await record(request, action="read", user=who.user.name, tenants=None, resource_id=writer,
                 details={"view": "api-tree-head", "writer_id": writer})
    return _document(doc, None)


@for_monitors
@api_endpoint
async def writer_heads(request: Request, who: Principal) -> Response:
    """Every writer's newest signed tree head (what a monitor polls)."""
    denied = await _admins_and_monitors_only(request, who, "signed tree heads")
    if denied is not None:
        return denied
    admin = admin_context(request)
    found = await _build(admin.proofs, admin.proofs.heads, admin.data)
    if isinstance(found, Response):
        return found
    heads, without = found
    await record(request, action="read", user=who.user.name, tenants=None,
                 details={"view": "api-tree-heads", "writers": len(heads) + len(without)})
    return _document({"heads": heads, "without_tree_head": without}, None)


# -- shared by the handlers ------------------------------------------------------------------


async def _build(source: ProofSource, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a worker thread, one at a time; a proof that cannot
    be made is a JSON error response (404 nothing by that name, 409 the lake
    cannot prove it as it stands)."""
    if source.limiter is None:  # made here: a limiter belongs to the running event loop
        source.limiter = anyio.CapacityLimiter(1)
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=source.limiter)
    except ProofNotFound as exc:
        return json_error(404, str(exc))
    except ProofUnavailable as exc:
        return json_error(409, str(exc))


async def _admins_and_monitors_only(request: Request, who: Principal, what: str) -> Response | None:
    """403 (recorded as a denied read) unless ``who`` is an admin or a monitor."""
    if who.user.is_admin or who.user.is_monitor:
        return None
    await record(request, action="read", user=who.user.name, tenants=None, outcome="denied",
                 reason=f"{what} are for admins and monitors", details={"path": request.url.path})
    return json_error(403, f"only admins and monitors may read {what}: they tell every tenant's event count")


def _document(doc: dict[str, Any], attachment: str | None) -> Response:
    """A proof document as JSON, laid out as `auditlake proof` writes it."""
    headers = {"Content-Disposition": f'attachment; filename="{attachment}"'} if attachment else None
    return Response(json.dumps(doc, indent=1) + "\n", media_type="application/json", headers=headers)


def _flag(request: Request, name: str) -> bool:
    value = single(request, name)
    if value is None or value == "":
        return False
    if value.lower() not in _FLAGS:
        raise QueryParameterError(name, "must be 1 or 0")
    return _FLAGS[value.lower()]


def _writer(value: str | None, name: str) -> str:
    if not value:
        raise QueryParameterError(name, "is required: a writer id (see /api/v1/checkpoints/heads)")
    if len(value.encode("utf-8", "replace")) > MAX_WRITER_BYTES or "\x00" in value:
        raise QueryParameterError(name, f"is longer than {MAX_WRITER_BYTES} bytes")
    return value


def _seal(request: Request, name: str) -> int | None:
    value = single(request, name)
    if value is None:
        return None
    if not _SEAL.fullmatch(value):
        raise QueryParameterError(name, "must be a checkpoint's seal number (a whole number, 0 or more)")
    return int(value)


ROUTES: list[BaseRoute] = [
    Route("/api/v1/events/{id}/proof", event_proof),
    Route("/api/v1/proofs/consistency", consistency_proof),
    Route("/api/v1/checkpoints/heads", writer_heads),
    Route("/api/v1/checkpoints/{writer}/head", writer_head),
]
