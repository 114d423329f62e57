"""`make demo`: auditlake end to end on local defaults.

Starts a collector (gRPC 127.0.0.1:4317, admin UI http://127.0.0.1:8080 —
the next free ports if those are taken) on the data directory
./auditlake-demo (recreated on every run: it holds only demo data), creates
ingest keys and an admin login, runs the example clinic app, prints what
DuckDB answers to a few compliance questions, checks the lake's integrity,
and keeps serving until Ctrl-C (or exits with --no-serve).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN_USER, ADMIN_PASSWORD = "admin", "demo-admin-password"

QUESTIONS: list[tuple[str, str]] = [
    (
        "Who viewed patient acme-p001's record this week?",
        """SELECT created_at, user_id, ip_address, outcome FROM events
           WHERE date >= current_date - 7 AND tenant_id = 'acme-health'
             AND resource_type = 'patient' AND resource_id = 'acme-p001' AND action = 'read'
           ORDER BY created_at DESC LIMIT 10""",
    ),
    (
        "Failed logins by IP address (last 24 hours)",
        """SELECT ip_address, count(*) AS failed, count(DISTINCT user_id) AS users,
                  max(created_at) AS last_seen FROM events
           WHERE date >= current_date - 1 AND action = 'login_failed'
           GROUP BY ip_address ORDER BY failed DESC""",
    ),
    (
        "Permission changes in tenant globex-clinic",
        """SELECT created_at, user_id AS granted_by, resource_id AS granted_to, action, changes
           FROM events WHERE tenant_id = 'globex-clinic'
             AND action IN ('permission_grant', 'permission_revoke')
           ORDER BY created_at DESC LIMIT 10""",
    ),
    (
        "Updates to patient records, with what changed (newest 5)",
        """SELECT created_at, tenant_id, user_id, resource_id, changes FROM events
           WHERE action = 'update' AND resource_type = 'patient'
           ORDER BY created_at DESC LIMIT 5""",
    ),
    (
        "Activity per tenant and outcome",
        """SELECT tenant_id, outcome, count(*) AS events, count(DISTINCT user_id) AS actors
           FROM events WHERE tenant_id <> '_auditlake' GROUP BY ALL ORDER BY ALL""",
    ),
]


def port_or_next(preferred: int) -> int:
    """``preferred`` if it is free on 127.0.0.1, else the next free one."""
    for port in range(preferred, preferred + 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditlake.collector", *args], text=True,
                          capture_output=True, input=input, check=check)


def heading(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-serve", action="store_true", help="exit after the answers (used by the tests)")
    p.add_argument("--data", default=str(ROOT / "auditlake-demo"), help="demo data directory (recreated)")
    p.add_argument("--rounds", type=int, default=120, help="sessions the example app simulates")
    args = p.parse_args()
    # SIGTERM (e.g. from `timeout` or a supervisor) unwinds like Ctrl-C, so
    # the collector is stopped cleanly below instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    data = Path(args.data).resolve()
    if data.exists():
        shutil.rmtree(data)
    heading(f"Setting up {data}")
    key = cli("keys", "create", "--data", str(data), "--tenant", "acme-health",
              "--tenant", "globex-clinic", "--description", "clinic demo app").stdout.strip()
    print(f"ingest key for tenants acme-health, globex-clinic: {key[:16]}…")
    cli("users", "add", "--data", str(data), ADMIN_USER, "--role", "admin", input=ADMIN_PASSWORD + "\n")
    grpc_port = port_or_next(4317)
    http_port = port_or_next(8080) if not args.no_serve else 0
    ready = data / "demo.ready"
    collector = subprocess.Popen(
        [sys.executable, "-m", "auditlake.collector", "serve", "--data", str(data),
         "--grpc-listen", f"127.0.0.1:{grpc_port}",
         "--http-listen", f"127.0.0.1:{http_port}" if http_port else "",
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=open(data / "collector.log", "w"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if collector.poll() is not None or time.monotonic() > deadline:
                print((data / "collector.log").read_text(), file=sys.stderr)
                print("demo: the collector did not start (log above)", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(
            f"collector: gRPC 127.0.0.1:{grpc_port}"
            + (f", admin UI http://127.0.0.1:{http_port}" if http_port else "")
        )

        heading("Running the example clinic app (examples/clinic_app.py)")
        env = {**os.environ, "AUDITLAKE_ENDPOINT": f"127.0.0.1:{grpc_port}", "AUDITLAKE_API_KEY": key,
               "AUDITLAKE_SPOOL_DIR": str(data / "app-spool")}
        app = subprocess.run([sys.executable, str(ROOT / "examples" / "clinic_app.py"),
                              "--rounds", str(args.rounds)], env=env, text=True, capture_output=True)
        sys.stdout.write(app.stdout)
        if app.returncode != 0:
            sys.stderr.write(app.stderr)
            return 1
        recorded = int(app.stdout.split("recorded ")[1].split()[0])

        # Acknowledged means durable; queryable follows at the next seal (≤ 1 s).
        deadline = time.monotonic() + 15
        while True:
            out = cli("query", "--data", str(data), "--format", "jsonl",
                      "SELECT count(*) AS n FROM events WHERE tenant_id <> '_auditlake'").stdout
            stored = json.loads(out)["n"]
            if stored >= recorded or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(f"queryable in the lake: {stored} of {recorded} events")
        if stored != recorded:
            print("demo: events are missing from the lake", file=sys.stderr)
            return 1

        for question, sql in QUESTIONS:
            heading(question)
            print(f"$ auditlake query \"{' '.join(sql.split())}\"")
            sys.stdout.write(cli("query", "--data", str(data), sql).stdout)

        heading("Integrity: auditlake verify")
        v = cli("verify", "--data", str(data), check=False)
        sys.stdout.write(v.stdout)
        if v.returncode != 0:
            sys.stderr.write(v.stderr)
            return 1

        if args.no_serve:
            return 0
        heading("Serving")
        if http_port:
            print(f"admin UI: http://127.0.0.1:{http_port}  (user {ADMIN_USER!r}, password {ADMIN_PASSWORD!r})")
        print(f"try: .venv/bin/auditlake query --data {data} \"SELECT action, count(*) FROM events GROUP BY ALL\"")
        print("Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            collector.wait()
        return 0
    finally:
        if collector.poll() is None:
            collector.send_signal(signal.SIGTERM)
            try:
                collector.wait(30)
            except subprocess.TimeoutExpired:
                collector.kill()


if __name__ == "__main__":
    sys.exit(main())
