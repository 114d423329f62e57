"""How a retention step signs what it did: a ``move`` or ``expire``
checkpoint appended to the writer's chain, through the collector's sealer so
that no seal runs between the step's read of the chain head and its write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from auditlake.collector.integrity.checkpoint import ChainCheckpoint, FileEntry, write_checkpoint

#: Appends a checkpoint of a kind (files added, files removed, extra fields)
#: to the writer's chain and returns it, signed and durable.
CheckpointAppender = Callable[[str, list[FileEntry], list[FileEntry], dict[str, Any]], ChainCheckpoint]


def sealer_appender(sealer: Any) -> CheckpointAppender:
    """``Sealer.append_checkpoint`` (the contract), with a stand-in for
    sealers that predate it (single-threaded use only: no seal may run
    concurrently)."""
    if hasattr(sealer, "append_checkpoint"):
        method: CheckpointAppender = sealer.append_checkpoint
        return method

    def append(kind: str, files: list[FileEntry], removed: list[FileEntry], extra: dict[str, Any]) -> ChainCheckpoint:
        st = sealer.state
        cp = ChainCheckpoint(
            writer_id=sealer.writer_id, seal=st.seal + 1, seq=st.seq, chain_hash=st.chain_hash,
            time=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), kind=kind,
            files=tuple(files), removed=tuple(removed), previous=st.checkpoint_digest, extra=extra,
        )
        st.seal = cp.seal
        st.checkpoint_digest = cp.digest()
        st.last = {"files": [], "checkpoint": cp.body()}
        sealer._save_state()
        write_checkpoint(cp, sealer.key, sealer.checkpoint_dirs)
        return cp

    return append
