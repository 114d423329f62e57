"""Where the SQLAlchemy integration keeps its state (``Session.info`` /
``Connection.info`` keys), its bounds and its logger."""

from __future__ import annotations

import logging
from typing import Final

log = logging.getLogger("auditlake.sdk.sqlalchemy")

#: Keys of the values this module keeps in ``Session.info`` / ``Connection.info``.
_SESSION_KEY: Final = "auditlake.sqlalchemy"
_CONNECTION_KEY: Final = "auditlake.sqlalchemy"
_INFLIGHT_KEY: Final = "auditlake.sqlalchemy.statements"

#: At most this many bound values in one ``IN (...)`` (SQLite allows 32,766).
_MAX_BOUND_VALUES: Final = 30_000


