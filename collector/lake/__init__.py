"""Lake: from durable batches to day-partitioned Parquet, and the read view.

Owns: the accepted batch and its batch-id index (``batch``), the write-ahead
log (``wal``), sealing into chained Parquet (``seal``), the Parquet files
themselves (``files``), compaction (``compact``), the write path as one
object (``writer``), the DuckDB ``events`` view (``query``), the JSON and
OCSF encodings of events as DuckDB SQL (``encode``, for exports and
streams) and the cold tier's read side: its index and the dataset over its
live files (``cold``).
docs/architecture.md and docs/durability.md describe it.

Imports: ``integrity``, ``storage`` and the foundation.
Imported by: ``ingest``, ``retention``, ``admin``, ``streams``, ``cli``/``server``.
"""
