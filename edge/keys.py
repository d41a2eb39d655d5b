"""Key-encryption keys (KEKs) for envelope encryption.

Each user's data key (DEK) is wrapped by a KEK that a :class:`KeyProvider`
holds. A provider wraps and unwraps DEKs and, where it can, rotates to a new
KEK and destroys old ones; it never hands its key material to the store.

Providers here:

- :class:`LocalKeyFile` (the default): KEKs in a JSON file created with
  0600 permissions (``{"format": "userlayer.keks/1", "current": id,
  "keys": {id: hex}}``), written atomically. Rotation adds a key; ``destroy``
  removes one, after which nothing it wrapped can be unwrapped.
- :class:`EnvKeyProvider`: one KEK from an environment variable (64 hex
  chars). It can neither rotate nor destroy: use it where the platform
  injects the key and manages its life.

A cloud KMS fits the same interface: ``wrap``/``unwrap`` call the KMS's
encrypt/decrypt with the associated data as encryption context, ``rotate``
creates a key version, ``destroy`` schedules the old version's deletion.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userlayer.edge.exceptions import KeyProviderError, ProfileDecryptError

__all__ = ["EnvKeyProvider", "KeyProvider", "LocalKeyFile", "aead_decrypt", "aead_encrypt"]

NONCE = 12
_KEK_FORMAT = "userlayer.keks/1"


def aead_encrypt(key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a fresh random 12-byte nonce: ``nonce || ciphertext || tag``.

    ``key`` may be a prepared ``AESGCM`` (cheaper when one key seals many records).
    """
    nonce = secrets.token_bytes(NONCE)
    aes = key if isinstance(key, AESGCM) else AESGCM(key)
    return nonce + aes.encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes | AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
    """Inverse of :func:`aead_encrypt`.

    Raises:
        ProfileDecryptError: naming ``what`` if the blob is truncated, was
            tampered with, was moved (other associated data) or the key is wrong.
    """
    if len(blob) < NONCE + 16:
        raise ProfileDecryptError(f"{what}: ciphertext truncated ({len(blob)} bytes)")
    aes = key if isinstance(key, AESGCM) else AESGCM(key)
    try:
        return aes.decrypt(blob[:NONCE], blob[NONCE:], aad)
    except InvalidTag as e:
        raise ProfileDecryptError(
            f"{what}: authentication failed (tampered, moved to another record, or wrong key)"
        ) from e


class KeyProvider(Protocol):
    """Holds key-encryption keys; wraps and unwraps data keys."""

    @property
    def current_id(self) -> str:
        """Id of the KEK that wraps new DEKs."""
        ...

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap ``dek`` under the current KEK; returns (kek id, wrapped bytes)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap a DEK wrapped by :meth:`wrap` (ProfileDecryptError if it fails)."""
        ...

    def rotate(self) -> str:
        """Make a new current KEK; returns its id (old ones still unwrap)."""
        ...

    def destroy(self, kek_id: str) -> None:
        """Forget a KEK for good (never the current one)."""
        ...


class LocalKeyFile:
    """KEKs in a local 0600 JSON file (created with one key if missing and ``create``)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise KeyProviderError(f"{self.path}: KEK file missing")
            self._keys = {"k1": secrets.token_bytes(32)}
            self._current = "k1"
            self._save(create=True)
        else:
            self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            if doc.get("format") != _KEK_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            self._keys = {k: bytes.fromhex(v) for k, v in doc["keys"].items()}
            self._current = doc["current"]
            if self._current not in self._keys or any(len(v) != 32 for v in self._keys.values()):
                raise ValueError("current key missing or a key is not 32 bytes")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise KeyProviderError(f"{self.path}: not a readable KEK file ({e})") from e
        st = self.path.stat()
        self._mtime = st.st_mtime_ns
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise KeyProviderError(f"{self.path}: permissions {oct(mode)} too open; use 0600")

    def _save(self, create: bool = False) -> None:
        doc = {
            "format": _KEK_FORMAT,
            "current": self._current,
            "keys": {k: v.hex() for k, v in self._keys.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keks-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            if create and self.path.exists():
                raise KeyProviderError(f"{self.path} appeared while creating it")
            os.replace(tmp, self.path)
            self._mtime = self.path.stat().st_mtime_ns
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @property
    def current_id(self) -> str:
        """Id of the KEK that wraps new DEKs."""
        return self._current

    @property
    def key_ids(self) -> list[str]:
        """Ids of the KEKs still held."""
        return sorted(self._keys)

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap under the current KEK (re-read first if another process rotated it)."""
        if self.path.stat().st_mtime_ns != self._mtime:
            self._load()
        return self._current, aead_encrypt(self._keys[self._current], dek, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap with the named KEK."""
        key = self._keys.get(kek_id)
        if key is None and self.path.exists():  # another process may have rotated
            self._load()
            key = self._keys.get(kek_id)
        if key is None:
            raise ProfileDecryptError(f"KEK {kek_id!r} is not held (destroyed or another file)")
        return aead_decrypt(key, wrapped, aad, f"data key under KEK {kek_id}")

    def rotate(self) -> str:
        """Add a new KEK and make it current."""
        n = 1 + max(int(k[1:]) for k in self._keys if k[1:].isdigit())
        new = f"k{n}"
        self._keys[new] = secrets.token_bytes(32)
        self._current = new
        self._save()
        return new

    def destroy(self, kek_id: str) -> None:
        """Delete a KEK from the file."""
        if kek_id == self._current:
            raise KeyProviderError("refusing to destroy the current KEK")
        if self._keys.pop(kek_id, None) is not None:
            self._save()


class EnvKeyProvider:
    """One KEK from an environment variable (64 hex chars); no rotation."""

    def __init__(self, var: str = "USERLAYER_KEK") -> None:
        raw = os.environ.get(var, "")
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise KeyProviderError(f"${var} should hold 64 hex characters (a 256-bit key)")
        self._key = key
        self._id = f"env:{var}"

    @property
    def current_id(self) -> str:
        """Id of the KEK (``env:VAR``)."""
        return self._id

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap under the environment's KEK."""
        return self._id, aead_encrypt(self._key, dek, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap with the environment's KEK."""
        if kek_id != self._id:
            raise ProfileDecryptError(f"KEK {kek_id!r} is not this provider's ({self._id})")
        return aead_decrypt(self._key, wrapped, aad, f"data key under KEK {kek_id}")

    def rotate(self) -> str:
        """Not possible: the platform owns the key."""
        raise KeyProviderError("EnvKeyProvider cannot rotate; rotate the key where it is managed")

    def destroy(self, kek_id: str) -> None:
        """Not possible: the platform owns the key."""
        raise KeyProviderError("EnvKeyProvider cannot destroy keys")
