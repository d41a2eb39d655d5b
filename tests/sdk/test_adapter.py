"""Sealed adapter packages: round trips, every kind of tampering, PEFT interop."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from userlayer.sdk.adapter import (
    Expectation,
    PrivacyRecord,
    key_id,
    load_signing_key,
    open_package,
    save_signing_key,
    seal_package,
    to_peft,
    unseal,
)
from userlayer.sdk.exceptions import AdapterError
from userlayer.sdk.model import (
    AdapterConfig,
    ModelConfig,
    Recommender,
    RowAdapters,
    adapter_shapes,
    new_adapter,
)

CFG = ModelConfig(level_sizes=(8, 8, 4), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
ACFG = AdapterConfig()


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    ad = new_adapter(CFG, ACFG, g)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g)).numpy() for k, v in ad.items()}


def _fields(**over: object) -> dict[str, object]:
    f: dict[str, object] = {
        "base_fingerprint": "abcdef0123456789",
        "adapter_config": ACFG.to_dict(),
        "user_id": "u1",
        "service": "samokat",
        "version": 3,
        "privacy": PrivacyRecord(7.5, 1e-5, "rdp", "opacus 1.6.0", 40, 1.1, 0.05, 1.0),
    }
    f.update(over)
    return f


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trusted(key: Ed25519PrivateKey) -> dict[str, object]:
    return {key_id(key.public_key()): key.public_key()}


def _expect(**over: object) -> Expectation:
    kw: dict[str, object] = {
        "base_fingerprint": "abcdef0123456789",
        "user_id": "u1",
        "service": "samokat",
        "shapes": adapter_shapes(CFG, ACFG),
    }
    kw.update(over)
    return Expectation(**kw)  # type: ignore[arg-type]


def test_round_trip_plain_and_encrypted(key: Ed25519PrivateKey, trusted: dict) -> None:
    t = _tensors()
    blob = seal_package(_fields(), t, key)
    pkg = open_package(blob, trusted, _expect())
    assert pkg.manifest.version == 3 and pkg.manifest.privacy is not None
    assert pkg.manifest.privacy.epsilon == 7.5
    for n, a in t.items():
        np.testing.assert_array_equal(pkg.tensors[n], a)
    cloud = X25519PrivateKey.generate()
    sealed = seal_package(_fields(), t, key, recipient=cloud.public_key())
    assert b"samokat" not in sealed and b"base_fingerprint" not in sealed  # not readable
    pkg2 = open_package(sealed, trusted, _expect(), recipient_key=cloud)
    np.testing.assert_array_equal(pkg2.tensors["prefix"], t["prefix"])
    with pytest.raises(AdapterError, match="no recipient key"):
        open_package(sealed, trusted, _expect())
    with pytest.raises(AdapterError, match="does not decrypt"):
        open_package(sealed, trusted, _expect(), recipient_key=X25519PrivateKey.generate())


def test_sealing_is_hpke_and_the_old_scheme_is_refused_clearly(
    key: Ed25519PrivateKey, trusted: dict
) -> None:
    """Sealing format 2 is RFC 9180 HPKE (cryptography's): it opens with the standard suite.

    A format-1 package (X25519 + HKDF + AES-GCM assembled by hand) gets an error
    that says to seal again; a changed header byte does not decrypt.
    """
    import os

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    cloud = X25519PrivateKey.generate()
    plain = seal_package(_fields(), _tensors(), key)
    sealed = seal_package(_fields(), _tensors(), key, recipient=cloud.public_key())
    assert sealed[:6] == b"ULAP\x02\x01"
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)  # an independent opener
    inner = suite.decrypt(sealed[6:], cloud, info=b"userlayer.sealed/2" + sealed[:6])
    assert inner[:6] == b"ULAP\x01\x00" and open_package(inner, trusted, _expect())
    assert seal_package(_fields(), _tensors(), key, recipient=cloud.public_key()) != sealed
    with pytest.raises(AdapterError, match="unsupported sealing format 3"):
        open_package(sealed[:4] + b"\x03" + sealed[5:], trusted, _expect(), recipient_key=cloud)
    # the old scheme, as it was built
    eph = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    eph_pub, rpub = eph.public_key().public_bytes(*raw), cloud.public_key().public_bytes(*raw)
    header = b"ULAP\x01\x01" + eph_pub
    k = HKDF(hashes.SHA256(), 32, eph_pub + rpub, b"userlayer.adapter/1").derive(
        eph.exchange(cloud.public_key())
    )
    nonce = os.urandom(12)
    old = header + nonce + AESGCM(k).encrypt(nonce, plain, header)
    with pytest.raises(AdapterError, match=r"sealing format 1.*seal it again"):
        open_package(old, trusted, _expect(), recipient_key=cloud)
    with pytest.raises(AdapterError, match="sealing format 1"):
        unseal(old, cloud)


def test_every_flipped_byte_is_rejected(key: Ed25519PrivateKey, trusted: dict) -> None:
    small = AdapterConfig(rank=1, targets=("q",), n_prefix=1, film=False, n_modes=0)
    cfg = ModelConfig(level_sizes=(4, 4), d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=8)
    t = {k: v.numpy() for k, v in new_adapter(cfg, small).items()}
    blob = seal_package(_fields(adapter_config=small.to_dict()), t, key)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(AdapterError):
            open_package(bytes(bad), trusted)
    for n in (0, 5, 9, 40, len(blob) - 1):
        with pytest.raises(AdapterError):
            open_package(blob[:n], trusted)
    with pytest.raises(AdapterError, match="framing"):
        open_package(blob + b"\x00", trusted)


def test_untrusted_signer_and_expectations(key: Ed25519PrivateKey, trusted: dict) -> None:
    blob = seal_package(_fields(), _tensors(), key)
    with pytest.raises(AdapterError, match="not a trusted key"):
        open_package(blob, {})
    other = Ed25519PrivateKey.generate()
    forged = seal_package(_fields(), _tensors(), other)
    with pytest.raises(AdapterError, match="not a trusted key"):
        open_package(forged, trusted)
    # a package moved to another user or service, or another base model
    with pytest.raises(AdapterError, match="not 'u2'"):
        open_package(blob, trusted, _expect(user_id="u2"))
    with pytest.raises(AdapterError, match="not 'kuper'"):
        open_package(blob, trusted, _expect(service="kuper"))
    with pytest.raises(AdapterError, match="made for base model"):
        open_package(blob, trusted, _expect(base_fingerprint="0000000000000000"))
    shapes = dict(adapter_shapes(CFG, ACFG))
    shapes["prefix"] = (3, 32)
    with pytest.raises(AdapterError, match="prefix"):
        open_package(blob, trusted, _expect(shapes=shapes))
    with pytest.raises(AdapterError, match="exceeds the bound"):
        open_package(blob, trusted, _expect(max_norm=0.5))


def _resign(
    blob: bytes, key: Ed25519PrivateKey, manifest: bytes | None = None, tensors: bytes | None = None
) -> bytes:
    """Rebuild a validly signed package with altered parts (an attacker who holds a key)."""
    (m_len,) = struct.unpack(">I", blob[6:10])
    m = blob[10 : 10 + m_len]
    (t_len,) = struct.unpack(">I", blob[10 + m_len : 14 + m_len])
    t = blob[14 + m_len : 14 + m_len + t_len]
    m, t = manifest if manifest is not None else m, tensors if tensors is not None else t
    body = blob[:6] + struct.pack(">I", len(m)) + m + struct.pack(">I", len(t)) + t
    return body + key.sign(body)


def test_signed_but_inconsistent_packages_are_rejected(
    key: Ed25519PrivateKey, trusted: dict
) -> None:
    from safetensors.numpy import save

    t = _tensors()
    blob = seal_package(_fields(), t, key)
    (m_len,) = struct.unpack(">I", blob[6:10])
    doc = json.loads(blob[10 : 10 + m_len])
    # manifest disagrees with the tensors
    d2 = json.loads(json.dumps(doc))
    d2["tensors"]["prefix"]["shape"] = [3, 32]
    with pytest.raises(AdapterError, match="manifest says"):
        open_package(_resign(blob, key, manifest=json.dumps(d2).encode()), trusted)
    # a tensor missing from the blob
    t2 = dict(t)
    del t2["prefix"]
    with pytest.raises(AdapterError, match="do not match the manifest"):
        open_package(_resign(blob, key, tensors=save(t2)), trusted)
    # non-finite values
    t3 = dict(t)
    t3["prefix"] = t["prefix"].copy()
    t3["prefix"][0, 0] = np.nan
    with pytest.raises(AdapterError, match="non-finite"):
        open_package(_resign(blob, key, tensors=save(t3)), trusted)
    # wrong dtype, garbage tensors, bad manifest fields
    t4 = dict(t)
    t4["prefix"] = t["prefix"].astype(np.float64)
    with pytest.raises(AdapterError):
        open_package(_resign(blob, key, tensors=save(t4)), trusted)
    with pytest.raises(AdapterError, match="not valid safetensors"):
        open_package(_resign(blob, key, tensors=b"\x08" + b"\x00" * 20), trusted)
    for field, value in (
        ("version", 0),
        ("user_id", "a b"),
        ("format", "x"),
        ("extra", 1),
        ("version", True),
        ("privacy", {"epsilon": -1}),
    ):
        d3 = json.loads(json.dumps(doc))
        d3[field] = value
        with pytest.raises(AdapterError, match="manifest"):
            open_package(_resign(blob, key, manifest=json.dumps(d3).encode()), trusted)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", "40"),
        ("steps", 2**40),
        ("accountant", "moments"),
        ("library", ""),
        ("library", "x" * 65),
        ("unit", "session"),
        ("examples_per_unit", 0),
        ("rng", 7),
        ("noise_multiplier", float("nan")),
        ("sample_rate", 1.5),
        ("surprise", 1),
    ],
)
def test_privacy_fields_are_validated(
    key: Ed25519PrivateKey, trusted: dict, field: str, value: object
) -> None:
    # a bad field used to be stored and then fail on read; it is refused on upload now
    blob = seal_package(_fields(), _tensors(), key)
    (m_len,) = struct.unpack(">I", blob[6:10])
    doc = json.loads(blob[10 : 10 + m_len])
    doc["privacy"][field] = value
    with pytest.raises(AdapterError, match="privacy"):
        open_package(_resign(blob, key, manifest=json.dumps(doc).encode()), trusted)


def test_format_1_manifests_are_still_read(key: Ed25519PrivateKey, trusted: dict) -> None:
    blob = seal_package(_fields(), _tensors(), key)
    (m_len,) = struct.unpack(">I", blob[6:10])
    doc = json.loads(blob[10 : 10 + m_len])
    assert doc["format"] == "userlayer.adapter/2" and doc["privacy"]["unit"] == "event"
    doc["format"] = "userlayer.adapter/1"
    for k in ("unit", "examples_per_unit", "rng"):
        del doc["privacy"][k]
    old = _resign(blob, key, manifest=json.dumps(doc).encode())
    rec = open_package(old, trusted).manifest.privacy
    assert rec is not None and rec.unit == "example" and rec.rng == "unrecorded (format 1)"
    assert not rec.private
    doc["privacy"]["unit"] = "event"  # format-2 fields cannot be claimed by a format-1 manifest
    with pytest.raises(AdapterError, match="format-2 fields"):
        open_package(_resign(blob, key, manifest=json.dumps(doc).encode()), trusted)


def test_seal_refuses_bad_tensors(key: Ed25519PrivateKey) -> None:
    with pytest.raises(AdapterError, match="non-finite"):
        seal_package(_fields(), {"prefix": np.array([np.inf], dtype=np.float32)}, key)
    with pytest.raises(AdapterError, match="float32 or float16"):
        seal_package(_fields(), {"prefix": np.array([1], dtype=np.int64)}, key)


def test_signing_key_file(tmp_path: Path) -> None:
    k = Ed25519PrivateKey.generate()
    p = tmp_path / "node.key"
    save_signing_key(k, p)
    assert p.stat().st_mode & 0o777 == 0o600
    assert key_id(load_signing_key(p).public_key()) == key_id(k.public_key())
    with pytest.raises(FileExistsError):
        save_signing_key(k, p)
    (tmp_path / "bad.key").write_text("zz")
    with pytest.raises(AdapterError, match="not a signing key"):
        load_signing_key(tmp_path / "bad.key")


def test_peft_export_loads_on_the_torch_base(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    acfg = AdapterConfig(
        rank=4, alpha=8.0, targets=("q", "v", "up", "down"), n_prefix=0, film=False, n_modes=0
    )
    base = Recommender(CFG).eval()
    g = torch.Generator().manual_seed(1)
    ad = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in new_adapter(CFG, acfg, g).items()}
    tokens = torch.tensor([[1, 2, 10, 18, 1, 3, 11, 19, 1]])
    ctx = torch.zeros(1, tokens.shape[1], 7, dtype=torch.long)
    ctx[:, :, 0] = 1
    rows = RowAdapters(acfg, torch.tensor([True]), {k: v[None] for k, v in ad.items()})
    ours, _ = base(tokens, ctx, rows)
    out = to_peft({k: v.numpy() for k, v in ad.items()}, acfg.to_dict(), tmp_path / "peft")
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    theirs, _ = model(tokens, ctx)
    base_only, _ = base(tokens, ctx)
    assert not torch.allclose(ours, base_only, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_favourites_round_trip_and_are_validated(key: Ed25519PrivateKey, trusted: dict) -> None:
    favs = ("i7", "sku:00-12", "i3")
    pkg = open_package(seal_package(_fields(favourites=favs), _tensors(), key), trusted)
    assert pkg.manifest.favourites == favs
    none = open_package(seal_package(_fields(), _tensors(), key), trusted)
    assert none.manifest.favourites == ()
    assert "favourites" not in json.loads(none.manifest.to_json())  # absent when empty
    good = json.loads(pkg.manifest.to_json())
    for bad in (["i1"] * 2, [f"i{k}" for k in range(65)], ["a b"], [""], [3], "i1", ["x" * 129]):
        doc = {**good, "favourites": bad}
        with pytest.raises(AdapterError, match="favourites"):
            type(pkg.manifest).from_json(json.dumps(doc).encode())
    legacy = {**good, "format": "userlayer.adapter/1", "privacy": None}
    with pytest.raises(AdapterError, match="favourites"):  # not part of format 1
        type(pkg.manifest).from_json(json.dumps(legacy).encode())
