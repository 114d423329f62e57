"""Ingest keys: tenant-scoped API keys that applications send with each batch,
kept in the fleet state so that every collector of a lake accepts the same
keys.

    <fleet state>/ingest.json    {"keys": [{key_id, secret_sha256, tenants, created_at, description}]}

The fleet state is ``DIR/keys`` for a local lake and ``URL/_auditlake`` for a
``--lake URL`` (``storage/tiers.py``: ``fleet_state``).  Ingest keys are
random 256-bit secrets; only their SHA-256 is stored (a slow password hash
buys nothing for a key with that much entropy).  The signing key that signs
checkpoints is integrity's (``integrity/signing.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from auditlake.collector.errors import AuthError, ConfigError
from auditlake.collector.schema import SYSTEM_TENANT
from auditlake.collector.storage.fleet_doc import FleetDocument, FreshnessPolicy
from auditlake.collector.storage.store import LocalStore, Store

log = logging.getLogger(__name__)

_KEY_PREFIX = "alk_"
#: The document of ingest keys inside the fleet state.
INGEST_KEYS = "ingest.json"


@dataclass(frozen=True)
class IngestKey:
    """A stored ingest key: its id, the hash of its secret, its tenants."""

    key_id: str
    secret_sha256: str
    tenants: frozenset[str]
    created_at: str
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """The key as ``ingest.json`` stores it."""
        return {"key_id": self.key_id, "secret_sha256": self.secret_sha256, "tenants": sorted(self.tenants),
                "created_at": self.created_at, "description": self.description}


def _parse_keys(raw: dict[str, Any]) -> dict[str, IngestKey]:
    return {
        k["key_id"]: IngestKey(
            key_id=k["key_id"],
            secret_sha256=k["secret_sha256"],
            tenants=frozenset(k["tenants"]),
            created_at=k["created_at"],
            description=k.get("description", ""),
        )
        for k in raw.get("keys", [])
    }


class IngestKeyStore:
    """The ingest keys of a lake, in ``ingest.json`` of its fleet state
    (``fleet``: that store; a path means a local keys folder), kept in memory
    and re-read as :class:`FleetDocument` says."""

    def __init__(self, fleet: Store | str | os.PathLike[str], *, policy: FreshnessPolicy | None = None) -> None:
        self.store = fleet if isinstance(fleet, Store) else LocalStore(fleet, "keys")
        self._doc = FleetDocument(self.store, INGEST_KEYS, _parse_keys, policy=policy)

    def keys(self) -> list[IngestKey]:
        """Every stored key (no secrets: those are never stored)."""
        return list(self._doc.read().values())

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

        def add(raw: dict[str, Any]) -> None:
            raw["keys"] = [*raw.get("keys", []), entry.to_json()]

        self._doc.update(add)
        return token

    def revoke(self, key_id: str) -> bool:
        """Remove a key; True if it existed."""

        def drop(raw: dict[str, Any]) -> bool:
            keys = raw.get("keys", [])
            kept = [k for k in keys if k.get("key_id") != key_id]
            if len(kept) == len(keys):
                return False
            raw["keys"] = kept
            return True

        return self._doc.update(drop)

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
        entry = self._doc.read().get(key_id)
        if entry is None:
            # Perhaps created at another collector a moment ago.  At most one
            # re-read a second, however many unknown keys arrive.
            entry = self._doc.read(max_age_s=1.0).get(key_id)
        if entry is None or not hmac.compare_digest(entry.secret_sha256, digest):
            raise AuthError("unknown API key")
        return entry
