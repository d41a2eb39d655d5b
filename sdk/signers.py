"""Who may sign a user's adapters: the messages that endorse adding or revoking a signer.

A user's first signer is enrolled by their service's backend (an API key with
``upload`` scope for that service). Every later change needs the consent of a
key the user already has: adding a signer, or revoking one, is refused unless
the request carries an Ed25519 signature by an enrolled signer of that user
over the message below (or comes with an ``admin`` key). So a leaked upload
key cannot hijack a user who has a signer, and a user's own key can rotate
itself: endorse the new key, upload with it, revoke the old one.

Messages (UTF-8, ``|``-separated; the key ids are the 16-hex ids of
:func:`userlayer.sdk.adapter.key_id`)::

    userlayer.enroll/1|<service>|<user id>|<new key id>
    userlayer.revoke/1|<service>|<user id>|<revoked key id>
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["endorse", "enrollment_message", "revocation_message", "verify_endorsement"]


def enrollment_message(service: str, user_id: str, key_id: str) -> bytes:
    """What an existing signer signs to let ``key_id`` sign this user's adapters too."""
    return f"userlayer.enroll/1|{service}|{user_id}|{key_id}".encode()


def revocation_message(service: str, user_id: str, key_id: str) -> bytes:
    """What a signer of the user signs to revoke ``key_id``."""
    return f"userlayer.revoke/1|{service}|{user_id}|{key_id}".encode()


def endorse(key: Ed25519PrivateKey, message: bytes) -> str:
    """The endorsement (hex Ed25519 signature) of ``message`` by ``key``."""
    return key.sign(message).hex()


def verify_endorsement(
    signers: dict[str, Ed25519PublicKey], message: bytes, endorsement: str | None
) -> str | None:
    """The key id of the signer whose signature ``endorsement`` is, or None."""
    if not endorsement:
        return None
    try:
        sig = bytes.fromhex(endorsement)
    except ValueError:
        return None
    for kid, pub in signers.items():
        try:
            pub.verify(sig, message)
        except InvalidSignature:
            continue
        return kid
    return None
