"""The collector's Ed25519 signing key, which signs chain checkpoints.  It
lives in DIR/keys/, never in the lake; auditors get the public half from
``auditlake keys public``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from auditlake.collector.errors import ConfigError


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


#: The line `auditlake keys public` writes before each writer's key in a
#: shared lake: ``# auditlake writer <writer_id>``.
WRITER_LABEL = "# auditlake writer "

_PEM_END = "-----END PUBLIC KEY-----"


@dataclass
class KeyRing:
    """The public keys a verification trusts.  A key labelled with a writer
    id (a ``# auditlake writer <id>`` line before its PEM block) is trusted
    for that writer's checkpoints only; an unlabelled key for any writer's."""

    bound: dict[str, list[Ed25519PublicKey]] = field(default_factory=dict)
    unbound: list[Ed25519PublicKey] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, source: str = "") -> KeyRing:
        """The keys of one or more PEM blocks, each optionally labelled."""
        ring = cls()
        ring.add_text(text, source)
        return ring

    def add_text(self, text: str, source: str = "", writer_id: str = "") -> None:
        """Add the PEM blocks of ``text`` (bound to ``writer_id`` when given,
        else to the writer each block's label names); ConfigError when it
        holds none or a block is not an Ed25519 public key."""
        label = writer_id
        block: list[str] = []
        found = 0
        for line in text.splitlines():
            stripped = line.strip()
            if not block and stripped.startswith(WRITER_LABEL):
                label = stripped[len(WRITER_LABEL):].split()[0] if stripped[len(WRITER_LABEL):].split() else ""
            elif stripped.startswith("-----BEGIN") or block:
                block.append(stripped)
                if stripped == _PEM_END:
                    self.add(_load_pem("\n".join(block).encode(), source), label)
                    found += 1
                    block, label = [], writer_id
        if not found:
            raise ConfigError(f"{source or 'public key'}: no PEM public key in it")

    def add(self, key: Ed25519PublicKey, writer_id: str = "") -> None:
        """Trust ``key`` for ``writer_id`` (for any writer when empty)."""
        if writer_id:
            self.bound.setdefault(writer_id, []).append(key)
        else:
            self.unbound.append(key)

    def keys_for(self, writer_id: str) -> list[Ed25519PublicKey]:
        """The keys that may sign ``writer_id``'s checkpoints."""
        return self.bound.get(writer_id, []) + self.unbound

    def verify(self, writer_id: str, signature: bytes, data: bytes) -> bool:
        """True when one of ``writer_id``'s keys made ``signature`` over ``data``."""
        for key in self.keys_for(writer_id):
            try:
                key.verify(signature, data)
            except InvalidSignature:
                continue
            return True
        return False

    def __len__(self) -> int:
        return len(self.unbound) + sum(len(v) for v in self.bound.values())


def _load_pem(pem: bytes, source: str) -> Ed25519PublicKey:
    try:
        loaded = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"{source or 'public key'}: not a PEM public key ({exc})") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{source or 'public key'} is not an Ed25519 public key")
    return loaded
