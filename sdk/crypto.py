"""Envelope-encryption primitives shared by the edge store and the cloud registry.

AEAD: AES-256-GCM with a 12-byte random nonce made here (``nonce || ciphertext
|| tag``); keys must be 32 bytes and nonces exactly 12 (``cryptography``
also accepts 8 and 16). :class:`~userlayer.sdk.exceptions.DecryptError` says
what failed to decrypt, never why beyond "truncated" or "authentication".

Key-encryption keys (KEKs) are held by a :class:`KeyProvider`, which wraps
and unwraps data keys (DEKs) and, where it can, rotates to a new KEK and
destroys old ones; it never hands key material to its caller.

- :class:`LocalKeyFile`: KEKs in a 0600 JSON file (``{"format":
  "userlayer.keks/2", "current": id, "keys": {id: hex}}``), written
  atomically. KEK ids are random (``k`` + 16 hex), so two processes that
  rotate never mint the same id. Every change (create, rotate, destroy) takes
  an exclusive ``flock`` on ``<file>.lock``, re-reads the file under it and
  never overwrites an existing id; a reader re-reads the file whenever its
  identity (inode, size, mtime) changed, so a KEK rotated by another process
  is used at once. Format 1 files (sequential ids) are read and rewritten as
  format 2 at their next change.
- :class:`EnvKeyProvider`: one KEK from an environment variable (64 hex
  chars). It can neither rotate nor destroy: the platform owns the key.

A cloud KMS fits the same interface: ``wrap``/``unwrap`` call the KMS's
encrypt/decrypt with the associated data as encryption context, ``rotate``
creates a key version, ``destroy`` schedules the old version's deletion.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from userlayer.sdk.exceptions import DecryptError, KeyProviderError

__all__ = [
    "NONCE",
    "EnvKeyProvider",
    "KeyProvider",
    "LocalKeyFile",
    "aead_decrypt",
    "aead_encrypt",
    "init_key_file",
]

NONCE = 12
TAG = 16
KEY = 32
_FORMAT = "userlayer.keks/2"
_FORMATS = (_FORMAT, "userlayer.keks/1")


def _aes(key: bytes | AESGCM) -> AESGCM:
    if isinstance(key, AESGCM):
        return key
    if len(key) != KEY:
        raise KeyProviderError(f"an AES-256 key is {KEY} bytes, got {len(key)}")
    return AESGCM(key)


def aead_encrypt(key: bytes | AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a fresh random 12-byte nonce: ``nonce || ciphertext || tag``.

    ``key`` may be a prepared ``AESGCM`` (cheaper when one key seals many records).
    """
    nonce = secrets.token_bytes(NONCE)
    return nonce + _aes(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes | AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
    """Inverse of :func:`aead_encrypt`.

    Raises:
        DecryptError: naming ``what`` if the blob is truncated, was tampered
            with, was moved (other associated data) or the key is wrong.
    """
    if len(blob) < NONCE + TAG:
        raise DecryptError(f"{what}: ciphertext truncated ({len(blob)} bytes)")
    try:
        return _aes(key).decrypt(blob[:NONCE], blob[NONCE:], aad)
    except InvalidTag as e:
        raise DecryptError(
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
        """Unwrap a DEK wrapped by :meth:`wrap` (DecryptError if it fails)."""
        ...

    def rotate(self) -> str:
        """Make a new current KEK; returns its id (old ones still unwrap)."""
        ...

    def destroy(self, kek_id: str) -> None:
        """Forget a KEK for good (never the current one)."""
        ...


def _new_id() -> str:
    return "k" + secrets.token_hex(8)


def init_key_file(path: str | Path) -> str:
    """Create a new KEK file with one key (0600); returns the key's id.

    Raises:
        KeyProviderError: if the file exists already (it is never overwritten).
    """
    return LocalKeyFile(path, create=True, must_create=True).current_id


class LocalKeyFile:
    """KEKs in a local 0600 JSON file (see the module docstring).

    Args:
        path: the key file.
        create: make the file (with one key) if it is missing; otherwise a
            missing file is an error, so that a replica whose volume is not
            mounted never writes keys that no other replica can read.
        must_create: refuse an existing file (``init_key_file``).

    Raises:
        KeyProviderError: missing (without ``create``), unreadable, or too open.
    """

    def __init__(self, path: str | Path, create: bool = False, must_create: bool = False) -> None:
        self.path = Path(path)
        self._keys: dict[str, bytes] = {}
        self._current = ""
        self._ident: tuple[int, int, int] | None = None
        if self.path.exists() and must_create:
            raise KeyProviderError(f"{self.path} exists already; it is never overwritten")
        if not self.path.exists():
            if not create:
                raise KeyProviderError(
                    f"{self.path}: KEK file missing (create it with `userlayer keys init-kek`; "
                    "a replica must not make keys of its own)"
                )
            with self._locked():
                if not self.path.exists():
                    kid = _new_id()
                    self._keys, self._current = {kid: secrets.token_bytes(KEY)}, kid
                    self._save()
                elif must_create:
                    raise KeyProviderError(f"{self.path} appeared while creating it")
        self._load()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock over every change of the file, across processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _stat(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        try:
            ident = self._stat()
            doc = json.loads(self.path.read_text("utf-8"))
            if doc.get("format") not in _FORMATS:
                raise ValueError(f"format {doc.get('format')!r}")
            keys = {str(k): bytes.fromhex(v) for k, v in doc["keys"].items()}
            current = str(doc["current"])
            if current not in keys or any(len(v) != KEY for v in keys.values()):
                raise ValueError("current key missing or a key is not 32 bytes")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise KeyProviderError(f"{self.path}: not a readable KEK file ({e})") from e
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyProviderError(f"{self.path}: permissions {oct(mode)} too open; use 0600")
        self._keys, self._current, self._ident = keys, current, ident

    def _refresh(self) -> None:
        """Re-read the file if another process (or instance) changed it."""
        try:
            if self._stat() != self._ident:
                self._load()
        except FileNotFoundError as e:
            raise KeyProviderError(f"{self.path}: KEK file vanished") from e

    def _save(self) -> None:
        doc = {
            "format": _FORMAT,
            "current": self._current,
            "keys": {k: v.hex() for k, v in self._keys.items()},
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keks-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._ident = self._stat()
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @property
    def current_id(self) -> str:
        """Id of the KEK that wraps new DEKs (as the file says now)."""
        self._refresh()
        return self._current

    @property
    def key_ids(self) -> list[str]:
        """Ids of the KEKs still held."""
        self._refresh()
        return sorted(self._keys)

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap under the current KEK (re-read first if another process rotated it)."""
        self._refresh()
        return self._current, aead_encrypt(self._keys[self._current], dek, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Unwrap with the named KEK."""
        self._refresh()
        key = self._keys.get(kek_id)
        if key is None:
            raise DecryptError(f"KEK {kek_id!r} is not held (destroyed or another file)")
        return aead_decrypt(key, wrapped, aad, f"data key under KEK {kek_id}")

    def rotate(self) -> str:
        """Add a new KEK (a fresh random id) and make it current; returns its id."""
        with self._locked():
            self._load()
            new = _new_id()
            while new in self._keys:  # pragma: no cover - 64 random bits
                new = _new_id()
            self._keys[new] = secrets.token_bytes(KEY)
            self._current = new
            self._save()
        return new

    def destroy(self, kek_id: str) -> None:
        """Delete a KEK from the file (never the current one, as the file says now).

        Raises:
            KeyProviderError: if ``kek_id`` is the current KEK.
        """
        with self._locked():
            self._load()
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
        if len(key) != KEY:
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
            raise DecryptError(f"KEK {kek_id!r} is not this provider's ({self._id})")
        return aead_decrypt(self._key, wrapped, aad, f"data key under KEK {kek_id}")

    def rotate(self) -> str:
        """Not possible: the platform owns the key."""
        raise KeyProviderError("EnvKeyProvider cannot rotate; rotate the key where it is managed")

    def destroy(self, kek_id: str) -> None:
        """Not possible: the platform owns the key."""
        raise KeyProviderError("EnvKeyProvider cannot destroy keys")
