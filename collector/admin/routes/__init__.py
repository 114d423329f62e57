"""Routes: the admin server's HTTP handlers, one module per area.

Each area module opens with the URLs it serves and ends with ``ROUTES``, a
plain list of Starlette routes; ``admin/app.py`` joins the lists into one
application.  The areas:

- ``auth``: ``/login``, ``/logout``, ``/account`` and ``/account/tokens``
- ``search``: ``/``, the search page and its activity chart
- ``events``: ``/events/{id}``, one event in full
- ``export``: ``/export``, ``/api/v1/export``, ``/api/v1/exports/{eid}[/manifest]``
- ``users``: ``/users`` (admins)
- ``integrity``: ``/integrity``, ``/integrity/verify``, ``/api/v1/integrity``
- ``api``: ``/api/v1/events[/{id}]``, ``/api/v1/stats``, ``/api/v1/openapi.json``, ``/healthz``
- ``proofs``: ``/api/v1/events/{id}/proof``, ``/api/v1/proofs/consistency``,
  ``/api/v1/checkpoints/heads``, ``/api/v1/checkpoints/{writer}/head``
  (joined to ``api``'s list)
- ``streams``: ``/api/v1/streams``, the SIEM streams' lag (admins)

Shared by the areas:

- ``context``: what the handlers share (the reader, the user and session
  stores, ...), one frozen object on ``app.state``
- ``principal``: who is asking (a session cookie or an API token)
- ``pages``: the Jinja templates and rendering a page
- ``csrf``: reading the forms our pages post, and the tokens they carry
- ``params``: the filter, cursor and single-valued parameters of a URL
- ``audit``: the read-audit hook (every read becomes an event)
- ``errors``: where errors cross the HTTP boundary, once: not signed in,
  QueryParameterError -> 400, TenantScopeError -> 403, 404 and 405

Handlers keep per-request state in the call; nothing here is module state.
"""
