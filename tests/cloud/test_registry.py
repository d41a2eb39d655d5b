"""The adapter registry on a real SQLite file: verify/refuse table, versions, tiers, deletion.

PostgreSQL runs the same checks in ``test_registry_postgres.py``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from userlayer.cloud.engine.engine import Slab
from userlayer.cloud.registry import (
    AdapterInfo,
    AdapterRegistry,
    RegistryConfig,
    RegistryError,
    RejectedError,
)
from userlayer.sdk.adapter import PrivacyRecord, seal_package
from userlayer.sdk.model import AdapterConfig, ModelConfig, adapter_shapes, new_adapter

CFG = ModelConfig(level_sizes=(8, 8), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
ACFG = AdapterConfig(rank=2)
SHAPES = adapter_shapes(CFG, ACFG)
FP = "00112233aabbccdd"


def make_package(
    key: Ed25519PrivateKey,
    user: str,
    version: int = 1,
    service: str = "samokat",
    seed: int = 0,
    **over: object,
) -> bytes:
    """A valid package for ``user`` unless ``over`` changes something."""
    tensors = {
        k: v.numpy() + np.float32(0.01 * (seed + 1))
        for k, v in new_adapter(CFG, ACFG, torch.Generator().manual_seed(seed)).items()
    }
    tensors |= over.pop("tensors", {})  # type: ignore[arg-type]
    recipient = over.pop("recipient", None)
    fields: dict[str, object] = {
        "base_fingerprint": FP,
        "adapter_config": ACFG.to_dict(),
        "user_id": user,
        "service": service,
        "version": version,
        "privacy": PrivacyRecord(1.5, 1e-5, "rdp", "opacus 1.6.0"),
    }
    fields |= over
    return seal_package(fields, tensors, key, recipient)  # type: ignore[arg-type]


@pytest.fixture
def reg(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "reg" / "registry.db", FP, SHAPES)


def test_put_get_versions_and_metadata(reg: AdapterRegistry) -> None:
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    info = reg.put("samokat", "alice", make_package(key, "alice", 1))
    assert info.version == 1 and info.privacy and info.privacy["epsilon"] == 1.5
    got = reg.get("samokat", "alice")
    assert got is not None and set(got.tensors) == set(SHAPES)
    reg.put("samokat", "alice", make_package(key, "alice", 2, seed=5))
    newer = reg.get("samokat", "alice")
    assert newer is not None and newer.info.version == 2
    assert not np.array_equal(newer.tensors["prefix"], got.tensors["prefix"])
    assert reg.get("samokat", "bob") is None and reg.info("samokat", "bob") is None
    meta = reg.info("samokat", "alice")
    assert meta is not None and meta.version == 2 and len(meta.sha256) == 64


def _v2(key: Ed25519PrivateKey, user: str = "alice", **over: object) -> bytes:
    return make_package(key, user, 2, **over)  # newer than the stored version 1


def _cases() -> list[tuple[str, Callable[[Ed25519PrivateKey, Ed25519PrivateKey], bytes], str]]:
    bad_shape = {"prefix": np.zeros((3, 16), np.float32)}
    nan = {"prefix": np.full(SHAPES["prefix"], np.nan, np.float32)}
    huge = {"prefix": np.full(SHAPES["prefix"], 1e4, np.float32)}
    elsewhere = X25519PrivateKey.generate().public_key()
    return [
        ("other base", lambda k, o: _v2(k, base_fingerprint="ff" * 8), "base model"),
        ("other user", lambda k, o: _v2(k, "bob"), "user"),
        ("other service", lambda k, o: _v2(k, service="kuper"), "service"),
        ("unknown signer", lambda k, o: _v2(o), "signer"),
        ("wrong shape", lambda k, o: _v2(k, tensors=bad_shape), "shape"),
        ("huge norm", lambda k, o: _v2(k, tensors=huge), "norm"),
        ("flipped byte", lambda k, o: _flip(_v2(k)), "."),
        ("truncated", lambda k, o: _v2(k)[:-70], "."),
        ("not a package", lambda k, o: b"hello" * 100, "magic"),
        ("sealed elsewhere", lambda k, o: _v2(k, recipient=elsewhere), "recipient"),
        ("nan", lambda k, o: _nan_package(k, nan), "finite"),
    ]


def _flip(b: bytes) -> bytes:
    x = bytearray(b)
    x[len(x) // 2] ^= 1
    return bytes(x)


def _nan_package(key: Ed25519PrivateKey, nan: dict[str, np.ndarray]) -> bytes:
    # seal_package refuses NaN; forge one by signing a body with NaN tensors
    import struct

    from safetensors.numpy import save as st_save

    from userlayer.sdk.adapter import KIND_PLAIN, MAGIC, VERSION, Manifest, TensorSpec, key_id

    tensors = {k: v.numpy() for k, v in new_adapter(CFG, ACFG).items()} | nan
    m = Manifest(
        base_fingerprint=FP,
        adapter_config=ACFG.to_dict(),
        tensors={n: TensorSpec(tuple(a.shape), "F32") for n, a in tensors.items()},
        user_id="alice",
        service="samokat",
        version=2,
        signer=key_id(key.public_key()),
    ).to_json()
    blob = st_save(tensors)
    body = MAGIC + bytes([VERSION, KIND_PLAIN]) + struct.pack(">I", len(m)) + m
    body += struct.pack(">I", len(blob)) + blob
    return body + key.sign(body)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_refused_packages_are_logged_and_nothing_is_stored(
    reg: AdapterRegistry,
    case: tuple[str, Callable[[Ed25519PrivateKey, Ed25519PrivateKey], bytes], str],
) -> None:
    _name, make, words = case
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    reg.enroll("samokat", "bob", other.public_key())  # enrolled, but for bob
    good = make_package(key, "alice", 1)
    reg.put("samokat", "alice", good)
    with pytest.raises(RejectedError, match=words):
        reg.put("samokat", "alice", make(key, other))
    assert reg.latest_version("samokat", "alice") == 1  # the stored version is untouched
    got = reg.get("samokat", "alice")
    assert got is not None and got.info.version == 1
    assert reg.rejected(1)[0]["user_id"] == "alice"


def test_where_dp_is_required_a_seeded_run_is_refused(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "r.db", FP, SHAPES, cfg=RegistryConfig(require_privacy=True))
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    seeded = PrivacyRecord(1.5, 1e-5, "prv", "opacus 1.6.0", rng="seeded:0 (not private)")
    with pytest.raises(RejectedError, match="not private"):
        reg.put("samokat", "alice", make_package(key, "alice", 1, privacy=seeded))
    with pytest.raises(RejectedError, match="no differential-privacy record"):
        reg.put("samokat", "alice", make_package(key, "alice", 1, privacy=None))
    assert reg.put("samokat", "alice", make_package(key, "alice", 1)).version == 1


def test_replayed_or_older_versions_are_refused(reg: AdapterRegistry) -> None:
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    first = make_package(key, "alice", 2)
    reg.put("samokat", "alice", first)
    with pytest.raises(RejectedError, match="not newer"):
        reg.put("samokat", "alice", first)
    with pytest.raises(RejectedError, match="not newer"):
        reg.put("samokat", "alice", make_package(key, "alice", 1))
    with pytest.raises(RejectedError, match="no signer is enrolled"):
        reg.put("samokat", "carol", make_package(key, "carol"))


def test_sealed_packages_open_with_the_cloud_key(tmp_path: Path) -> None:
    cloud = X25519PrivateKey.generate()
    reg = AdapterRegistry(tmp_path / "registry.db", FP, SHAPES, recipient_key=cloud)
    key = Ed25519PrivateKey.generate()
    reg.enroll("kuper", "alice", key.public_key())
    reg.put(
        "kuper", "alice", make_package(key, "alice", service="kuper", recipient=cloud.public_key())
    )
    assert reg.get("kuper", "alice") is not None


def test_encrypted_at_rest_and_tampering_is_detected_on_read(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    reg = AdapterRegistry(path, FP, SHAPES)
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    pkg = make_package(key, "alice")
    reg.put("samokat", "alice", pkg)
    reg.close()
    raw = path.read_bytes() + (
        path.with_suffix(".db-wal").read_bytes() if path.with_suffix(".db-wal").exists() else b""
    )
    manifest_marker = b'"user_id":"alice"'
    assert manifest_marker in pkg and manifest_marker not in raw  # only ciphertext at rest
    con = sqlite3.connect(path)
    blob = bytearray(con.execute("SELECT blob FROM ul_adapters").fetchone()[0])
    blob[40] ^= 1
    con.execute("UPDATE ul_adapters SET blob = ?", (bytes(blob),))
    con.commit()
    con.close()
    fresh = AdapterRegistry(path, FP, SHAPES)  # a new process: nothing cached
    with pytest.raises(RegistryError, match="does not verify"):
        fresh.get("samokat", "alice")
    assert fresh.stats["load_failures"] == 1


def test_cache_tier_freshness_and_deletion_from_every_tier(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    a = AdapterRegistry(path, FP, SHAPES, cfg=RegistryConfig(cache_size=2))
    b = AdapterRegistry(path, FP, SHAPES)  # a second replica on the same store
    slab = Slab(SHAPES, 4)
    a.on_delete(lambda s, u: slab.evict((s, u)))
    keys = {u: Ed25519PrivateKey.generate() for u in ("u0", "u1", "u2")}
    for u, k in keys.items():
        a.enroll("samokat", u, k.public_key())
        a.put("samokat", u, make_package(k, u))
    assert a.cached() == 2  # LRU bound
    for u in keys:
        got = a.get("samokat", u)
        assert got is not None
        slab.load(("samokat", u, got.info.version), got.tensors)
    # replica b caches u0 v1, then a new version is uploaded through a
    got_b = b.get("samokat", "u0")
    assert got_b is not None and got_b.info.version == 1
    t0 = time.perf_counter()
    a.put("samokat", "u0", make_package(keys["u0"], "u0", 2, seed=3))
    fresh = b.get("samokat", "u0")
    assert fresh is not None and fresh.info.version == 2  # the next request on b sees it
    assert time.perf_counter() - t0 < 5
    assert a.delete_user("samokat", "u1") == 1
    assert a.get("samokat", "u1") is None and b.get("samokat", "u1") is None
    assert slab.lookup(("samokat", "u1", 1)) == -1 and slab.lookup(("samokat", "u2", 1)) >= 0
    with pytest.raises(RejectedError, match="no signer"):  # forgotten: must enroll again
        a.put("samokat", "u1", make_package(keys["u1"], "u1", 5))
    con = sqlite3.connect(path)
    for table in ("ul_adapters", "ul_users", "ul_signers"):
        n = con.execute(f"SELECT COUNT(*) FROM {table} WHERE user_id = 'u1'").fetchone()[0]
        assert n == 0, table


def test_old_versions_are_pruned(reg: AdapterRegistry) -> None:
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    for v in range(1, 6):
        reg.put("samokat", "alice", make_package(key, "alice", v))
    with reg.sql.tx() as cur:
        versions = [r[0] for r in cur.execute("SELECT version FROM ul_adapters").fetchall()]
    assert sorted(versions) == [3, 4, 5]


def test_signer_cannot_be_enrolled_for_two_users(reg: AdapterRegistry) -> None:
    key = Ed25519PrivateKey.generate()
    reg.enroll("samokat", "alice", key.public_key())
    reg.enroll("samokat", "alice", key.public_key())  # idempotent
    reg.enroll("kuper", "alice", key.public_key())  # the same person in another service
    with pytest.raises(RegistryError, match="another user"):
        reg.enroll("samokat", "bob", key.public_key())


def test_stored_metadata_and_the_api_schema_name_the_same_fields() -> None:
    # the registry's record and the wire schema are kept apart on purpose (storage vs API);
    # this keeps them from drifting
    from dataclasses import fields

    from userlayer.sdk.api import AdapterMetadata

    assert [f.name for f in fields(AdapterInfo)] == list(AdapterMetadata.model_fields)
