"""The storage seam: one small interface for every read, write, list,
rename-into-place and delete of lake files, checkpoints and indexes.

A :class:`Store` is a root (a local directory, ``s3://bucket/prefix``, any
pyarrow or fsspec filesystem) addressed by relative keys with ``/``
separators (``events/date=2026-11-27/part-....parquet``).  Two
implementations:

- :class:`LocalStore`: a directory.  A write goes to a temporary name,
  is fsynced, renamed into place and its directory fsynced, so a crash leaves
  either the old state or the new one, never a torn file.
- :class:`ObjectStore`: any ``pyarrow.fs.FileSystem`` (S3 through pyarrow's
  own client, GCS, HDFS, fsspec through ``PyFileSystem``).  An object PUT is
  atomic by itself; "create, never overwrite" is a check before the PUT on
  stores without conditional writes (see ``create``).

Writes that must survive a crash between "written" and "visible" (a seal's
Parquet files and checkpoints: docs/durability.md) take two steps:
:meth:`Store.stage` writes the bytes durably under a temporary key (by
default :func:`stage_key`: a hidden name beside the final one, which no
reader of the folder reads), and returns a :class:`Staged`;
:meth:`Store.publish` makes them visible under the final key, never
overwriting another object, and is harmless to repeat after a crash.  A
local store renames the temporary file into place; an object store copies
the temporary object to its key.

Readers that hand files to pyarrow datasets or DuckDB take ``filesystem`` and
``path(key)``.  Nothing outside this package opens lake files another way.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeAlias

import pyarrow as pa
import pyarrow.fs as pafs

from auditlake.collector.errors import StorageError
from auditlake.collector.storage.conditional import (
    ConditionalWrites,
    LocalConditional,
    PreconditionFailed,
    S3Conditional,
)
from auditlake.collector.storage.local import fsync_dir

_CHUNK = 8 * 1024 * 1024

#: What a write takes: bytes, or any buffer (an Arrow buffer is written without a copy).
Data: TypeAlias = bytes | bytearray | memoryview | pa.Buffer


class ObjectExistsError(StorageError, FileExistsError):
    """A create-only write found an object already under its key."""


def stage_key(key: str, suffix: str = ".tmp") -> str:
    """The temporary key a stage of ``key`` waits under by default: the
    hidden name ``.<name><suffix>`` in the same folder.  Engines that read a
    folder itself (``pyarrow.dataset``, Spark, Dask, Hive and Trino) skip
    names starting with ``.`` or ``_``, and the suffix keeps it off any glob
    of the final names (DuckDB's ``*.parquet`` matches hidden names too);
    in the same folder, publishing it stays one rename."""
    folder, _, name = key.rpartition("/")
    return f"{folder}/.{name}{suffix}" if folder else f".{name}{suffix}"


@dataclass(frozen=True)
class Staged:
    """Bytes written durably under ``temp_key``, not visible under ``key``
    until :meth:`Store.publish`.  Both keys are plain strings, so a progress
    record can name a stage and a recovery can publish it after a crash."""

    key: str
    temp_key: str


@dataclass(frozen=True)
class StoredObject:
    """One listed object: its key (relative to the store's root) and size."""

    key: str
    size: int


class Store:
    """A root of lake objects.  Subclasses implement the primitives; the
    helpers here (``read_text``, ``sha256``, ``iter_chunks``, ``same_bytes``)
    build on them."""

    #: "hot", "cold", or another label used in messages and checkpoints.
    name: str
    #: The pyarrow filesystem and root path (for datasets and DuckDB readers).
    filesystem: pafs.FileSystem
    root: str
    #: Compare-and-swap on single objects (leases), or None where the store
    #: has no conditional writes.
    conditional: ConditionalWrites | None = None
    #: Where :meth:`stage` keeps bytes until :meth:`publish`, when not in this
    #: store itself (an object store writing from a collector's disk).
    staging: LocalStore | None = None

    def child(self, prefix: str, name: str) -> Store:
        """The store rooted at the folder ``prefix`` of this one (checkpoints
        and fleet state beside a lake's events)."""
        raise NotImplementedError

    def path(self, key: str) -> str:
        """The full path of ``key`` inside ``filesystem``."""
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    @property
    def uri(self) -> str:
        """A human-readable location for messages."""
        return self.root

    @property
    def is_local(self) -> bool:
        """True when ``path(key)`` is a local file path."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    # -- primitives (subclasses) ------------------------------------------------

    def read(self, key: str) -> bytes:
        """The whole object; ``FileNotFoundError`` when absent."""
        raise NotImplementedError

    def open_input(self, key: str) -> pa.NativeFile:
        """A seekable reader (Parquet footers, partial reads)."""
        return self.filesystem.open_input_file(self.path(key))

    def open_stream(self, key: str) -> pa.NativeFile:
        """A sequential reader (hashing, copying)."""
        return self.filesystem.open_input_stream(self.path(key))

    def put(self, key: str, data: Data) -> None:
        """Write ``data`` under ``key`` atomically, replacing what is there
        (state files and indexes; never lake data)."""
        raise NotImplementedError

    def create(self, key: str, data: Data) -> None:
        """Write ``data`` under a new ``key``; ``ObjectExistsError`` when the key
        exists (lake files and checkpoints are never overwritten)."""
        raise NotImplementedError

    def stage(self, key: str, data: Data, *, temp_key: str | None = None) -> Staged:
        """Write ``data`` durably under ``temp_key`` (default
        :func:`stage_key`), invisible under ``key`` until :meth:`publish`.
        Staging again under the same temporary key replaces the earlier stage
        (a retried write)."""
        raise NotImplementedError

    def publish(self, staged: Staged) -> None:
        """Make a staged object visible under its key, never overwriting
        another object.  Idempotent, so recovery may repeat it: when the
        temporary object is gone (published before, or discarded) nothing
        happens; when the key already holds the same bytes the temporary
        object is dropped.  Different bytes under the key raise
        ``ObjectExistsError`` and keep the temporary object."""
        raise NotImplementedError

    def stage_exists(self, temp_key: str) -> bool:
        """True when a stage is waiting under ``temp_key``."""
        return (self.staging or self).exists(temp_key)

    def discard(self, temp_key: str) -> None:
        """Drop a stage that will not be published (absent is fine)."""
        (self.staging or self).delete(temp_key)

    def stage_keys(self, suffix: str) -> builtins.list[str]:
        """Temporary keys of the stages waiting here whose names end with
        ``suffix`` (what a crash may have left), sorted."""
        return sorted(o.key for o in (self.staging or self).list() if o.key.endswith(suffix))

    def rename(self, key: str, new_key: str) -> None:
        """Move an object to ``new_key``, replacing what is there (e.g. a lake
        file set aside after compaction); the folders of ``new_key`` are
        created as needed.  On local disk the move is durable once
        :meth:`sync` of both folders returns."""
        raise NotImplementedError

    def sync(self, prefix: str) -> None:
        """Make the renames, deletes and new names in the folder ``prefix``
        durable (a directory fsync on local disk; object stores need none)."""
        return None

    def size(self, key: str) -> int | None:
        """The object's size, or None when absent."""
        info = self.filesystem.get_file_info(self.path(key))
        return None if info.type == pafs.FileType.NotFound else int(info.size or 0)

    def exists(self, key: str) -> bool:
        """True when an object is stored under ``key``."""
        return self.size(key) is not None

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[StoredObject]:
        """Objects under the directory ``prefix`` (empty when absent), sorted by key."""
        selector = pafs.FileSelector(self.path(prefix), recursive=recursive, allow_not_found=True)
        root = self.root.rstrip("/") + "/"
        out = [StoredObject(info.path[len(root):] if info.path.startswith(root) else info.path, int(info.size or 0))
               for info in self.filesystem.get_file_info(selector) if info.type == pafs.FileType.File]
        return sorted(out, key=lambda o: o.key)

    def folders(self, prefix: str = "") -> builtins.list[str]:
        """The names of the folders directly under ``prefix`` (one listing
        request on an object store, however many objects lie below)."""
        selector = pafs.FileSelector(self.path(prefix), recursive=False, allow_not_found=True)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                      if info.type == pafs.FileType.Directory)

    def delete(self, key: str, *, missing_ok: bool = True) -> None:
        """Remove one object."""
        try:
            self.filesystem.delete_file(self.path(key))
        except FileNotFoundError:
            if not missing_ok:
                raise

    # -- helpers ---------------------------------------------------------------------

    def read_text(self, key: str) -> str:
        """The object decoded as UTF-8."""
        return self.read(key).decode()

    def sha256(self, key: str) -> tuple[str, int]:
        """(hex SHA-256, bytes) of an object, streamed."""
        h = hashlib.sha256()
        n = 0
        with self.open_stream(key) as f:
            while block := f.read(_CHUNK):
                h.update(block)
                n += len(block)
        return h.hexdigest(), n

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks of a few MiB."""
        with self.open_stream(key) as f:
            while block := f.read(_CHUNK):
                yield bytes(block)

    def same_bytes(self, key: str, other_key: str) -> bool:
        """True when both objects exist and hold the same bytes."""
        if self.size(key) != self.size(other_key) or self.size(key) is None:
            return False
        with self.open_stream(key) as a, self.open_stream(other_key) as b:
            while True:
                block = a.read(_CHUNK)
                if block != b.read(_CHUNK):
                    return False
                if not block:
                    return True

    def _exists_error(self, key: str) -> ObjectExistsError:
        return ObjectExistsError(errno.EEXIST, f"{self.name} store: {key} exists; objects are never overwritten",
                                 self.path(key))


class LocalStore(Store):
    """A directory on local disk, with fsync on every write."""

    def __init__(self, root: str | os.PathLike[str], name: str = "hot") -> None:
        self.name = name
        self.root = str(Path(root))
        self.filesystem = pafs.LocalFileSystem()
        self.conditional = LocalConditional(self.root)

    def child(self, prefix: str, name: str) -> LocalStore:
        return LocalStore(Path(self.root) / prefix, name)

    def local_path(self, key: str) -> Path:
        """The file path of ``key``."""
        return Path(self.path(key))

    def read(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def put(self, key: str, data: Data) -> None:
        final = self.local_path(key)
        tmp = self._write_temp(final, data)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    def create(self, key: str, data: Data) -> None:
        final = self.local_path(key)
        tmp = self._write_temp(final, data)
        try:
            # link() fails when the name exists: create-only, atomically.
            os.link(tmp, final)
        except FileExistsError as exc:
            raise self._exists_error(key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(final.parent)

    def stage(self, key: str, data: Data, *, temp_key: str | None = None) -> Staged:
        staged = Staged(key, temp_key or stage_key(key))
        tmp, folder = self.local_path(staged.temp_key), self.local_path(key).parent
        _make_dirs(folder)  # publish renames into it
        if tmp.parent != folder:
            _make_dirs(tmp.parent)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return staged

    def publish(self, staged: Staged) -> None:
        tmp, final = self.local_path(staged.temp_key), self.local_path(staged.key)
        if not tmp.exists():
            return  # published before (a repeat after a crash), or discarded
        if final.exists():
            if not self.same_bytes(staged.temp_key, staged.key):
                raise self._exists_error(staged.key)
            os.unlink(tmp)  # a repeat: the same bytes are in place
        else:
            # One rename, so a crash leaves the file under one name or the
            # other.  The check above and the rename are two steps: keys are
            # unique by construction (one writer per data directory, writer
            # ids and seal numbers in names), so it guards against bugs.
            os.replace(tmp, final)
        fsync_dir(final.parent)
        if tmp.parent != final.parent:
            fsync_dir(tmp.parent)

    def rename(self, key: str, new_key: str) -> None:
        target = self.local_path(new_key)
        _make_dirs(target.parent)
        os.replace(self.local_path(key), target)

    def sync(self, prefix: str) -> None:
        fsync_dir(self.local_path(prefix))

    def size(self, key: str) -> int | None:
        try:
            return self.local_path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str, *, missing_ok: bool = True) -> None:
        try:
            self.local_path(key).unlink()
        except FileNotFoundError:
            if not missing_ok:
                raise

    def open_write(self, key: str) -> IO[bytes]:
        """A local file opened for writing under a temporary name; pass it to
        :meth:`commit_write` to fsync and rename it into place."""
        final = self.local_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return open(final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp"), "wb")  # noqa: SIM115

    def commit_write(self, f: IO[bytes], key: str) -> None:
        """Finish an :meth:`open_write`: fsync, close, rename into place."""
        f.flush()
        os.fsync(f.fileno())
        f.close()
        final = self.local_path(key)
        os.replace(f.name, final)
        fsync_dir(final.parent)

    @staticmethod
    def _write_temp(final: Path, data: Data) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp


def _make_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each new name made durable
    (its parent fsynced), so that a file later renamed into it and synced
    with :meth:`LocalStore.sync` cannot lose its folder to a crash."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            if not created.is_dir():
                raise  # a file by that name: the caller's write fails on it
            continue  # made by another thread meanwhile
        fsync_dir(created.parent)


class ObjectStore(Store):
    """Any pyarrow filesystem: S3 (and S3-compatible stores), GCS, fsspec."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, name: str = "cold", uri: str = "",
                 conditional: ConditionalWrites | None = None) -> None:
        self.name = name
        self.filesystem = filesystem
        self.root = root.rstrip("/")
        self._uri = uri or root
        #: If-None-Match / If-Match writes, where the store has them (S3 APIs).
        self.conditional = conditional

    @property
    def uri(self) -> str:
        return self._uri

    def child(self, prefix: str, name: str) -> ObjectStore:
        conditional = self.conditional.child(prefix) if self.conditional is not None else None
        child = ObjectStore(self.filesystem, f"{self.root}/{prefix}", name, f"{self._uri.rstrip('/')}/{prefix}",
                            conditional)
        child.staging = self.staging.child(prefix, f"{name} staging") if self.staging is not None else None
        return child

    def with_staging(self, folder: str | os.PathLike[str]) -> ObjectStore:
        """The same store, staging in the local ``folder``: a stage is then a
        durable local file and publishing it one conditional PUT (instead of
        a PUT of a temporary object, a COPY and a DELETE), so no request can
        overwrite another writer's object."""
        other = ObjectStore(self.filesystem, self.root, self.name, self._uri, self.conditional)
        other.staging = LocalStore(folder, f"{self.name} staging")
        return other

    def read(self, key: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(key)) as f:
            return bytes(f.read())

    def put(self, key: str, data: Data) -> None:
        self._make_parent(key)
        with self.filesystem.open_output_stream(self.path(key)) as out:
            out.write(data)

    def create(self, key: str, data: Data) -> None:
        if self.conditional is not None:  # one request: PUT with If-None-Match: *
            try:
                self.conditional.put_if_absent(key, bytes(data))
            except PreconditionFailed as exc:
                raise self._exists_error(key) from exc
            return
        # Without conditional writes this check and the PUT are two requests.
        # Keys are unique by construction (writer id, sequence numbers, random
        # suffixes), so the check guards against bugs, not against a
        # concurrent writer; docs/architecture.md says so.
        if self.exists(key):
            raise self._exists_error(key)
        self.put(key, data)

    def stage(self, key: str, data: Data, *, temp_key: str | None = None) -> Staged:
        # Durable bytes rather than a buffer in memory: a stage must outlive
        # a crash, for recovery to publish it.
        staged = Staged(key, temp_key or stage_key(key))
        if self.staging is not None:
            self.staging.put(staged.temp_key, data)
        else:
            self.put(staged.temp_key, data)
        return staged

    def publish(self, staged: Staged) -> None:
        if self.staging is not None:
            self._publish_staged(staged, self.staging)
            return
        if not self.exists(staged.temp_key):
            return  # published before (a repeat after a crash), or discarded
        if self.exists(staged.key):
            # As in create(): a check, then the copy (no conditional writes).
            if not self.same_bytes(staged.temp_key, staged.key):
                raise self._exists_error(staged.key)
        else:
            self.filesystem.copy_file(self.path(staged.temp_key), self.path(staged.key))
        self.delete(staged.temp_key)

    def _publish_staged(self, staged: Staged, staging: LocalStore) -> None:
        try:
            data = staging.read(staged.temp_key)
        except FileNotFoundError:
            return  # published before (a repeat after a crash), or discarded
        try:
            self.create(staged.key, data)  # If-None-Match: * where the store has it
        except ObjectExistsError:
            if self.read(staged.key) != data:
                raise  # another object under the key: never replaced, the stage kept
        staging.delete(staged.temp_key)

    def rename(self, key: str, new_key: str) -> None:
        # Object stores have no rename: a copy, then the delete.
        self.filesystem.copy_file(self.path(key), self.path(new_key))
        self.delete(key, missing_ok=False)

    def delete(self, key: str, *, missing_ok: bool = True) -> None:
        if isinstance(self.conditional, S3Conditional):
            if not missing_ok and not self.exists(key):
                raise FileNotFoundError(errno.ENOENT, f"{self.name} store: {key} does not exist", self.path(key))
            self.conditional.delete(key)
            return
        super().delete(key, missing_ok=missing_ok)

    def _make_parent(self, key: str) -> None:
        # S3 has no folders: creating one is a request and an empty marker object.
        if not isinstance(self.filesystem, pafs.S3FileSystem):
            self.filesystem.create_dir(self.path(key).rsplit("/", 1)[0], recursive=True)

    def copy_in(self, key: str, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Stream ``chunks`` into a new object; (hex SHA-256, bytes) of what was written."""
        self._make_parent(key)
        h = hashlib.sha256()
        n = 0
        with self.filesystem.open_output_stream(self.path(key)) as out:
            for block in chunks:
                out.write(block)
                h.update(block)
                n += len(block)
        return h.hexdigest(), n
