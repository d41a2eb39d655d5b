"""Cross-service consent: a user decides which services' events shape which service's adapter."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.edge.conftest import make_events
from userlayer.edge.consent import SETTING, Consent
from userlayer.edge.exceptions import EdgeError
from userlayer.edge.local import LocalTrainConfig, train_and_seal
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.store import ProfileStore
from userlayer.sdk.model import AdapterConfig, ModelConfig, Recommender, new_adapter
from userlayer.sdk.schemas import Service
from userlayer.sdk.semantic_ids import SemanticIdTable

CFG = ModelConfig(level_sizes=(8, 8), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
ACFG = AdapterConfig(rank=2)
NOW = datetime(2024, 3, 10, tzinfo=UTC)


def test_default_lets_every_service_shape_every_adapter() -> None:
    c = Consent()
    every = ("kuper", "megamarket", "samokat")
    assert c.allowed("kuper") == every
    assert c.groups(["kuper", "samokat"]) == [(every, ["kuper", "samokat"])]


def test_restricted_groups_and_round_trip() -> None:
    c = Consent({"megamarket": ["megamarket"], "kuper": []})
    assert c.allowed("megamarket") == ("megamarket",)
    assert c.groups(["kuper", "megamarket", "samokat"]) == [
        (("kuper", "megamarket", "samokat"), ["samokat"]),
        (("megamarket",), ["megamarket"]),
    ]  # kuper's adapter is never trained
    assert Consent.from_dict(c.to_dict()) == c
    assert Consent.from_dict(None) == Consent()
    with pytest.raises(EdgeError, match="unknown service"):
        Consent({"ozon": ["samokat"]})
    with pytest.raises(EdgeError, match="not a consent document"):
        Consent.from_dict({"sources": "all"})


def _train(events: list, consent: Consent) -> dict[str, dict[str, torch.Tensor]]:  # type: ignore[type-arg]
    items = {f"{p}{k}": (k // 8 + 4 * j, k % 8) for j, p in enumerate("sm") for k in range(32)}
    table = SemanticIdTable(
        codes=items, services=dict.fromkeys(items, Service.SAMOKAT), level_sizes=(8, 8)
    )
    torch.manual_seed(0)
    model = Recommender(CFG).eval()
    ledger = PrivacyLedger(":memory:", secrets.token_bytes(32), budget=100.0)
    res = train_and_seal(
        model, table, ACFG, events, new_adapter(CFG, ACFG), LocalTrainConfig(epochs=2, seed=3),
        ledger, "alice", 1, "fp", Ed25519PrivateKey.generate(), now=NOW, consent=consent,
    )  # fmt: skip
    assert set(res.packages) == set(res.adapters)
    return res.adapters


def test_restricted_adapter_never_sees_other_services_events() -> None:
    # the seed hook makes training replayable, so any influence of an event shows
    grocery = make_events("alice", 20, "samokat", item_prefix="s")
    market = make_events("alice", 12, "megamarket", start_day=3, item_prefix="m")
    consent = Consent({"megamarket": ["megamarket"]})
    a = _train([*grocery, *market], consent)
    assert set(a) == {"samokat", "megamarket", "kuper"}  # every service, whatever the events
    other = [grocery[0].model_copy(update={"item_id": "s31"}), *grocery[1:]]
    b = _train([*other, *market], consent)
    assert torch.equal(a["megamarket"]["prefix"], b["megamarket"]["prefix"])  # no influence
    assert not torch.equal(a["samokat"]["prefix"], b["samokat"]["prefix"])  # cross-service
    # without the restriction the grocery event shapes Megamarket's adapter too
    c, d = _train([*grocery, *market], Consent()), _train([*other, *market], Consent())
    assert not torch.equal(c["megamarket"]["prefix"], d["megamarket"]["prefix"])


def test_consent_is_stored_encrypted_with_the_profile(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "s.db") as store:
        store.set_setting("alice", SETTING, Consent({"kuper": ["kuper"]}).to_dict())
        assert Consent.from_dict(store.setting("alice", SETTING)) == Consent({"kuper": ["kuper"]})
        assert store.setting("bob", SETTING) is None
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*"))
        assert b"kuper" not in raw and b"alice" not in raw
        store.forget("alice")
        assert store.setting("alice", SETTING) is None
