"""Conditional writes: the compare-and-swap under leases and under commits
that must never overwrite.

Two operations, on one object each:

- ``put_if_absent(key, data)``: create, failing if the key exists
  (S3 ``If-None-Match: *``);
- ``put_if_version(key, data, version)``: replace, failing unless the object
  is still the version the caller read (S3 ``If-Match: <ETag>``).

Both raise :class:`PreconditionFailed` when the condition does not hold,
and return the new version.  :class:`S3Conditional` does them with boto3
(pyarrow's and s3fs's clients cannot send these headers); AWS S3, MinIO,
Ceph RGW and moto's server honour them.  :class:`LocalConditional` does them
in a directory under an ``flock``, for one machine.  A store without either
(``conditional_writes`` returns None) cannot hold a lease; docs/architecture.md
says what that means.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from auditlake.collector.errors import StorageError
from auditlake.collector.storage.local import fsync_dir


class PreconditionFailed(StorageError):
    """The object was not in the state a conditional write required."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version a conditional write compares."""

    data: bytes
    version: str


class ConditionalWrites(Protocol):
    """Compare-and-swap on single objects of one store (keys as in Store)."""

    def read_versioned(self, key: str) -> Versioned | None:
        """The object and its version, or None when absent."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create ``key``; PreconditionFailed if it exists.  The new version."""
        ...

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        """Replace ``key`` if it is still ``version``; else PreconditionFailed."""
        ...

    def child(self, prefix: str) -> ConditionalWrites:
        """The same writes under the folder ``prefix``."""
        ...


class LocalConditional:
    """Conditional writes in a local directory: every operation holds an
    exclusive ``flock`` on ``.conditional.lock``; the version is the SHA-256
    of the content."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def child(self, prefix: str) -> LocalConditional:
        return LocalConditional(self.root / prefix)

    def _locked(self) -> Any:
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".conditional.lock", "a")  # noqa: SIM115 - closed by the caller's with
        fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def _read(self, key: str) -> Versioned | None:
        try:
            data = (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def _write(self, key: str, data: bytes) -> str:
        final = self.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return hashlib.sha256(data).hexdigest()

    def read_versioned(self, key: str) -> Versioned | None:
        with self._locked():
            return self._read(key)

    def put_if_absent(self, key: str, data: bytes) -> str:
        with self._locked():
            if self._read(key) is not None:
                raise PreconditionFailed(f"{key} exists")
            return self._write(key, data)

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        with self._locked():
            current = self._read(key)
            if current is None or current.version != version:
                raise PreconditionFailed(f"{key} changed since it was read")
            return self._write(key, data)


class S3Conditional:
    """Conditional writes on an S3-compatible bucket through boto3."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str = "", region: str = "",
                 timeout_s: float = 30.0) -> None:
        import boto3  # noqa: PLC0415 - only stores on S3 need it
        from botocore.config import Config  # noqa: PLC0415

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            config=Config(connect_timeout=min(10.0, timeout_s), read_timeout=timeout_s,
                          retries={"max_attempts": 3, "mode": "standard"}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def child(self, prefix: str) -> S3Conditional:
        # The same client (a boto3 client costs ~50 ms to build), a longer prefix.
        other = object.__new__(S3Conditional)
        other.bucket, other.prefix, other._client = self.bucket, self._key(prefix.strip("/")), self._client
        return other

    def read_versioned(self, key: str) -> Versioned | None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            got = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client.exceptions.NoSuchKey:
            return None
        except ClientError as exc:
            raise self._error(key, exc) from exc
        except BotoCoreError as exc:  # no connection, no credentials
            raise StorageError(f"s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return Versioned(got["Body"].read(), str(got["ETag"]))

    def _error(self, key: str, exc: Any) -> StorageError:
        """A clear message for the S3 errors a misconfigured lake meets first."""
        code = exc.response.get("Error", {}).get("Code", "")
        where = f"s3://{self.bucket}/{self._key(key)}"
        if code == "NoSuchBucket":
            return StorageError(f"{where}: the bucket {self.bucket} does not exist (create it first)")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{where}: access denied ({code}): the credentials in use may not "
                                "read and write this bucket")
        return StorageError(f"{where}: {exc}")

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._put(key, data, IfNoneMatch="*")

    def delete(self, key: str) -> None:
        """Delete one object (absent is fine).  Unlike pyarrow's S3 client,
        which leaves an empty "folder" marker object behind when it deletes
        a folder's last file, and readers that list the lake then meet it."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise self._error(key, exc) from exc
        except BotoCoreError as exc:
            raise StorageError(f"s3://{self.bucket}/{self._key(key)}: {exc}") from exc

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        return self._put(key, data, IfMatch=version)

    def _put(self, key: str, data: bytes, **condition: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            answer = self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise PreconditionFailed(f"{key}: {code}") from exc
            raise self._error(key, exc) from exc
        except BotoCoreError as exc:
            raise StorageError(f"s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return str(answer["ETag"])
