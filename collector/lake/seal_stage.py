"""The seal's staging step: write a prepared seal's Parquet files, one per
UTC day touched (``events/date=D/part-<writer>-<seal>.parquet``), under
their hidden temporary names in the lake store
(``.part-<writer>-<seal>.parquet.tmp``, fsynced: no reader of the folder or
``*.parquet`` glob reads them, see lake/files.py).

Staging runs on a thread of its own, so under a backlog seal N's Parquet is
written (C++, outside the GIL) while the sealer hashes seal N+1.  A staged
file is not committed: until the commit point names it, a crash or an error
leaves only a temporary file, which recovery deletes.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import Future, ThreadPoolExecutor

from auditlake.collector.lake.files import StagedFile, partition_key, split_by_day, stage_table
from auditlake.collector.lake.seal_chain import PreparedSeal
from auditlake.collector.storage.store import Store


def seal_file_key(writer_id: str, seal_no: int, day: dt.date) -> str:
    """The lake key of a seal's file of ``day``."""
    return f"{partition_key(day)}/part-{writer_id}-{seal_no:010d}.parquet"


class Stager:
    """Writes prepared seals' files into ``lake`` on one stager thread
    (started on first use)."""

    def __init__(self, lake: Store, writer_id: str) -> None:
        self.lake = lake
        self.writer_id = writer_id
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, prepared: PreparedSeal) -> Future[list[StagedFile]]:
        """Stage the prepared seal's files on the stager thread."""
        table, seal_no = prepared.table, prepared.seal_no

        def stage() -> list[StagedFile]:
            staged = []
            if table.num_rows:
                for day, rows in sorted(split_by_day(table).items()):
                    staged.append(stage_table(self.lake, seal_file_key(self.writer_id, seal_no, day), rows))
            return staged

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="auditlake-stager")
        return self._pool.submit(stage)

    def shutdown(self) -> None:
        """Wait for the thread to finish its work and stop it (a later submit starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
