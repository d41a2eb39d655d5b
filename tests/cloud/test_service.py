"""Serving across replicas: deletions and returning users are seen at the next request.

Defects (issue 18): the RAM tier and the engine slots were keyed by version alone, so a
replica kept serving a user deleted through another replica until its cache aged out, and a
user deleted and back with a new adapter under a reused version number got the old one. A
batch holding more distinct users than slots could silently serve a reloaded slot.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.cloud.registry import AdapterRegistry, RegistryError
from userlayer.cloud.service import NO_ADAPTER, Metrics, Serving
from userlayer.sdk.adapter import PrivacyRecord, seal_package
from userlayer.sdk.api import RecommendRequest
from userlayer.tools.bench.adapters import random_adapter


def _replica(model: Path, db: Path, slots: int = 4) -> Serving:
    e = Engine(model, EngineConfig(backend="torch", slots=slots))
    return Serving(e, AdapterRegistry(db, e.fingerprint, e.shapes), Metrics())


def _package(s: Serving, user: str, version: int, seed: int, key: Ed25519PrivateKey) -> bytes:
    fields = {
        "base_fingerprint": s.engine.fingerprint,
        "adapter_config": s.engine.acfg.to_dict(),
        "service": "samokat",
        "user_id": user,
        "version": version,
    }
    return seal_package(fields, random_adapter(s.engine.shapes, seed, scale=0.5), key)


def _served(s: Serving, user: str) -> tuple[bool, list[str], np.ndarray | None]:
    (r,) = s.run_batch([RecommendRequest(user_id=user, service="samokat")])
    got = [x for k, x in s.engine.slab._keys.items() if k[:2] == ("samokat", user)]
    prefix = None if not got else s.engine.slab.arrays["prefix"][got[-1]].copy()
    return r.personalized, [i.item_id for i in r.items], prefix


def test_a_user_deleted_elsewhere_is_not_served_and_a_reused_version_is_not_stale(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "registry.db"
    a = _replica(tiny_model_dir, db)
    b = _replica(tiny_model_dir, db)  # another API replica on the same store
    key = Ed25519PrivateKey.generate()
    b.registry.enroll("samokat", "alice", key.public_key())
    b.registry.put("samokat", "alice", _package(b, "alice", 1, seed=1, key=key))
    personalized, _, first = _served(a, "alice")  # replica a loads her adapter (RAM + slot)
    assert personalized and first is not None
    b.registry.delete_user("samokat", "alice")  # deleted through replica b
    (r,) = a.run_batch([RecommendRequest(user_id="alice", service="samokat")])
    assert not r.personalized and r.reason == NO_ADAPTER  # a sees it at once
    # she comes back through b: a new key, a new adapter, the same version number 1
    key2 = Ed25519PrivateKey.generate()
    b.registry.enroll("samokat", "alice", key2.public_key())
    b.registry.put("samokat", "alice", _package(b, "alice", 1, seed=2, key=key2))
    personalized, _, second = _served(a, "alice")
    want = random_adapter(a.engine.shapes, 2, scale=0.5)["prefix"]
    assert personalized and second is not None
    np.testing.assert_array_equal(second, want)  # the new adapter, not the old slot's
    assert not np.array_equal(second, first)
    assert (
        a.registry.get("samokat", "alice").info.sha256
        == b.registry.info(  # type: ignore[union-attr]
            "samokat", "alice"
        ).sha256
    )  # type: ignore[union-attr]


def test_a_batch_never_holds_more_users_than_slots(tiny_model_dir: Path, tmp_path: Path) -> None:
    s = _replica(tiny_model_dir, tmp_path / "r.db", slots=2)
    reqs = [RecommendRequest(user_id=f"u{i}", service="samokat") for i in range(3)]
    with pytest.raises(RegistryError, match="3 distinct users needs as many adapter slots"):
        s.run_batch(reqs)
    assert len(s.run_batch(reqs[:2] + reqs[:1])) == 3  # two users, three rows: fine


def test_a_user_deleted_while_being_fetched_is_not_served(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect (review): the fetch ran outside the lock; a delete landing in between put the
    deleted adapter into a slot and served it after DELETE had returned."""
    s = _replica(tiny_model_dir, tmp_path / "r.db")
    key = Ed25519PrivateKey.generate()
    s.registry.enroll("samokat", "dave", key.public_key())
    s.registry.put("samokat", "dave", _package(s, "dave", 1, seed=3, key=key))
    real = s.registry.get

    def get_then_deleted(service: str, user: str):  # type: ignore[no-untyped-def]
        got = real(service, user)
        s.registry.delete_user(service, user)  # lands while the batch resolves adapters
        return got

    monkeypatch.setattr(s.registry, "get", get_then_deleted)
    (r,) = s.run_batch([RecommendRequest(user_id="dave", service="samokat")])
    assert not r.personalized and r.reason == NO_ADAPTER
    assert not [k for k in s.engine.slab._keys if k[:2] == ("samokat", "dave")]


