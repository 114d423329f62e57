"""Crypto-shredding (GDPR article 17 on an append-only, signed lake): the
subject keys, encrypting personal fields as a batch is stored, decrypting
them for readers, and carrying out an erasure request.

Off unless ``[erasure] enabled = true`` (config.ErasureConfig); then the
write path (lake/writer.py ``LakeWriter.store``) replaces each configured
field of an event whose ``user_id`` is not empty with

    enc:1:<key_id>:<base64url(AES-SIV(key).encrypt(value, [field, event id]))>

before the event is hashed, so the chain, the Merkle tree, checkpoints and
proofs cover the ciphertext and never change.  AES-SIV is deterministic: the
same event stored by two collectors of a fleet gets the same bytes (the view's
one-copy rule compares them).  The key of a subject (tenant_id, user_id) is
named by ``key_id`` = HMAC-SHA256(salt, tenant "\\0" user)[:32 hex], so the
key store never names a subject in clear.  Erasure deletes the key: every
stored value of the subject then reads ``[erased]``.

Keys live in the fleet state (storage/tiers.py ``fleet_state``) under
``subject-keys/``: DIR/keys/subject-keys/ for a local lake, URL/_auditlake/
subject-keys/ for a shared one, created with a conditional put so two
collectors never make two keys for one subject.  docs/erasure.md is the
operator's account.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from auditlake.collector.config import ErasureConfig, erasure_config, load_toml
from auditlake.collector.errors import ConfigError
from auditlake.collector.storage.conditional import ConditionalWrites, PreconditionFailed
from auditlake.collector.storage.datadir import DataDir
from auditlake.collector.storage.maintenance import MaintenanceBusy
from auditlake.collector.storage.store import ObjectExistsError, Store
from auditlake.collector.storage.tiers import fleet_state

log = logging.getLogger(__name__)

#: What an encrypted value starts with (the version names the format above).
PREFIX = "enc:1:"
#: What a reader sees in place of a value whose key was destroyed.
ERASED = "[erased]"
#: The DuckDB function the ``events`` view wraps each encrypted column in.
DECRYPT_FUNCTION = "auditlake_decrypt"
#: The folder of the fleet state holding the salt and the subject keys.
KEY_FOLDER = "subject-keys"
#: Batch ids of erasure audit events (ingest/inbox.py); the request file of
#: the same name in DIR/state/erase-requests/ is what authorises an erasure.
ERASE_BATCH_PREFIX = "erase-"

_SALT = "salt"
_GENERATION = "generation"
_KEY_BYTES = 64  # AES-256-SIV: two 256-bit keys
#: Keys read or created at once (file fsyncs and object-store requests overlap).
_CREATE_THREADS = 16


def _keys_store(data: DataDir) -> Store:
    return fleet_state(data).child(KEY_FOLDER, "subject keys")


class SubjectKeys:
    """The subject keys of one lake, with a bounded in-memory cache.

    Every process caches keys; an erasure bumps the ``generation`` object,
    and each process re-reads it at most every ``recheck_s`` and drops its
    cache when it changed, so a destroyed key leaves every process's memory
    within about a second.  Thread-safe."""

    def __init__(self, store: Store, *, cache_size: int = 65_536, recheck_s: float = 1.0) -> None:
        if store.conditional is None:
            raise ConfigError(f"erasure: the key store {store.uri} has no conditional writes (an S3-compatible "
                              "store or a folder is needed)")
        self.store = store
        self._conditional: ConditionalWrites = store.conditional
        self._cache: OrderedDict[str, tuple[AESSIV | None, float]] = OrderedDict()
        self._cache_size = cache_size
        self._recheck_s = recheck_s
        self._checked = -1e9
        self._generation: bytes | None = None
        self._salt: bytes | None = None
        self._names: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_data(cls, data: DataDir) -> SubjectKeys:
        """The key store of ``data``'s lake (local, or the fleet's)."""
        return cls(_keys_store(data))

    # -- naming ----------------------------------------------------------------

    def _load_salt(self, *, create: bool) -> bytes | None:
        if self._salt is None:
            current = self._conditional.read_versioned(_SALT)
            if current is None and create:
                with contextlib.suppress(PreconditionFailed):  # another collector made it first: theirs
                    self._conditional.put_if_absent(_SALT, secrets.token_bytes(32))
                current = self._conditional.read_versioned(_SALT)
            self._salt = current.data if current is not None else None
        return self._salt

    def key_id(self, tenant_id: str, user_id: str, *, create: bool = True) -> str | None:
        """The key's name for a subject (None when no salt exists and
        ``create`` is false: nothing was ever encrypted in this lake)."""
        salt = self._load_salt(create=create)
        if salt is None:
            return None
        subject = (tenant_id, user_id)
        name = self._names.get(subject)
        if name is None:
            if len(self._names) >= self._cache_size:
                self._names.clear()  # the salt never changes: recomputing is all a miss costs
            name = self._names[subject] = hmac.new(salt, f"{tenant_id}\0{user_id}".encode(),
                                                   hashlib.sha256).hexdigest()[:32]
        return name

    # -- keys ------------------------------------------------------------------

    def _recheck(self) -> None:
        # Caller holds the lock.  One small read a second at most.
        now = time.monotonic()
        if now - self._checked < self._recheck_s:
            return
        self._checked = now
        try:
            generation: bytes | None = self.store.read(_GENERATION)
        except FileNotFoundError:
            generation = None
        if generation != self._generation:
            self._cache.clear()
            self._generation = generation

    def _cached(self, key_id: str) -> tuple[bool, AESSIV | None]:
        entry = self._cache.get(key_id)
        if entry is None:
            return False, None
        cipher, stamp = entry
        if cipher is None and time.monotonic() - stamp > self._recheck_s:
            # "absent" is re-read: a subject erased earlier gets a new key
            # with its next event.
            return False, None
        self._cache.move_to_end(key_id)
        return True, cipher

    def _remember(self, key_id: str, cipher: AESSIV | None) -> None:
        self._cache[key_id] = (cipher, time.monotonic())
        self._cache.move_to_end(key_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def for_writing(self, key_ids: Iterable[str]) -> dict[str, AESSIV]:
        """Each subject's cipher, creating the keys there are none of: the
        misses are read or created concurrently (a batch can bring thousands
        of new subjects; each new key is one durable create-only write)."""
        out: dict[str, AESSIV] = {}
        missing: list[str] = []
        with self._lock:
            self._recheck()
            for key_id in key_ids:
                hit, cipher = self._cached(key_id)
                if hit and cipher is not None:
                    out[key_id] = cipher
                else:
                    missing.append(key_id)
        if not missing:
            return out
        if len(missing) == 1:
            loaded = [self._load_or_create(missing[0])]
        else:
            with ThreadPoolExecutor(min(_CREATE_THREADS, len(missing)), thread_name_prefix="auditlake-keys") as pool:
                loaded = list(pool.map(self._load_or_create, missing))
        with self._lock:
            for key_id, cipher in zip(missing, loaded, strict=True):
                self._remember(key_id, cipher)
                out[key_id] = cipher
        return out

    def _load_or_create(self, key_id: str) -> AESSIV:
        try:
            return AESSIV(self.store.read(key_id))
        except FileNotFoundError:
            pass
        with contextlib.suppress(ObjectExistsError):  # another collector made it now: theirs is the one key
            self.store.create(key_id, secrets.token_bytes(_KEY_BYTES))
        return AESSIV(self.store.read(key_id))

    def for_reading(self, key_id: str) -> AESSIV | None:
        """The subject's cipher, or None when its key was destroyed."""
        with self._lock:
            self._recheck()
            hit, cipher = self._cached(key_id)
            if hit:
                return cipher
            try:
                raw: bytes | None = self.store.read(key_id)
            except FileNotFoundError:
                raw = None
            cipher = AESSIV(raw) if raw is not None and len(raw) == _KEY_BYTES else None
            self._remember(key_id, cipher)
            return cipher

    def destroy(self, key_id: str) -> bool:
        """Delete the subject's key and tell every process to drop its
        cached copy; True when a key existed."""
        with self._lock:
            existed = self.store.exists(key_id)
            self.store.delete(key_id)
            self.store.put(_GENERATION, uuid.uuid4().hex.encode())
            self._cache.clear()
            self._checked = -1e9
            return existed


