"""Types of the C extension built from _chainhash.c (optional: see verify.parallel)."""

from collections.abc import Sequence

from typing_extensions import Buffer

def check_file(
    fields: Sequence[tuple[int, int, object, object, object, int, int]],
    hashes: tuple[int, object, object],
    rows: int,
    order: Buffer | None,
    leaves: bool,
    /,
) -> tuple[bool, bytes | None, bytes | None, bytes | None]: ...
def complete_root(leaves: Buffer, start: int, size: int, /) -> bytes: ...
