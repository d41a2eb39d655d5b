"""Server side of a round: validation, poisoned replies, drop-outs, DP accounting, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.fl.aggregation import AggregationConfig, aggregate_updates, clip_update
from userlayer.cloud.fl.registry_fs import FileRegistry
from userlayer.cloud.fl.rounds import Reply, RoundConfig, RoundServer
from userlayer.cloud.fl.state import ServerState
from userlayer.sdk.adapter import PrivacyRecord, key_id, seal_package
from userlayer.sdk.model import AdapterConfig, ModelConfig, adapter_shapes, new_adapter

CFG = ModelConfig(level_sizes=(8, 8), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
ACFG = AdapterConfig(rank=2)
SHAPES = adapter_shapes(CFG, ACFG)
FP = "00112233aabbccdd"


def _server(tmp: Path, **over: object) -> RoundServer:
    kw: dict[str, object] = {"rounds": 3, "users_per_round": 4, "min_replies": 2}
    kw.update(over)
    init = new_adapter(CFG, ACFG, torch.Generator().manual_seed(0))
    return RoundServer(
        RoundConfig(**kw),
        FP,
        SHAPES,
        init,
        FileRegistry(tmp / "reg"),  # type: ignore[arg-type]
        tmp / "state",
        tmp / "trust",
    )


def _enroll(tmp: Path, key: Ed25519PrivateKey) -> None:
    (tmp / "trust").mkdir(exist_ok=True)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (tmp / "trust" / f"{key_id(key.public_key())}.pub").write_text(raw.hex())


def _reply(
    server: RoundServer,
    user: str,
    rnd: int,
    key: Ed25519PrivateKey,
    step: float = 0.01,
    **over: object,
) -> Reply:
    g = torch.Generator().manual_seed(hash(user) % 1000)
    arrays = {
        k: v + step * torch.randn(v.shape, generator=g) for k, v in server.state.shared.items()
    }
    pkg = seal_package(
        {
            "base_fingerprint": FP,
            "adapter_config": ACFG.to_dict(),
            "user_id": user,
            "service": "kuper",
            "version": rnd,
            "privacy": PrivacyRecord(1.5, 1e-5, "rdp", "opacus 1.6.0"),
        },
        {k: v.numpy() for k, v in arrays.items()},
        key,
    )
    r = Reply(
        node=hash(user) % 97,
        user=user,
        arrays=arrays,
        packages={"kuper": pkg},
        metrics={"loss": 1.0},
    )
    for k, v in over.items():
        setattr(r, k, v)
    return r


def test_poisoned_replies_are_rejected_and_the_round_completes(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    _enroll(tmp_path, key)
    s = _server(tmp_path)
    before = s.state.copy_shared()
    good = [_reply(s, f"u{i}", 1, key) for i in range(3)]
    huge = _reply(s, "big", 1, key, step=1e4)
    nan = _reply(s, "nan", 1, key)
    assert nan.arrays is not None
    nan.arrays["prefix"] = nan.arrays["prefix"].clone()
    nan.arrays["prefix"][0, 0] = float("nan")
    shape = _reply(s, "shape", 1, key)
    assert shape.arrays is not None
    shape.arrays["prefix"] = torch.zeros(5, 16)
    forged = _reply(s, "forged", 1, Ed25519PrivateKey.generate())  # key not enrolled
    stale = _reply(s, "stale", 0 + 2, key)  # package version of another round
    swapped = _reply(s, "victim", 1, key, packages=_reply(s, "other", 1, key).packages)
    summary = s.process(1, 9, [*good, huge, nan, shape, forged, stale, swapped], population=100)
    assert summary["valid"] == 3 and summary["rejected"] == 6 and summary["aggregated"]
    reasons = {r["user"]: r["reason"] for r in s.registry.rejected()}
    assert "exceeds" in reasons["big"] and "non-finite" in reasons["nan"]
    assert "shape" in reasons["shape"] and "not a trusted key" in reasons["forged"]
    assert "version 2" in reasons["stale"] and "not 'victim'" in reasons["victim"]
    assert s.registry.users("kuper") == ["u0", "u1", "u2"]  # only valid packages stored
    assert s.registry.versions("kuper", "u0") == [1]
    assert any(not torch.equal(before[k], s.state.shared[k]) for k in before)
    # the shared part moved by at most clip (+ noise): the huge update did not get in
    delta = {k: s.state.shared[k] - before[k] for k in before}
    _, norm = clip_update(delta, 1.0)
    assert norm < 0.5 + 6 * 0.5 / 3 * sum(v.numel() for v in before.values()) ** 0.5


def test_dropouts_and_too_few_replies(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    _enroll(tmp_path, key)
    s = _server(tmp_path)
    before = s.state.copy_shared()
    replies = [
        _reply(s, "u0", 1, key),
        Reply(node=5, error="simulated drop-out"),
        Reply(node=6, error="timeout"),
    ]
    summary = s.process(1, 4, replies, population=10)  # one sampled node never answered
    assert summary["dropped"] == 3 and summary["valid"] == 1 and not summary["aggregated"]
    assert all(torch.equal(before[k], s.state.shared[k]) for k in before)
    assert s.registry.versions("kuper", "u0") == [1]  # its personal adapter is still kept
    summary = s.process(
        2,
        4,
        [_reply(s, "u0", 2, key), _reply(s, "u1", 2, key), Reply(node=5, error="drop")],
        population=10,
    )
    assert summary["aggregated"] and summary["dropped"] == 2
    with pytest.raises(CloudError, match="out of order"):
        s.process(2, 4, [], population=10)


def test_epsilon_per_round_equals_the_accountant(tmp_path: Path) -> None:
    from opacus.accountants import RDPAccountant

    key = Ed25519PrivateKey.generate()
    _enroll(tmp_path, key)
    s = _server(tmp_path, aggregation=AggregationConfig(noise_multiplier=1.2))
    acc = RDPAccountant()
    for rnd in (1, 2):
        summary = s.process(rnd, 4, [_reply(s, f"u{i}", rnd, key) for i in range(4)], population=40)
        acc.step(noise_multiplier=1.2, sample_rate=4 / 40)
        assert summary["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert s.epsilon(40) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_restarted_server_resumes(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    _enroll(tmp_path, key)
    s = _server(tmp_path)
    s.process(1, 4, [_reply(s, f"u{i}", 1, key) for i in range(3)], population=10)
    shared = s.state.copy_shared()
    s2 = _server(tmp_path)  # a new process on the same directories
    assert s2.resumed and s2.state.round == 1 and not s2.done
    assert all(torch.equal(shared[k], s2.state.shared[k]) for k in shared)
    assert s2.state.dp_history == s.state.dp_history
    s2.process(2, 4, [_reply(s2, f"u{i}", 2, key) for i in range(3)], population=10)
    s2.process(3, 4, [_reply(s2, f"u{i}", 3, key) for i in range(3)], population=10)
    assert s2.done and s2.registry.versions("kuper", "u1") == [1, 2, 3]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["round"] == 3 and len(state["rounds"]) == 3
    assert len(list((tmp_path / "state").glob("shared-*.safetensors"))) == 1


def test_server_dying_before_its_checkpoint_reruns_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.generate()
    _enroll(tmp_path, key)
    s = _server(tmp_path)
    s.process(1, 4, [_reply(s, f"u{i}", 1, key) for i in range(3)], population=10)
    shared1 = s.state.copy_shared()

    def die(*_: object) -> None:
        raise KeyboardInterrupt("the server died")

    monkeypatch.setattr(ServerState, "save", die)
    with pytest.raises(KeyboardInterrupt):  # round 2's packages are stored, no checkpoint
        s.process(2, 4, [_reply(s, f"u{i}", 2, key) for i in range(3)], population=10)
    assert s.registry.versions("kuper", "u0") == [1, 2]
    monkeypatch.undo()
    s2 = _server(tmp_path)  # restarted: back at the checkpoint of round 1
    assert s2.state.round == 1 and all(torch.equal(shared1[k], s2.state.shared[k]) for k in shared1)
    assert s2.registry.versions("kuper", "u0") == [1]  # the unfinished attempt is discarded
    # round 2 runs again (u0 drops out this time) and stores exactly its valid replies
    replies = [Reply(node=0, user="u0", error="drop"), _reply(s2, "u1", 2, key)]
    summary = s2.process(2, 4, [*replies, _reply(s2, "u2", 2, key, step=0.02)], population=10)
    assert summary["valid"] == 2 and summary["dropped"] == 2  # u0 and the unanswered node
    assert [s2.registry.versions("kuper", f"u{i}") for i in range(3)] == [[1], [1, 2], [1, 2]]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [1, 2] and len(state["dp_history"]) == 2


def test_sampling_is_seeded_and_handles_big_node_ids(tmp_path: Path) -> None:
    s = _server(tmp_path)
    ids = [2**63 + 5, 2**64 - 1, 7, 11, 13, 17]
    a, b = s.sample(ids, 1), s.sample(ids, 1)
    assert a == b and len(a) == 4 and set(a) <= set(ids)
    assert s.sample(ids, 2) != a or len(ids) == 4


def test_aggregation_methods() -> None:
    ups = [{"w": torch.full((4,), 0.1)} for _ in range(8)] + [{"w": torch.full((4,), 50.0)}]
    clipped, norm = clip_update(ups[-1], 1.0)
    assert norm == pytest.approx(100.0) and float(clipped["w"].norm()) == pytest.approx(1.0)
    zero, n0 = clip_update({"w": torch.zeros(3)}, 1.0)
    assert n0 == 0 and torch.equal(zero["w"], torch.zeros(3))  # no division by zero
    med = aggregate_updates(ups, AggregationConfig(method="median", clip=1.0))
    assert torch.allclose(med["w"], torch.full((4,), 0.1))
    tm = aggregate_updates(ups, AggregationConfig(method="trimmed_mean", clip=1.0, trim=0.2))
    assert torch.allclose(tm["w"], torch.full((4,), 0.1))
    mean = aggregate_updates(ups, AggregationConfig(clip=1.0, noise_multiplier=0.0))
    assert float(mean["w"][0]) > 0.1  # the outlier moves the plain mean (by at most clip/n)
    g = torch.Generator().manual_seed(0)
    big = [{"w": torch.zeros(20000)} for _ in range(4)]
    noisy = aggregate_updates(big, AggregationConfig(clip=2.0, noise_multiplier=1.5), g)
    assert float(noisy["w"].std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.03)
    with pytest.raises(CloudError):
        AggregationConfig(method="krum")
    with pytest.raises(CloudError, match="no updates"):
        aggregate_updates([], AggregationConfig())
