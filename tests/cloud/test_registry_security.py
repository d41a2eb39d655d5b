"""Registry defects found by review (issue 18), each a regression test that failed before.

- an upload racing a deletion was verified in one transaction and stored in another,
  so it brought the deleted user back;
- any key with upload scope could enroll more signers for a user who had one (a hijack),
  with no cap and no way to list or revoke them;
- versions had no upper bound (2^63-1 blocked every later upload);
- deletion kept the user's refusal log and, in a backup, a data key the KEK still opened.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.test_registry import FP, SHAPES, make_package
from userlayer.cloud.registry import (
    MAX_VERSION_JUMP,
    AdapterRegistry,
    EnrollmentError,
    RegistryConfig,
    RejectedError,
)
from userlayer.sdk.adapter import key_id
from userlayer.sdk.crypto import LocalKeyFile
from userlayer.sdk.exceptions import DecryptError
from userlayer.sdk.signers import endorse, enrollment_message, revocation_message


@pytest.fixture
def reg(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "reg" / "registry.db", FP, SHAPES)


def test_an_upload_racing_a_delete_does_not_resurrect_the_user(
    reg: AdapterRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    real = reg._verify

    def verify_then_the_user_is_deleted(*a: object, **k: object):  # type: ignore[no-untyped-def]
        out = real(*a, **k)  # type: ignore[arg-type]
        reg.delete_user("samokat", "alice")  # between verification and the write
        reg.enroll("samokat", "alice", key.public_key())  # and she comes back, same key
        return out

    monkeypatch.setattr(reg, "_verify", verify_then_the_user_is_deleted)
    with pytest.raises(RejectedError, match="deleted or the signer revoked"):
        reg.put("samokat", "alice", make_package(key, "alice", 1))
    monkeypatch.undo()
    assert reg.versions("samokat", "alice") == [] and reg.get("samokat", "alice") is None
    assert reg.put("samokat", "alice", make_package(key, "alice", 1, seed=4)).version == 1


def test_adding_a_signer_needs_an_existing_signers_endorsement(reg: AdapterRegistry) -> None:
    own, thief = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", own.public_key())  # the first one: the backend's call
    with pytest.raises(EnrollmentError, match="needs an endorsement"):
        reg.enroll("samokat", "alice", thief.public_key())  # a leaked upload key cannot
    forged = endorse(thief, enrollment_message("samokat", "alice", key_id(thief.public_key())))
    with pytest.raises(EnrollmentError, match="needs an endorsement"):
        reg.enroll("samokat", "alice", thief.public_key(), forged)
    with pytest.raises(RejectedError, match="not a trusted key"):
        reg.put("samokat", "alice", make_package(thief, "alice", 1))
    new = Ed25519PrivateKey.generate()
    kid = key_id(new.public_key())
    ok = endorse(own, enrollment_message("samokat", "alice", kid))
    assert reg.enroll("samokat", "alice", new.public_key(), ok) == kid
    # an endorsement is bound to service, user and key: it cannot be replayed elsewhere
    reg.enroll("kuper", "alice", own.public_key())  # the same person's key in another service
    with pytest.raises(EnrollmentError, match="needs an endorsement"):
        reg.enroll("kuper", "alice", new.public_key(), ok)
    assert sorted(reg.signers.list("samokat", "alice")) == sorted([key_id(own.public_key()), kid])
    assert reg.put("samokat", "alice", make_package(new, "alice", 1)).version == 1
    admin_added = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", admin_added.public_key(), admin=True)  # an admin may


def test_signers_are_capped_listed_and_revoked_only_with_consent(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "r.db", FP, SHAPES, cfg=RegistryConfig(max_signers=2))
    a, b, c = (Ed25519PrivateKey.generate() for _ in range(3))
    reg.enroll("kuper", "bob", a.public_key())
    kb = key_id(b.public_key())
    reg.enroll("kuper", "bob", b.public_key(), endorse(a, enrollment_message("kuper", "bob", kb)))
    kc = key_id(c.public_key())
    with pytest.raises(EnrollmentError, match="the most allowed"):
        reg.enroll(
            "kuper", "bob", c.public_key(), endorse(a, enrollment_message("kuper", "bob", kc))
        )
    ka = key_id(a.public_key())
    with pytest.raises(EnrollmentError, match="revoking"):
        reg.signers.revoke("kuper", "bob", ka)  # without consent
    with pytest.raises(EnrollmentError, match="revoking"):  # an outsider's signature
        reg.signers.revoke("kuper", "bob", ka, endorse(c, revocation_message("kuper", "bob", ka)))
    assert reg.signers.revoke(
        "kuper", "bob", ka, endorse(b, revocation_message("kuper", "bob", ka))
    )
    assert reg.signers.list("kuper", "bob") == [kb]
    with pytest.raises(RejectedError, match="not a trusted key"):
        reg.put("kuper", "bob", make_package(a, "bob", 1, service="kuper"))
    assert not reg.signers.revoke("kuper", "bob", ka, admin=True)  # already gone


def test_a_revoked_key_cannot_be_enrolled_again_with_its_old_endorsement(
    reg: AdapterRegistry,
) -> None:
    """Defect (review): a stolen key's enrollment endorsement could be replayed after the
    user revoked it."""
    own, stolen = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.enroll("samokat", "carol", own.public_key())
    ks = key_id(stolen.public_key())
    old = endorse(own, enrollment_message("samokat", "carol", ks))
    reg.enroll("samokat", "carol", stolen.public_key(), old)
    reg.signers.revoke(
        "samokat", "carol", ks, endorse(own, revocation_message("samokat", "carol", ks))
    )
    with pytest.raises(EnrollmentError, match="was revoked"):
        reg.enroll("samokat", "carol", stolen.public_key(), old)
    reg.delete_user("samokat", "carol")  # a fresh start clears the list
    reg.enroll("samokat", "carol", stolen.public_key())


def test_versions_are_bounded(reg: AdapterRegistry) -> None:
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    with pytest.raises(RejectedError, match="version"):
        reg.put("samokat", "alice", make_package(key, "alice", 2**63 - 1))
    with pytest.raises(RejectedError, match="jumps more than"):
        reg.put("samokat", "alice", make_package(key, "alice", MAX_VERSION_JUMP + 1))
    reg.put("samokat", "alice", make_package(key, "alice", MAX_VERSION_JUMP))
    assert reg.put("samokat", "alice", make_package(key, "alice", MAX_VERSION_JUMP + 1)).version


def test_shred_on_delete_leaves_backups_unreadable(tmp_path: Path) -> None:
    import shutil

    db = tmp_path / "r.db"
    reg = AdapterRegistry(db, FP, SHAPES, cfg=RegistryConfig(shred_on_delete=True))
    key = Ed25519PrivateKey.generate()
    for u in ("alice", "bob"):
        reg.enroll(
            "samokat",
            u,
            key.public_key() if u == "alice" else Ed25519PrivateKey.generate().public_key(),
        )
    reg.put("samokat", "alice", make_package(key, "alice", 1))
    reg.sql.checkpoint()
    shutil.copy(db, tmp_path / "backup.db")
    assert reg.delete_user("samokat", "alice") == 1
    reg.close()
    old = AdapterRegistry(
        tmp_path / "backup.db", FP, SHAPES, keys=LocalKeyFile(tmp_path / "r.keks")
    )  # the backup, with today's key file
    with old.sql.tx() as cur, pytest.raises(DecryptError, match="not held"):
        old._dek(cur, "samokat", "alice", create=False)