# -- encrypting (the write path) ---------------------------------------------------


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    # base64.urlsafe_b64encode without its two wrapper calls: this runs once per value
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FieldEncryptor:
    """Encrypts the configured fields of a batch (``LakeWriter.store``)."""

    def __init__(self, settings: ErasureConfig, keys: SubjectKeys) -> None:
        self.fields = settings.fields
        self.keys = keys

    def encrypt(self, table: pa.Table) -> pa.Table:
        """``table`` with each configured field of each event that has a
        user_id encrypted under its subject's key (one key lookup per
        subject per batch); empty values stay empty."""
        if table.num_rows == 0:
            return table
        users = table.column("user_id").to_pylist()
        if not any(users):
            return table
        tenants = table.column("tenant_id").to_pylist()
        ids = [i.encode() for i in table.column("id").to_pylist()]
        # One key lookup per subject of the batch.
        names: dict[tuple[str, str], str] = {}
        for subject in zip(tenants, users, strict=True):
            if subject[1] and subject not in names:
                key_id = self.keys.key_id(*subject)
                assert key_id is not None  # create=True
                names[subject] = key_id
        ciphers = self.keys.for_writing(names.values())
        by_subject = {subject: (key_id, ciphers[key_id]) for subject, key_id in names.items()}
        row_cipher = [by_subject.get(subject) for subject in zip(tenants, users, strict=True)]
        for name in self.fields:
            values = table.column(name).to_pylist()
            field = name.encode()
            out = [
                v if not v or rc is None
                else f"{PREFIX}{rc[0]}:{_b64(rc[1].encrypt(v.encode(), [field, eid]))}"
                for v, rc, eid in zip(values, row_cipher, ids, strict=True)
            ]
            idx = table.schema.get_field_index(name)
            table = table.set_column(idx, table.schema.field(idx), pa.array(out, table.schema.field(idx).type))
        return table


