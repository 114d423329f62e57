"""The admin server runs in a process of its own, which never outlives the
collector, and the collector's log cannot be flooded."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx

from auditlake.collector.cli import RepeatLimit


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(stat.parent.name), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_admin_server_is_a_child_that_dies_with_the_collector(collector_factory) -> None:  # noqa: ANN001
    c = collector_factory(http=True)
    assert httpx.get(c.http_url + "/login", timeout=10).status_code == 200
    admin = [pid for pid, cmd in _children(c.proc.pid) if "admin-serve" in cmd]
    assert len(admin) == 1, _children(c.proc.pid)
    policy = os.sched_getscheduler(admin[0])
    assert policy == os.SCHED_IDLE  # it runs on what ingest leaves
    c.kill()  # SIGKILL: no chance to stop its child
    deadline = time.monotonic() + 15
    while _alive(admin[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(admin[0]), "the admin process outlived its collector"


def test_a_flood_of_one_log_message_is_cut_to_a_few_lines() -> None:
    limit = RepeatLimit(burst=3, window_s=60)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "accept failed: %s", ("EMFILE",), None)
    kept = [limit.filter(record) for _ in range(1000)]
    assert kept.count(True) == 3
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "another message", (), None)
    assert limit.filter(other)


def test_an_admin_server_that_dies_is_started_again_on_the_same_address(collector_factory) -> None:  # noqa: ANN001
    import signal  # noqa: PLC0415

    c = collector_factory(http=True)
    first = [pid for pid, cmd in _children(c.proc.pid) if "admin-serve" in cmd][0]
    os.kill(first, signal.SIGKILL)  # as the OOM killer would
    deadline = time.monotonic() + 30
    ok = False
    while time.monotonic() < deadline and not ok:
        try:
            ok = httpx.get(c.http_url + "/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            time.sleep(0.2)
    assert ok, c.log()
    again = [pid for pid, cmd in _children(c.proc.pid) if "admin-serve" in cmd]
    assert again and again[0] != first
    assert "the admin server exited" in c.log()


def test_a_busy_admin_port_is_a_clear_error_at_start(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    from tests.conftest import CollectorProcess  # noqa: PLC0415

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        c = CollectorProcess(tmp_path / "data", http=True)
        c.http_port = busy.getsockname()[1]
        with pytest.raises(AssertionError, match="cannot listen for HTTP on 127.0.0.1"):
            c.start()
        assert c.proc is not None and c.proc.poll() is not None  # it exited, it did not hang
    finally:
        busy.close()
