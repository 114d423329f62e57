"""Params: what a URL's query string asks for (the event filter, the
paging cursor, single-valued parameters); a bad value is a
QueryParameterError naming the parameter."""

from __future__ import annotations

from starlette.requests import Request

from auditlake.collector.admin.search import Cursor, Filter, QueryParameterError, parse_filter

#: The time range of the search page when the URL names none (the API has none).
UI_DEFAULT_RANGE = "24h"


def filter_of(request: Request, *, ui_mode: bool) -> Filter:
    """The event filter of the URL; ``ui_mode``: as the search form sends it."""
    q = request.query_params
    # The form always sends the range select: a preset wins over stale
    # from/to, and a custom range ignores the select.
    rng = (q.get("range") or "").strip() if ui_mode else ""
    ignored: tuple[str, ...] = ("from", "to") if rng and rng != "custom" else ("range",) if rng == "custom" else ()

    def get(name: str) -> list[str]:
        return [] if name in ignored else q.getlist(name)

    return parse_filter(get, default_range=UI_DEFAULT_RANGE if ui_mode else "")


def cursor_of(request: Request) -> Cursor | None:
    """The paging cursor of the URL, if any."""
    values = request.query_params.getlist("cursor")
    if len(values) > 1:
        raise QueryParameterError("cursor", "give at most one value")
    return Cursor.decode(values[0]) if values and values[0] else None


def single(request: Request, name: str) -> str | None:
    """The one value of parameter ``name``, or None when it is absent."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise QueryParameterError(name, "give at most one value")
    return values[0] if values else None