class WriterErasure:
    """What ``LakeWriter.store`` does for erasure: nothing when disabled;
    else encrypt each batch and carry out erasure requests."""

    def __init__(self, data: DataDir, settings: ErasureConfig) -> None:
        self.data = data
        self.enabled = settings.enabled
        self.encryptor = FieldEncryptor(settings, SubjectKeys.for_data(data)) if settings.enabled else None

    @classmethod
    def for_writer(cls, data: DataDir, toml: dict[str, Any] | None) -> WriterErasure:
        """From the collector's configuration (``toml``; default DIR/auditlake.toml)."""
        return cls(data, erasure_config(toml if toml is not None else load_toml(data.config_file)))

    def encrypt(self, table: pa.Table) -> pa.Table:
        """The batch with its personal fields encrypted."""
        assert self.encryptor is not None
        return self.encryptor.encrypt(table)

    def carry_out(self, batch_id: str, append_checkpoint: Callable[..., Any],
                  maintenance_lock: AbstractContextManager[Any], *, wait_s: float = 120.0) -> None:
        """If DIR/state/erase-requests/<batch_id>.request exists (only a
        process with the data directory can write it; a client choosing such
        a batch id changes nothing), destroy the key it names and sign an
        ``erase`` checkpoint, before the batch (the erasure's audit event) is
        stored; the result is written beside the request.  Under the lake's
        maintenance lock (in a fleet, its lease: a checkpoint other than a
        seal carries the lease's fencing token), waiting up to ``wait_s``
        while another collector holds it; past that MaintenanceBusy, and the
        inbox retries the batch."""
        request = erase_request_dir(self.data) / f"{batch_id}.request"
        try:
            body = json.loads(request.read_text())
        except FileNotFoundError:
            return
        assert self.encryptor is not None
        extra = {"key_id": body["key_id"], "tenant_id": body["tenant_id"], "reason": body.get("reason", "")}
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with maintenance_lock:
                    existed = self.encryptor.keys.destroy(body["key_id"])
                    checkpoint = append_checkpoint("erase", extra=extra)
                break
            except MaintenanceBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        result = request.with_suffix(".result")
        tmp = request.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seal": checkpoint.seal, "key_existed": existed}))
        os.replace(tmp, result)
        request.unlink(missing_ok=True)
        log.info("erasure: key %s of tenant %s destroyed; checkpoint %d", body["key_id"], body["tenant_id"],
                 checkpoint.seal)


def erase_request_dir(data: DataDir) -> Path:
    """Where `auditlake erase` leaves the requests the write path carries out."""
    return data.state / "erase-requests"


# -- decrypting (every reader) -----------------------------------------------------


