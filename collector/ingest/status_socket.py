"""The status socket: how the admin process asks the ingest process for its
metrics and readiness.

The admin HTTP listener is served by a process of its own
(admin/process.py), while ingest counters, the write-ahead log, the sealer
and readiness live in the collector process.  The collector listens on a
Unix socket, ``DIR/state/status.sock`` (mode 0600 inside the 0700 state
folder: only the collector's own user connects); the admin process sends
one line, ``metrics`` or ``health``, and reads the answer until the
collector closes the connection: Prometheus text, or the readiness as JSON.
Every scrape is answered from the counters of that moment, and a collector
that does not answer within a couple of seconds is reported as such.

A Unix socket path holds at most 107 bytes; a data directory deeper than
that is reached through ``/proc/self/fd/N/`` of an open descriptor of the
state folder (Linux).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: The socket's name inside DIR/state.
NAME = "status.sock"
#: Seconds one exchange may take, either side.
TIMEOUT_S = 2.0
#: Longest request line read.
_MAX_REQUEST = 64
#: Bytes a Unix socket path may have (sun_path, less the terminating NUL, and a margin for BSDs).
_MAX_PATH = 100


@contextlib.contextmanager
def _address(state_dir: Path) -> Iterator[str]:
    """The path to bind or connect to for the socket in ``state_dir``."""
    path = state_dir / NAME
    if len(os.fsencode(path)) <= _MAX_PATH:
        yield str(path)
        return
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{NAME}"
    finally:
        os.close(fd)


class StatusSocket:
    """The collector's side: answers each request line named in ``answers``
    with what its callable returns, one connection at a time."""

    def __init__(self, state_dir: Path, answers: Mapping[str, Callable[[], bytes]]) -> None:
        self.path = state_dir / NAME
        self._state_dir = state_dir
        self._answers = dict(answers)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Bind (replacing a socket left by a crashed run: the caller holds
        the data directory's lock) and serve in a background thread."""
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _address(self._state_dir) as address:
                sock.bind(address)
            os.chmod(self.path, 0o600)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.5)  # so stop() is noticed
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="auditlake-status", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("status socket: accept failed")
                self._stopping.wait(0.5)
                continue
            with conn:
                try:
                    self._answer(conn)
                except OSError:  # the asker went away or was too slow: nothing to answer
                    pass
                except Exception:  # noqa: BLE001 - one bad answer must not end the socket
                    log.exception("status socket: answering failed")

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        request = b""
        while b"\n" not in request and len(request) < _MAX_REQUEST:
            chunk = conn.recv(_MAX_REQUEST)
            if not chunk:
                break
            request += chunk
        answer = self._answers.get(request.split(b"\n", 1)[0].decode("ascii", "replace").strip())
        conn.sendall(answer() if answer is not None else b"")

    def stop(self) -> None:
        """Stop answering and remove the socket."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_S + 1.0)
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)


def ask(state_dir: Path, what: str, timeout_s: float = TIMEOUT_S) -> bytes:
    """The collector's answer to ``what`` (``metrics`` or ``health``) through
    the socket in ``state_dir``; OSError when no collector answers in time
    (none running, or one too busy to say)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        with _address(state_dir) as address:
            sock.connect(address)
        sock.sendall(what.encode("ascii") + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
