"""Errors raised by userlayer.

Every error the project raises derives from :class:`UserLayerError`, so a
service backend can catch the whole family with one ``except``. Each package
adds its own base (``EdgeError``, ``CloudError``, ``ToolsError``) under it.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "CatalogError",
    "CryptoError",
    "DecryptError",
    "KeyProviderError",
    "PrivacyError",
    "SchemaError",
    "SemanticIdError",
    "TextEncoderError",
    "UserLayerError",
]


class UserLayerError(Exception):
    """Base of every error raised by userlayer."""


class SchemaError(UserLayerError, ValueError):
    """A record does not match its schema (the message names the field)."""


class CatalogError(UserLayerError, ValueError):
    """A catalog or item table is inconsistent."""


class SemanticIdError(UserLayerError, ValueError):
    """A Semantic ID table or prefix is invalid."""


class AdapterError(UserLayerError, ValueError):
    """A sealed adapter package is malformed, tampered with, or fails verification."""


class PrivacyError(UserLayerError, ValueError):
    """A privacy mechanism or its accounting is misconfigured (the message names the value)."""


class CryptoError(UserLayerError):
    """Base of the envelope-encryption errors (``userlayer.sdk.crypto``)."""


class KeyProviderError(CryptoError):
    """A key provider cannot do what was asked (missing key file, no rotation...)."""


class DecryptError(CryptoError, ValueError):
    """Data does not decrypt: tampered, truncated, moved, or the wrong key."""


class TextEncoderError(UserLayerError, ValueError):
    """An offline text encoder is missing, not the pinned one, or misconfigured."""
