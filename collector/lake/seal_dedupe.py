"""Event-id dedupe for the sealer: the ids of the newest sealed events, so
a row whose (tenant, id) was sealed before (or repeats within a seal) is
dropped.

Ids are scoped by tenant: one tenant re-using another's event id stores its
event (and learns nothing).  Each 128-bit id is XORed with a keyed hash of
its tenant (BLAKE2b under a random per-process key), so two events of
different tenants share a window entry only with probability 2**-128, and
no tenant can choose an id that collides with another tenant's.

The sealer remembers the ids of the newest ``dedupe_window_events`` events
it sealed (128-bit UUID values, 24 bytes each); after a restart the window
is rebuilt from the newest sealed files (seal_recovery.py).
docs/durability.md ("Stored once") states the promise.
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: (hi, lo, key) of event ids, as uuid_keys returns them.
IdKeys = tuple[np.ndarray, np.ndarray, np.ndarray]

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
#: Byte positions of the 32 hex digits in an 8-4-4-4-12 UUID string.
_UUID_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)], np.int64)
_MIX = np.uint64(0x9E3779B97F4A7C15)
#: Key of the tenant hash: fresh in every process (the window is rebuilt at start).
_TENANT_KEY = os.urandom(32)


def _tenant_halves(tenants: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The keyed 128-bit hash of each row's tenant (rows ``rows``), as two uint64 arrays."""
    if isinstance(tenants, pa.ChunkedArray):
        tenants = tenants.combine_chunks()
    encoded = pc.dictionary_encode(tenants)
    names = encoded.dictionary.to_pylist()
    digests = np.frombuffer(b"".join(hashlib.blake2b(str(n).encode(), digest_size=16, key=_TENANT_KEY).digest()
                                     for n in names), ">u8").astype(np.uint64).reshape(len(names), 2)
    index = np.asarray(encoded.indices.to_numpy(zero_copy_only=False))[rows]
    return digests[index, 0], digests[index, 1]


def uuid_keys(
    ids: pa.Array | pa.ChunkedArray, tenants: pa.Array | pa.ChunkedArray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, hi, lo, key) of the ids that are UUID strings: their row
    indices, the UUID's two 64-bit halves (XORed with the tenant's keyed
    hash when ``tenants`` is given), and a mixed 64-bit sort key.  Other ids
    (not 36 characters of 8-4-4-4-12 hex) are left out."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(ids)
    empty = np.zeros(0, np.uint64)
    if n == 0:
        return np.zeros(0, np.int64), empty, empty, empty
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + n + 1]
    data_buf = ids.buffers()[2]
    if data_buf is None:
        return np.zeros(0, np.int64), empty, empty, empty
    data = np.frombuffer(data_buf, np.uint8)
    if not ids.null_count and int(offsets[-1]) - int(offsets[0]) == 36 * n and (np.diff(offsets) == 36).all():
        # the usual case: every id a 36-character UUID, packed back to back
        rows = np.arange(n, dtype=np.int64)
        chars = data[offsets[0] : offsets[0] + 36 * n].reshape(n, 36)[:, _UUID_DIGITS]
    else:
        rows = np.flatnonzero(np.diff(offsets) == 36)
        if ids.null_count:
            valid = np.asarray(pc.is_valid(ids).to_numpy(zero_copy_only=False))
            rows = rows[valid[rows]]
        chars = data[offsets[rows][:, None] + _UUID_DIGITS[None, :]]
    nib = _HEX[chars]
    if (nib == 255).any():
        ok = (nib != 255).all(axis=1)
        rows, nib = rows[ok], nib[ok]
    packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    halves = np.ascontiguousarray(packed).view(">u8").astype(np.uint64)
    hi, lo = halves[:, 0].copy(), halves[:, 1].copy()
    if tenants is not None and len(rows):
        thi, tlo = _tenant_halves(tenants, rows)
        hi ^= thi
        lo ^= tlo
    return rows, hi, lo, hi ^ (lo * _MIX)


class RecentEventIds:
    """The ids of the newest ``capacity`` sealed events, for event-id dedupe.

    Held as a few sorted generations of 128-bit UUID values (24 bytes per
    id with the sort key); a lookup is a binary search per generation.  A
    row counts as a duplicate only when its full 128-bit value matches (id
    XOR tenant hash), so a sort-key collision can at worst store a
    duplicate, never drop an event.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._gen_cap = max(capacity // 8, 4096)
        self._gens: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(g[0]) for g in self._gens)

    def duplicates(self, ids: pa.Array | pa.ChunkedArray,
                   tenants: pa.Array | pa.ChunkedArray | None = None) -> np.ndarray:
        """Row indices of ``ids`` (of ``tenants``) that were seen before or
        repeat an earlier row (the first occurrence is kept)."""
        rows, hi, lo, key = uuid_keys(ids, tenants)
        dup: np.ndarray = rows[self.duplicate_mask(hi, lo, key)]
        return dup

    def duplicate_mask(
        self, hi: np.ndarray, lo: np.ndarray, key: np.ndarray, prior: IdKeys | None = None
    ) -> np.ndarray:
        """For keys from uuid_keys: which repeat an earlier one, a remembered
        id, or one of ``prior`` (keys of ids about to be remembered)."""
        dup = np.zeros(len(key), bool)
        if self.capacity == 0 or len(key) == 0:
            return dup
        order = np.argsort(key, kind="stable")
        ks, hs, ls = key[order], hi[order], lo[order]
        same = (ks[1:] == ks[:-1]) & (hs[1:] == hs[:-1]) & (ls[1:] == ls[:-1])
        dup[order[1:][same]] = True
        with self._lock:
            gens = list(self._gens)
        if prior is not None and len(prior[2]):
            phi, plo, pkey = prior
            porder = np.argsort(pkey, kind="stable")
            gens.append((pkey[porder], phi[porder], plo[porder]))
        for gk, ghi, glo in gens:
            pos = np.searchsorted(gk, key)
            np.minimum(pos, len(gk) - 1, out=pos)
            dup |= (gk[pos] == key) & (ghi[pos] == hi) & (glo[pos] == lo)
        return dup

    def duplicate_rows(self, table: pa.Table) -> np.ndarray:
        """Row indices of a batch (id and tenant_id columns) whose event was
        sealed before or comes earlier in the batch."""
        if self.capacity == 0:
            return np.zeros(0, np.int64)
        return self.duplicates(table.column("id"), table.column("tenant_id"))

    def remember(self, ids: pa.Array | pa.ChunkedArray, tenants: pa.Array | pa.ChunkedArray | None = None) -> None:
        """Add ``ids`` (sealed now) as the newest; forget the oldest beyond capacity."""
        _, hi, lo, key = uuid_keys(ids, tenants)
        self.remember_keys(hi, lo, key)

    def remember_keys(self, hi: np.ndarray, lo: np.ndarray, key: np.ndarray) -> None:
        """remember() for keys already computed by uuid_keys."""
        if self.capacity == 0 or len(key) == 0:
            return
        with self._lock:
            if self._gens and len(self._gens[-1][0]) + len(key) <= self._gen_cap:
                gk, ghi, glo = self._gens.pop()
                key, hi, lo = np.concatenate([gk, key]), np.concatenate([ghi, hi]), np.concatenate([glo, lo])
            order = np.argsort(key, kind="stable")
            self._gens.append((key[order], hi[order], lo[order]))
            total = sum(len(g[0]) for g in self._gens)
            while len(self._gens) > 1 and total - len(self._gens[0][0]) >= self.capacity:
                total -= len(self._gens.pop(0)[0])
