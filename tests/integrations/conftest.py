"""A real PostgreSQL server for the ORM integration tests, and a clean SDK.

``postgres`` (session-scoped) runs Debian's ``initdb`` + ``pg_ctl`` in a
temporary directory: the server listens on 127.0.0.1 on a free port, keeps its
unix socket in that directory, runs with fsync off (a test database needs no
durability), trusts local connections, and is stopped with
``pg_ctl stop -m immediate`` at the end of the session, leaving no process.

initdb refuses to run as root, so under root the commands run as the
``postgres`` system user (created by the Debian package) through ``runuser``,
with the temporary directory handed to that user.

When PostgreSQL is not installed the fixture FAILS (never skips): a skipped
database test reads as a pass in CI. ``make postgres`` installs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

# The SDK tests' own guard, for every test here too: no spool in the real
# home directory, no configured collector reached, the SDK shut down after.
from tests.sdk.conftest import _sdk_is_shut_down_after_each_test  # noqa: F401

__all__ = ["PostgresServer", "find_pg_bin", "postgres", "start_postgres"]

SUPERUSER = "postgres"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None if not installed.

    PATH first (a packager or a developer may have put them there), then
    Debian's versioned layout, newest version first.
    """
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).resolve().parent == Path(pg_ctl).resolve().parent:
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
                        reverse=True)
    for candidate in candidates:
        if Path(candidate).with_name("pg_ctl").exists():
            return Path(candidate).parent
    return None


@dataclass
class PostgresServer:
    """A running PostgreSQL server owned by the test session."""

    bin_dir: Path
    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    password: str = ""  # trust authentication on 127.0.0.1
    _as_postgres: list[str] = field(default_factory=list)
    _created: set[str] = field(default_factory=set)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, dbname: str, driver: str = "psycopg") -> str:
        """An SQLAlchemy URL for ``dbname`` (``postgresql+psycopg://...`` by default)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"{scheme}://{auth}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str) -> str:
        """A libpq connection string for ``dbname`` (psycopg.connect, psql)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def create_database(self, name: str) -> str:
        """Create a fresh, empty database ``name`` (dropped first if present); returns the name."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.add(name)
        return name

    def pg_ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl`` on this server's data directory (as ``postgres`` under root)."""
        cmd = [*self._as_postgres, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)

    def stop(self) -> None:
        """Stop immediately (no checkpoint: the data is thrown away) and wait for the exit."""
        self.pg_ctl("stop", "-m", "immediate", "-w", check=False)


def start_postgres(root: Path) -> PostgresServer:
    """initdb + pg_ctl start in ``root``; fails with a clear message when PostgreSQL is missing."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin). "
            "Run `make postgres` (installs Debian's postgresql package), then re-run the tests.",
            pytrace=False,
        )
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root; hand the directory to the package's system user.
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.fail("running as root needs `runuser` (util-linux) to start PostgreSQL as `postgres`",
                        pytrace=False)
        as_postgres = [runuser, "-u", SUPERUSER, "--"]
    server = PostgresServer(bin_dir=bin_dir, root=root, port=free_port(), _as_postgres=as_postgres)
    server.socket_dir.mkdir(parents=True)
    if as_postgres:
        shutil.chown(root, SUPERUSER)
        shutil.chown(server.socket_dir, SUPERUSER)
        # tmp directories are 0700 under root: the postgres user must reach ``root``.
        for parent in (root, *root.parents):
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
    subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER,
         "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    options = (f"-c listen_addresses={server.host} -p {server.port} "
               f"-c unix_socket_directories={server.socket_dir} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
               "-c max_connections=50")
    log = root / "postgres.log"
    started = server.pg_ctl("start", "-w", "-t", "60", "-o", options, "-l", str(log), check=False)
    if started.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        server.stop()
        pytest.fail(f"pg_ctl start failed ({started.returncode}):\n{started.stderr}\n{text}", pytrace=False)
    _wait_until_accepting(server)
    return server


def _wait_until_accepting(server: PostgresServer, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(server.dsn("postgres"), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session: ``.host``, ``.port``,
    ``.user``, ``.password``, ``.url(dbname)``, ``.create_database(name)``."""
    root = Path(tempfile.mkdtemp(prefix="auditlake-pg-"))
    server: PostgresServer | None = None
    try:
        server = start_postgres(root)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
