"""The collector's Ed25519 signing key, which signs chain checkpoints.  It
lives in DIR/keys/, never in the lake; auditors get the public half from
``auditlake keys public``.
"""

from __future__ import annotations

import os
from pathlib import Path

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
