"""How a retention run stops between two steps: asked to (a collector
shutting down sets the cancel event), or killed at a named step by the
fault-injection test hook, which simulates ``kill -9`` at the worst moment.

Every step is safe to interrupt: docs/retention.md gives the argument, and
tests/retention/test_faults.py kills a run at each of ``FAIL_POINTS``.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

#: Test hook: when set to a step name, the job ``os._exit(137)``s at that step
#: (simulates kill -9 at the worst moment).  Steps: see ``FAIL_POINTS``.
FAIL_ENV = "AUDITLAKE_RETENTION_FAIL_AT"
#: Test hook: seconds to sleep before each group's copy (lets a test break
#: the cold store in the middle of a run).
PAUSE_ENV = "AUDITLAKE_RETENTION_PAUSE_S"
FAIL_POINTS = (
    "mid_copy",  # after the first chunk of a cold file is written
    "copied",  # every file of the day copied, none verified yet
    "verified",  # copies verified, before the move checkpoint
    "move_checkpointed",  # move checkpoint signed, cold index not updated
    "indexed",  # cold index updated, hot copy not removed
    "hot_removed_partly",  # the first hot file removed
    "moved",  # hot copies removed, meta-audit event not yet stored
    "expire_checkpointed",  # expire tombstone signed, cold index not updated
    "expire_indexed",  # cold index updated, cold files not deleted
    "cold_removed_partly",  # the first cold file deleted
)


class Cancelled(Exception):
    """The job was asked to stop between two steps."""


def fail_point(step: str) -> None:
    """Crash here if the test hook names this step (a documented test hook)."""
    if os.environ.get(FAIL_ENV) == step:
        log.error("%s=%s: exiting now (fault-injection test hook)", FAIL_ENV, step)
        logging.shutdown()
        os._exit(137)


def pause_before_copy() -> None:
    """Sleep as long as the pause test hook asks (0 unless set)."""
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause:
        time.sleep(pause)