class FieldDecryptor:
    """Decrypts stored values for readers: the plaintext, ``[erased]`` when
    the key is gone (or the value does not authenticate), and values that
    were never encrypted unchanged."""

    def __init__(self, fields: Sequence[str], keys: SubjectKeys) -> None:
        self.fields = tuple(fields)
        self.keys = keys

    def value(self, value: str, field: str, event_id: str,
              ciphers: dict[str, AESSIV | None] | None = None) -> str:
        """One stored value as a reader sees it (``ciphers``: the keys
        already looked up by this call's caller, filled as it goes)."""
        if not value.startswith(PREFIX):
            return value
        key_id, sep, body = value[len(PREFIX):].partition(":")
        if not sep:
            return ERASED
        if ciphers is None:
            ciphers = {}
        if key_id in ciphers:
            cipher = ciphers[key_id]
        else:
            cipher = ciphers[key_id] = self.keys.for_reading(key_id)
        if cipher is None:
            return ERASED
        try:
            return cipher.decrypt(_unb64(body), [field.encode(), event_id.encode()]).decode()
        except (InvalidTag, ValueError, binascii.Error, UnicodeDecodeError):
            return ERASED

    def array(self, values: pa.Array | pa.ChunkedArray, field: str,
              ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """A column as readers see it; untouched (no copy) when no value is
        encrypted (events stored before erasure was enabled)."""
        marked = pc.starts_with(values, PREFIX)
        if not pc.any(marked).as_py():
            return values
        out = values.to_pylist()
        id_list = ids.to_pylist()
        ciphers: dict[str, AESSIV | None] = {}  # one key-store lookup per subject per call
        for i in pc.indices_nonzero(marked).to_pylist():
            out[i] = self.value(out[i], field, id_list[i], ciphers)
        return pa.array(out, pa.string())

    def table(self, table: pa.Table) -> pa.Table:
        """A table of stored events (with ``id``) as readers see it."""
        if "id" not in table.column_names:
            return table
        for name in self.fields:
            if name in table.column_names:
                idx = table.column_names.index(name)
                col = self.array(table.column(idx), name, table.column("id"))
                table = table.set_column(idx, table.schema.field(idx), col)
        return table

    def register(self, con: Any) -> None:
        """Register :data:`DECRYPT_FUNCTION` (value, field, id) on a DuckDB
        connection (its cursors see it too); vectorised over Arrow arrays."""
        def decrypt(values: pa.Array, fields: pa.Array, ids: pa.Array) -> pa.Array:
            if len(values) == 0:
                return values
            field = fields[0].as_py()
            return self.array(values, field, ids)

        # Not registered yet on a new connection (DuckDB raises InvalidInputException).
        with contextlib.suppress(Exception):
            con.remove_function(DECRYPT_FUNCTION)
        con.create_function(DECRYPT_FUNCTION, decrypt, ["VARCHAR", "VARCHAR", "VARCHAR"], "VARCHAR",
                            type="arrow", side_effects=False)

    def view_sql(self, view: str, columns: Sequence[str]) -> str:
        """``view`` with each encrypted column of ``columns`` read through
        :data:`DECRYPT_FUNCTION`."""
        wrapped = [f"{DECRYPT_FUNCTION}({c}, '{c}', id) AS {c}" for c in self.fields if c in columns]
        if not wrapped or "id" not in columns:
            return view
        return f"SELECT * REPLACE ({', '.join(wrapped)}) FROM ({view})"


@dataclass(frozen=True)
class _ReaderKey:
    uri: str
    fields: tuple[str, ...]


_READERS: dict[_ReaderKey, FieldDecryptor] = {}
_READERS_LOCK = threading.Lock()


def reader_for(data: DataDir, toml: dict[str, Any] | None = None) -> FieldDecryptor | None:
    """The decryptor of ``data``'s lake when erasure is enabled in ``toml``
    (default DIR/auditlake.toml), else None.  One per lake and process, so
    its key cache outlives connections."""
    settings = erasure_config(toml if toml is not None else load_toml(data.config_file))
    if not settings.enabled:
        return None
    store = _keys_store(data)
    key = _ReaderKey(store.uri, settings.fields)
    with _READERS_LOCK:
        reader = _READERS.get(key)
        if reader is None:
            reader = _READERS[key] = FieldDecryptor(settings.fields, SubjectKeys(store))
        return reader
