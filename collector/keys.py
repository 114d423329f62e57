"""Credentials: tenant-scoped ingest API keys and the Ed25519 signing key.

Ingest keys are random 256-bit secrets; only their SHA-256 is stored (a slow
password hash buys nothing for a key with that much entropy).  The signing
key signs chain checkpoints; it lives in DIR/keys/, never in the lake.
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from auditlake.collector.errors import AuthError, ConfigError

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


class SigningKey:
    """The collector's Ed25519 key pair in ``DIR/keys/signing.pem`` (mode 0600)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> SigningKey:
        """Load the key, creating it on first use."""
        path = keys_dir / "signing.pem"
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ConfigError(f"{path} is not an Ed25519 private key")
            return cls(loaded)
        keys_dir.mkdir(parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        (keys_dir / "signing.pub.pem").write_bytes(public_pem(private.public_key()))
        return cls(private)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def public_pem(self) -> bytes:
        """The public key in PEM (SubjectPublicKeyInfo), for auditors."""
        return public_pem(self.public)


def public_pem(key: Ed25519PublicKey) -> bytes:
    """PEM text of an Ed25519 public key."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (as printed by `auditlake keys public`)."""
    loaded = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return loaded
