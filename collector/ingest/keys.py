"""Ingest keys: tenant-scoped API keys that applications send with each batch.

Ingest keys are random 256-bit secrets; only their SHA-256 is stored (a slow
password hash buys nothing for a key with that much entropy).  The signing
key that signs checkpoints is integrity's (``integrity/signing.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from auditlake.collector.errors import AuthError, ConfigError
from auditlake.collector.schema import SYSTEM_TENANT

_KEY_PREFIX = "alk_"


@dataclass(frozen=True)
class IngestKey:
    """A stored ingest key: its id, the hash of its secret, its tenants."""

    key_id: str
    secret_sha256: str
    tenants: frozenset[str]
    created_at: str
    description: str = ""


class IngestKeyStore:
    """The ingest keys in ``DIR/keys/ingest.json``; reloads when the file changes."""

    def __init__(self, keys_dir: Path) -> None:
        self.path = keys_dir / "ingest.json"
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._by_id: dict[str, IngestKey] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._by_id, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        raw = json.loads(self.path.read_text())
        self._by_id = {
            k["key_id"]: IngestKey(
                key_id=k["key_id"],
                secret_sha256=k["secret_sha256"],
                tenants=frozenset(k["tenants"]),
                created_at=k["created_at"],
                description=k.get("description", ""),
            )
            for k in raw["keys"]
        }
        self._mtime = mtime

    def keys(self) -> list[IngestKey]:
        """Every stored key (no secrets: those are never stored)."""
        with self._lock:
            self._load()
            return list(self._by_id.values())

    def create(self, tenants: list[str], description: str = "") -> str:
        """Store a new key for ``tenants`` and return its secret (shown once)."""
        tenants = [t.strip() for t in tenants if t.strip()]
        if not tenants:
            raise ConfigError("an ingest key needs at least one tenant (--tenant T)")
        if SYSTEM_TENANT in tenants:
            raise ConfigError(f"tenant {SYSTEM_TENANT} holds the collector's own events; no ingest key may write it")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        token = f"{_KEY_PREFIX}{key_id}_{secret}"
        entry = IngestKey(
            key_id=key_id,
            secret_sha256=hashlib.sha256(token.encode()).hexdigest(),
            tenants=frozenset(tenants),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            description=description,
        )
        with self._lock:
            self._load()
            self._by_id[key_id] = entry
            self._save()
        return token

    def revoke(self, key_id: str) -> bool:
        """Remove a key; True if it existed."""
        with self._lock:
            self._load()
            found = self._by_id.pop(key_id, None) is not None
            if found:
                self._save()
            return found

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "keys": [
                {
                    "key_id": k.key_id,
                    "secret_sha256": k.secret_sha256,
                    "tenants": sorted(k.tenants),
                    "created_at": k.created_at,
                    "description": k.description,
                }
                for k in self._by_id.values()
            ]
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._mtime = None

    def authenticate(self, token: str | None) -> IngestKey:
        """The key for ``token``; AuthError when missing or unknown."""
        if not token:
            raise AuthError(
                "missing API key: send gRPC metadata 'authorization: Bearer <key>'"
            )
        if not token.startswith(_KEY_PREFIX) or token.count("_") < 2:
            raise AuthError("malformed API key (expected alk_<id>_<secret>)")
        key_id = token[len(_KEY_PREFIX) :].split("_", 1)[0]
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            self._load()
            entry = self._by_id.get(key_id)
        if entry is None or not hmac.compare_digest(entry.secret_sha256, digest):
            raise AuthError("unknown API key")
        return entry
