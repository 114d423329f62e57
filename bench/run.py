"""`make bench`: every benchmark of auditlake, one table, each row next to
its baseline measured in the same run.  Writes the table into
docs/benchmarks.md (between the BENCH markers) and bench/results/latest.md.

    .venv/bin/python bench/run.py [--quick] [--only NAME ...] [--no-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, table_text  # noqa: E402

#: Benchmark modules, in table order; each has bench_rows(quick) -> rows.
MODULES = ("e2e_bench", "sdk_bench", "ingest_bench", "otlp_bench", "isolation_bench", "verify_bench", "query_bench",
           "retention_bench", "fleet_bench", "streams_bench", "orm_bench")

BEGIN, END = "<!-- BENCH:BEGIN -->", "<!-- BENCH:END -->"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller runs (a smoke test, not figures to quote)")
    p.add_argument("--only", nargs="*", default=None, help="module names to run")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    failed = 0
    for name in MODULES:
        if args.only and name not in args.only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            got = module.bench_rows(quick=args.quick)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            got = [(f"{name}: FAILED (see stderr)", "-", "-", "-")]
            failed += 1
        rows.extend(got)
        print(f"  {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = table_text(rows)
    header = f"Measured {stamp} on {machine()}{' (--quick)' if args.quick else ''}.\n\n"
    print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(header + table + "\n")
    docs = ROOT / "docs" / "benchmarks.md"
    if not args.no_docs and not args.quick and not args.only and docs.exists():
        text = docs.read_text()
        if BEGIN in text and END in text:
            before, rest = text.split(BEGIN, 1)
            _, after = rest.split(END, 1)
            docs.write_text(f"{before}{BEGIN}\n{header}{table}\n{END}{after}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
