"""How a retention step signs what it did: a ``move`` or ``expire``
checkpoint appended to the writer's chain, through the collector's sealer so
that no seal runs between the step's read of the chain head and its write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auditlake.collector.integrity.checkpoint import ChainCheckpoint, FileEntry

#: Appends a checkpoint of a kind (files added, files removed, extra fields)
#: to the writer's chain and returns it, signed and durable.
CheckpointAppender = Callable[[str, list[FileEntry], list[FileEntry], dict[str, Any]], ChainCheckpoint]


def sealer_appender(sealer: Any) -> CheckpointAppender:
    """The sealer's ``append_checkpoint``: it takes the seal lock, so no
    seal runs between the step's read of the chain head and its write."""
    method: CheckpointAppender = sealer.append_checkpoint
    return method
