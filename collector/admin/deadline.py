"""A deadline on receiving each HTTP request, which uvicorn lacks.

uvicorn's ``timeout_keep_alive`` is reset by every byte received, so a client
that trickles a request (or never finishes its headers) holds its connection
and a file descriptor forever (Slowloris).  The protocol class here gives
each request an absolute deadline, counted from the moment the server
starts waiting for it, for its head and body to arrive; past it the
connection is closed.  Responses (a long export download) are not limited:
the deadline is disarmed once the request is fully received.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def deadline_protocol(receive_timeout_s: float) -> type[H11Protocol]:
    """An h11 protocol class that closes a connection whose request has not
    fully arrived within ``receive_timeout_s``."""

    class RequestDeadlineProtocol(H11Protocol):
        """uvicorn's h11 protocol with a request-receipt deadline."""

        timeout_s = receive_timeout_s

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            cycle = self.cycle
            if cycle is not None and not cycle.more_body and not cycle.response_complete:
                self._disarm()  # the whole request is here: the app works on it

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets its own deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(self.timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            cycle = self.cycle
            waiting = cycle is None or cycle.response_complete or cycle.more_body
            if waiting and not self.transport.is_closing():
                log.info("closing a connection from %s: its request did not arrive within %g s",
                         self.client[0] if self.client else "?", self.timeout_s)
                if cycle is not None and not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
                self.transport.close()

    return RequestDeadlineProtocol
