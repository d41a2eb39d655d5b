"""The keys trusted to sign each user's adapters, per service.

Rules (the messages are in :mod:`userlayer.sdk.signers`):

- a key signs for one user per service;
- a user's first signer is enrolled by their service's backend; any further
  one needs an endorsement by a signer the user already has, or ``admin``;
- revoking a signer needs an endorsement by one of the user's signers (the
  revoked one included), or ``admin``;
- at most ``RegistryConfig.max_signers`` per user and service;
- a revoked key stays refused for that user (an old endorsement of it cannot
  be replayed), unless an admin key enrolls it again; deleting the user
  clears the list;
- every enrollment gets a random id: a package verified against an
  enrollment is stored only if that very enrollment still exists when the
  write transaction runs (so a delete, or a delete and a new enrollment, in
  between refuses it).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from userlayer.cloud.registry.store import Cursor, SqlStore
from userlayer.cloud.registry.types import EnrollmentError, RegistryConfig
from userlayer.sdk.adapter import key_id
from userlayer.sdk.signers import enrollment_message, revocation_message, verify_endorsement

__all__ = ["Signer", "SignerBook"]


@dataclass(frozen=True)
class Signer:
    """One enrolled key."""

    key_id: str
    public_key: Ed25519PublicKey
    enrollment: int


def _public(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    except ValueError as e:
        raise EnrollmentError(f"not an Ed25519 public key: {e}") from e


def _endorsed(have: dict[str, Signer], message: bytes, endorsement: str | None) -> bool:
    keys = {k: s.public_key for k, s in have.items()}
    return verify_endorsement(keys, message, endorsement) is not None


class SignerBook:
    """Enrollments of one registry (see the module docstring)."""

    def __init__(self, sql: SqlStore, cfg: RegistryConfig) -> None:
        self.sql, self.cfg = sql, cfg

    def of(self, cur: Cursor, service: str, user_id: str) -> dict[str, Signer]:
        """The user's signers, by key id (inside a transaction)."""
        rows = cur.execute(
            "SELECT key_id, public_key, enrollment FROM ul_signers"
            " WHERE service = ? AND user_id = ?",
            (service, user_id),
        ).fetchall()
        return {
            k: Signer(k, Ed25519PublicKey.from_public_bytes(bytes(p)), int(e)) for k, p, e in rows
        }

    def still(self, cur: Cursor, service: str, user_id: str, signer: Signer) -> bool:
        """Whether exactly this enrollment still exists (row-locked on PostgreSQL)."""
        sql = "SELECT enrollment FROM ul_signers WHERE key_id = ? AND service = ? AND user_id = ?"
        row = cur.execute(sql + self.sql.for_update, (signer.key_id, service, user_id)).fetchone()
        return row is not None and int(row[0]) == signer.enrollment

    def enroll_many(
        self,
        items: Sequence[tuple[str, str, Ed25519PublicKey | bytes]],
        endorsement: str | None = None,
        admin: bool = False,
    ) -> list[str]:
        """Enroll keys (all or none); see the module docstring for who may.

        Raises:
            EnrollmentError: a key of another user, a user who has signers and no
                valid endorsement (without ``admin``), or too many signers.
        """
        rows = []
        for service, user_id, public_key in items:
            pub = _public(public_key)
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            rows.append((key_id(pub), service, user_id, raw))
        with self.sql.tx() as cur:
            for kid, service, user_id, raw in rows:
                self.sql.lock_user(cur, service, user_id)
                revoked = cur.execute(
                    "SELECT 1 FROM ul_revoked WHERE key_id = ? AND service = ? AND user_id = ?",
                    (kid, service, user_id),
                ).fetchone()
                if revoked and not admin:
                    raise EnrollmentError(f"signer {kid} was revoked for this user")
                row = cur.execute(
                    "SELECT user_id FROM ul_signers WHERE key_id = ? AND service = ?",
                    (kid, service),
                ).fetchone()
                if row and row[0] != user_id:
                    raise EnrollmentError(f"signer {kid} is enrolled for another user")
                if row:
                    continue  # enrolled already: nothing to do
                have = self.of(cur, service, user_id)
                msg = enrollment_message(service, user_id, kid)
                if have and not admin and not _endorsed(have, msg, endorsement):
                    raise EnrollmentError(
                        f"user {user_id} has a signer in {service}: adding {kid} needs an "
                        "endorsement by it (userlayer.sdk.signers) or an admin key"
                    )
                if len(have) >= self.cfg.max_signers:
                    raise EnrollmentError(
                        f"user {user_id} has {len(have)} signers in {service}, the most allowed;"
                        " revoke one first"
                    )
                cur.execute(
                    "INSERT INTO ul_signers (key_id, service, user_id, public_key, enrollment)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (kid, service, user_id, raw, secrets.randbits(62) + 1),
                )
        return [r[0] for r in rows]

    def list(self, service: str, user_id: str) -> list[str]:
        """Key ids of the user's signers."""
        with self.sql.tx() as cur:
            return sorted(self.of(cur, service, user_id))

    def revoke(
        self,
        service: str,
        user_id: str,
        kid: str,
        endorsement: str | None = None,
        admin: bool = False,
    ) -> bool:
        """Revoke one signer; returns whether it was enrolled.

        Raises:
            EnrollmentError: without a valid endorsement by one of the user's signers
                (and without ``admin``).
        """
        with self.sql.tx() as cur:
            self.sql.lock_user(cur, service, user_id)
            have = self.of(cur, service, user_id)
            if kid not in have:
                return False
            msg = revocation_message(service, user_id, kid)
            if not admin and not _endorsed(have, msg, endorsement):
                raise EnrollmentError(
                    f"revoking {kid} needs an endorsement by one of the user's signers "
                    "(userlayer.sdk.signers) or an admin key"
                )
            cur.execute(
                "DELETE FROM ul_signers WHERE key_id = ? AND service = ? AND user_id = ?",
                (kid, service, user_id),
            )
            cur.execute(
                "INSERT INTO ul_revoked (key_id, service, user_id) VALUES (?, ?, ?)",
                (kid, service, user_id),
            )
        return True
