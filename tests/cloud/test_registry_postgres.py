"""The registry on a real PostgreSQL server: two replicas, freshness, deletion, store outage."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cloud.test_registry import FP, SHAPES, make_package
from tests.pg import PgServer
from userlayer.cloud.registry import (
    AdapterRegistry,
    RegistryError,
    RejectedError,
    StoreUnavailableError,
)
from userlayer.sdk.crypto import LocalKeyFile


def test_two_replicas_on_postgres(postgres: PgServer, tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "kek.json", create=True)  # both replicas get the same KEK
    a = AdapterRegistry(postgres.dsn, FP, SHAPES, keys=keys)
    b = AdapterRegistry(postgres.dsn, FP, SHAPES, keys=keys)
    key = Ed25519PrivateKey.generate()
    a.enroll("kuper", "pg-alice", key.public_key())
    a.put("kuper", "pg-alice", make_package(key, "pg-alice", 1, service="kuper"))
    got = b.get("kuper", "pg-alice")
    assert got is not None and got.info.version == 1
    a.put("kuper", "pg-alice", make_package(key, "pg-alice", 2, service="kuper", seed=4))
    fresh = b.get("kuper", "pg-alice")  # b's cache held v1: the next read serves v2
    assert fresh is not None and fresh.info.version == 2
    with pytest.raises(RejectedError, match="not newer"):
        b.put("kuper", "pg-alice", make_package(key, "pg-alice", 2, service="kuper"))
    with pytest.raises(RejectedError, match="base model"):
        b.put(
            "kuper",
            "pg-alice",
            make_package(key, "pg-alice", 3, service="kuper", base_fingerprint="ab" * 8),
        )
    assert b.rejected(2)[0]["reason"].startswith("adapter was made for base model")
    assert b.delete_user("kuper", "pg-alice") == 2
    assert a.get("kuper", "pg-alice") is None


def test_store_outage_is_reported_and_recovers(postgres: PgServer, tmp_path: Path) -> None:
    reg = AdapterRegistry(
        postgres.dsn, FP, SHAPES, keys=LocalKeyFile(tmp_path / "kek.json", create=True)
    )
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "pg-bob", key.public_key())
    reg.put("samokat", "pg-bob", make_package(key, "pg-bob", 1))
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailableError):
            reg.get("samokat", "pg-bob")
        with pytest.raises(StoreUnavailableError):
            reg.ping()
    finally:
        postgres.start()
    got = reg.get("samokat", "pg-bob")  # reconnects by itself
    assert got is not None and got.info.version == 1


def test_postgres_registry_needs_a_key_provider(postgres: PgServer) -> None:
    with pytest.raises(RegistryError, match="key provider"):
        AdapterRegistry(postgres.dsn, FP, SHAPES)


def test_concurrent_first_enrollments_let_one_key_in(postgres: PgServer, tmp_path: Path) -> None:
    """Defect (review): under read-committed, concurrent first enrollments of different keys
    all passed the "no signer yet" check; an advisory lock per user serialises them."""
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from userlayer.cloud.registry import EnrollmentError

    regs = [
        AdapterRegistry(
            postgres.dsn, FP, SHAPES, keys=LocalKeyFile(tmp_path / "kek.json", create=True)
        )
        for _ in range(6)
    ]
    for r in regs:
        r.ping()  # connected: the race is the enrollments', not the connects'
    ok: list[str] = []
    start = threading.Barrier(len(regs))

    def enroll(reg: AdapterRegistry, user: str) -> None:
        start.wait()
        try:
            reg.enroll("kuper", user, Ed25519PrivateKey.generate().public_key())
            ok.append(user)
        except EnrollmentError:
            pass

    users = [f"race-{i}" for i in range(20)]
    for user in users:
        threads = [threading.Thread(target=enroll, args=(r, user)) for r in regs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(ok) == sorted(users)  # exactly one key got in for each user
    assert all(len(regs[0].signers.list("kuper", u)) == 1 for u in users)
    for r in regs:
        r.close()