def test_a_layers_favourites_reach_the_prompt_from_both_registry_tiers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The manifest's favourites are served from the RAM tier and from the store alike."""
    db = tmp_path / "registry.db"
    a = _replica(tiny_model_dir, db)
    key = Ed25519PrivateKey.generate()
    a.registry.enroll("samokat", "bea", key.public_key())
    favs = tuple(sorted(a.engine.table.codes)[:3])
    fields = {
        "base_fingerprint": a.engine.fingerprint,
        "adapter_config": a.engine.acfg.to_dict(),
        "service": "samokat",
        "user_id": "bea",
        "version": 1,
        "favourites": favs,
        "privacy": PrivacyRecord(
            8.0, 1e-5, "prv", "opacus 1.6.0", 1, 0.6, 1.0, 1.0, mechanism="profile"
        ),
    }
    unnoised = seal_package(
        {**fields, "privacy": None}, random_adapter(a.engine.shapes, 4, scale=0.5), key
    )
    with pytest.raises(RegistryError, match="favourites"):  # exact favourites: raw data
        a.registry.put("samokat", "bea", unnoised)
    rec = fields["privacy"]
    assert isinstance(rec, PrivacyRecord)
    for bad in (replace(rec, mechanism="dp-sgd", favourites_noise=0.85), rec):  # no noise: 0
        blob = seal_package(
            {**fields, "privacy": bad}, random_adapter(a.engine.shapes, 4, scale=0.5), key
        )
        with pytest.raises(RegistryError, match="favourites"):
            a.registry.put("samokat", "bea", blob)
    fields["privacy"] = replace(rec, favourites_noise=0.85)
    blob = seal_package(fields, random_adapter(a.engine.shapes, 4, scale=0.5), key)
    a.registry.put("samokat", "bea", blob)
    assert a.registry.get("samokat", "bea").favourites == favs  # type: ignore[union-attr]
    cold = _replica(tiny_model_dir, db)  # another replica: read from the store
    assert cold.registry.get("samokat", "bea").favourites == favs  # type: ignore[union-attr]
    req = RecommendRequest(user_id="bea", service="samokat", session=["x-unknown"])
    (r,) = cold.run_batch([req])
    sha = cold.registry.get("samokat", "bea").info.sha256  # type: ignore[union-attr]
    slot = cold.engine.slab.lookup(("samokat", "bea", sha))
    [expect] = cold.engine.recommend(
        [EngineRequest(service=req.service, context=req.context, session=favs, slot=slot)]
    )
    assert r.personalized and [i.item_id for i in r.items] == [x.item_id for x in expect]
    assert r.ignored_items == ["x-unknown"]  # favourites are never reported as ignored


def test_one_rows_critique_defect_fails_only_that_row_and_safely(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect while one row's critique is applied answers that row with no item (never
    items that might break the critique) and leaves the other rows of the batch alone."""
    s = _replica(tiny_model_dir, tmp_path / "r.db")
    catalog = s.engine.catalog
    assert catalog is not None
    real = catalog.apply

    def apply(c, session):  # type: ignore[no-untyped-def]
        if "boom" in c.text:
            raise RuntimeError("a defect")
        return real(c, session)

    monkeypatch.setattr(catalog, "apply", apply)
    session = [i for i, sv in s.engine.table.services.items() if sv.value == "samokat"][:1]
    reqs = [
        RecommendRequest(user_id="a", service="samokat", session=session, critique="cheaper boom"),
        RecommendRequest(user_id="b", service="samokat", session=session, critique="другой бренд"),
        RecommendRequest(user_id="c", service="samokat", session=session),
    ]
    bad, good, plain = s.run_batch(reqs)
    assert bad.items == [] and bad.critique is not None
    assert bad.critique.flags == ["critique could not be applied: no item"]
    assert good.items and good.critique is not None and good.critique.applied
    assert plain.items and plain.critique is None


def test_the_reference_search_says_it_applies_no_soft_steer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    e = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=4, search="reference"))
    s = Serving(e, AdapterRegistry(tmp_path / "r.db", e.fingerprint, e.shapes), Metrics())
    (r,) = s.run_batch([RecommendRequest(user_id="a", service="samokat", critique="полезнее")])
    assert r.critique is not None and r.critique.steer == []
    assert "soft steer: not applied by the reference search" in r.critique.flags
