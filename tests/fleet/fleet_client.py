"""Run by test_fleet in its own process: an application recording events
through the SDK to a fleet of collectors (one gRPC target naming them all),
then printing how many it recorded and how long ``record()`` took.

    python fleet_client.py TARGET KEY TAG N SPOOL_DIR
"""

from __future__ import annotations

import json
import sys
import time

from auditlake import sdk
from auditlake.sdk import BatchPolicy, RetryPolicy, SpoolPolicy


def main() -> None:
    target, key, tag, n, spool = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    sdk.configure(
        endpoint=target,
        api_key=key,
        service_name="fleet-client",
        batch=BatchPolicy(schedule_delay=0.02, max_batch_size=50, export_timeout=2.0),
        retry=RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.5),
        spool=SpoolPolicy(directory=spool),
    )
    worst = 0.0
    with sdk.actor(user_id=f"user-{tag}", tenant_id="t1"):
        for i in range(n):
            t0 = time.perf_counter()
            sdk.record("read", tag, f"{tag}-{i:06d}")
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.001)
    sdk.flush(timeout=120)
    sdk.shutdown()
    print(json.dumps({"recorded": n, "worst_record_s": worst}), flush=True)


if __name__ == "__main__":
    main()
