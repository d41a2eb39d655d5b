"""Server side of a round: validation, poisoned replies, drop-outs, DP accounting, resume.

DP regressions: the server's noise and node sampling came from generators seeded with the
config seed and the round (replayable by anyone who read the code), the DP mean divided by
the number of valid replies (data-dependent), and two replies for one user both counted.

Security regressions: any enrolled key could sign a package for any (service, user) and the
import then enrolled it for the victim; an invalid user id aborted the round; what rounds
wrote stayed on disk after the user was deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.fl.aggregation import AggregationConfig, aggregate_updates, clip_update
from userlayer.cloud.fl.rounds import Reply, RoundConfig, RoundServer
from userlayer.cloud.fl.state import ServerState
from userlayer.cloud.registry import AdapterRegistry
from userlayer.sdk.adapter import PrivacyRecord, key_id, seal_package
from userlayer.sdk.model import AdapterConfig, ModelConfig, adapter_shapes, new_adapter
from userlayer.sdk.privacy import SeededRandom, node_probability

CFG = ModelConfig(level_sizes=(8, 8), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
ACFG = AdapterConfig(rank=2)
SHAPES = adapter_shapes(CFG, ACFG)
FP = "00112233aabbccdd"


KEYS: dict[str, Ed25519PrivateKey] = {}


def _server(tmp: Path, **over: object) -> RoundServer:
    kw: dict[str, object] = {"rounds": 3, "users_per_round": 4, "min_replies": 2}
    kw.update(over)
    init = new_adapter(CFG, ACFG, torch.Generator().manual_seed(0))
    reg = AdapterRegistry(tmp / "reg" / "registry.db", FP, SHAPES)
    return RoundServer(RoundConfig(**kw), init, reg, tmp / "state")  # type: ignore[arg-type]


def _own_key(server: RoundServer, user: str) -> Ed25519PrivateKey:
    """The user's key, enrolled for them (as their service backend does through the API)."""
    key = KEYS.setdefault(user, Ed25519PrivateKey.generate())
    server.registry.enroll("kuper", user, key.public_key())
    return key


def _reply(
    server: RoundServer,
    user: str,
    rnd: int,
    key: Ed25519PrivateKey | None = None,
    step: float = 0.01,
    **over: object,
) -> Reply:
    key = key or _own_key(server, user)
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
    s = _server(tmp_path)
    before = s.state.copy_shared()
    good = [_reply(s, f"u{i}", 1) for i in range(3)]
    huge = _reply(s, "big", 1, step=1e4)
    nan = _reply(s, "nan", 1)
    assert nan.arrays is not None
    nan.arrays["prefix"] = nan.arrays["prefix"].clone()
    nan.arrays["prefix"][0, 0] = float("nan")
    shape = _reply(s, "shape", 1)
    assert shape.arrays is not None
    shape.arrays["prefix"] = torch.zeros(5, 16)
    _own_key(s, "forged")
    forged = _reply(s, "forged", 1, Ed25519PrivateKey.generate())  # not the user's key
    stale = _reply(s, "stale", 0 + 2)  # package version of another round
    _own_key(s, "victim")
    swapped = _reply(s, "victim", 1, packages=_reply(s, "other", 1).packages)
    summary = s.process(1, 9, [*good, huge, nan, shape, forged, stale, swapped], population=100)
    assert summary["valid"] == 3 and summary["rejected"] == 6 and summary["aggregated"]
    reasons = {r["user_id"]: r["reason"] for r in s.registry.rejected()}
    assert "exceeds" in reasons["big"] and "non-finite" in reasons["nan"]
    assert "shape" in reasons["shape"] and "not a trusted key" in reasons["forged"]
    assert "version 2" in reasons["stale"] and "not a trusted key" in reasons["victim"]
    assert s.registry.users("kuper") == ["u0", "u1", "u2"]  # only valid packages stored
    assert s.registry.versions("kuper", "u0") == [1]
    assert any(not torch.equal(before[k], s.state.shared[k]) for k in before)
    # the shared part moved by at most 3 clips (+ noise) over the expected 4 users
    delta = {k: s.state.shared[k] - before[k] for k in before}
    _, norm = clip_update(delta, 1.0)
    assert norm < 3 * 0.5 / 4 + 6 * 0.5 / 4 * sum(v.numel() for v in before.values()) ** 0.5


def test_dropouts_and_too_few_replies(tmp_path: Path) -> None:
    s = _server(tmp_path, aggregation=AggregationConfig(noise_multiplier=0.0))  # no DP claim
    before = s.state.copy_shared()
    replies = [
        _reply(s, "u0", 1),
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
        [_reply(s, "u0", 2), _reply(s, "u1", 2), Reply(node=5, error="drop")],
        population=10,
    )
    assert summary["aggregated"] and summary["dropped"] == 2
    with pytest.raises(CloudError, match="out of order"):
        s.process(2, 4, [], population=10)


def test_a_dp_round_always_releases_even_without_valid_replies(tmp_path: Path) -> None:
    # skipping the release when few users replied would make the release depend on the data
    s = _server(tmp_path)
    before = s.state.copy_shared()
    summary = s.process(1, 4, [Reply(node=5, error="drop")], population=10)
    assert summary["aggregated"] and summary["valid"] == 0 and summary["epsilon"] > 0
    assert all(not torch.equal(before[k], s.state.shared[k]) for k in before)  # noise only


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_per_round_equals_the_accountant(tmp_path: Path, accountant: str) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    from userlayer.sdk.privacy import RDP_ORDERS

    s = _server(
        tmp_path, aggregation=AggregationConfig(noise_multiplier=1.2), accountant=accountant
    )
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    kw = {"eps_error": 0.01} if accountant == "prv" else {"alphas": list(RDP_ORDERS)}
    for rnd in (1, 2):
        summary = s.process(rnd, 4, [_reply(s, f"u{i}", rnd) for i in range(3)], population=40)
        acc.step(noise_multiplier=1.2, sample_rate=4 / 40)  # users_per_round / population
        assert summary["epsilon"] == pytest.approx(acc.get_epsilon(1e-5, **kw), rel=1e-9)
        assert summary["accountant"] == accountant and summary["sample_rate"] == 0.1
    assert s.epsilon(40) == pytest.approx(acc.get_epsilon(1e-5, **kw), rel=1e-9)


def test_server_randomness_is_fresh_and_a_seed_is_a_labelled_hook(tmp_path: Path) -> None:
    shared = []
    for i, seed in enumerate((None, None, 3, 3)):
        s = _server(tmp_path / str(i), seed=seed)
        ups = [_reply(s, f"u{j}", 1) for j in range(3)]
        summary = s.process(1, 4, ups, population=40)
        assert summary["rng"] == ("os-csprng" if seed is None else "seeded:3 (not private)")
        shared.append(s.state.shared["prefix"])
    assert not torch.equal(shared[0], shared[1])  # same config, same replies: fresh noise
    assert torch.equal(shared[2], shared[3])  # the seed hook replays it (not private)


def test_the_dp_mean_divides_by_the_expected_users(tmp_path: Path) -> None:
    agg = AggregationConfig(clip=10.0, noise_multiplier=1.0)
    s = _server(tmp_path, seed=9, aggregation=agg)
    before = s.state.copy_shared()
    replies = [_reply(s, f"u{i}", 1) for i in range(3)]  # 3 replied, 4 expected
    s.process(1, 4, replies, population=40)
    noise = SeededRandom(9)  # no nodes were sampled from it: the noise is its first draw
    total = {
        k: sum((r.arrays[k] - before[k] for r in replies), torch.zeros_like(before[k]))
        for k in before
    }  # type: ignore[index]
    for k in sorted(before):  # regenerate the seeded noise in the server's order
        z = torch.from_numpy(noise.gaussian(tuple(before[k].shape), 1.0 * 10.0)).float()
        want = before[k] + (total[k] + z) / (0.1 * 40)
        torch.testing.assert_close(s.state.shared[k], want, atol=1e-5, rtol=1e-5)


def test_one_reply_per_user_and_round(tmp_path: Path) -> None:
    s = _server(tmp_path)
    first = _reply(s, "u0", 1)
    again = _reply(s, "u0", 1, step=0.05, node=99)
    summary = s.process(1, 4, [first, again, _reply(s, "u1", 1)], population=10)
    assert summary["valid"] == 2 and summary["rejected"] == 1
    assert "duplicate reply for user 'u0'" in s.registry.rejected()[0]["reason"]


def test_a_node_cannot_write_adapters_for_another_user(tmp_path: Path) -> None:
    """Defect: any enrolled key could sign for any (service, user); the import then enrolled
    the attacker's key for the victim."""
    s = _server(tmp_path)
    mallory = _own_key(s, "mallory")  # a legitimate user of some node, with an enrolled key
    _own_key(s, "alice")
    forged_alice = _reply(s, "alice", 1, mallory)  # signed by mallory, claims alice
    forged_bob = _reply(s, "bob", 1, mallory)  # bob has no key enrolled at all
    summary = s.process(1, 4, [forged_alice, forged_bob, _reply(s, "mallory", 1)], population=10)
    assert summary["valid"] == 1 and summary["rejected"] == 2
    assert s.registry.versions("kuper", "alice") == [] == s.registry.versions("kuper", "bob")
    assert s.registry.users("kuper") == ["mallory"]
    reasons = {r["user_id"]: r["reason"] for r in s.registry.rejected()}
    assert "not a trusted key" in reasons["alice"] and "enrolled signer" in reasons["bob"]
    # no key was enrolled from a package
    assert s.registry.signers.list("kuper", "bob") == []
    assert s.registry.signers.list("kuper", "alice") == [key_id(KEYS["alice"].public_key())]


def test_bad_user_ids_and_refused_packages_do_not_abort_the_round(tmp_path: Path) -> None:
    """Defect: an invalid user id (a path) or a refused write aborted the round before its
    checkpoint, repeatably, by one node."""
    s = _server(tmp_path)
    bad = [
        Reply(node=3, user=u, arrays=None, packages={"kuper": b"x"}) for u in ("../x", "a" * 200)
    ]
    s.registry.put("kuper", "u1", _reply(s, "u1", 7).packages["kuper"])  # newer than round 1
    summary = s.process(1, 4, [*bad, _reply(s, "u0", 1), _reply(s, "u1", 1)], population=10)
    assert summary["rejected"] == 2 and summary["valid"] == 2 and summary["stored"] == 1
    assert s.state.round == 1  # checkpointed
    assert s.registry.versions("kuper", "u0") == [1] and s.registry.versions("kuper", "u1") == [7]
    reasons = [r["reason"] for r in s.registry.rejected()]
    assert sum("invalid user id" in r for r in reasons) == 2
    assert any("not newer" in r for r in reasons)  # the refused write is logged


def test_deleting_a_user_deletes_what_rounds_wrote(tmp_path: Path) -> None:
    """Defect: DELETE left the rounds' packages on disk (unencrypted) and the next import
    brought them back."""
    s = _server(tmp_path)
    _own_key(s, "gone")
    bad = _reply(s, "gone", 1, step=1e4)  # refused: its rejection is logged under the user
    s.process(1, 4, [_reply(s, "gone", 1), bad, _reply(s, "kept", 1)], population=10)
    assert s.registry.versions("kuper", "gone") == [1]
    assert any(r["user_id"] == "gone" for r in s.registry.rejected())
    assert s.registry.delete_user("kuper", "gone") == 1
    assert s.registry.versions("kuper", "gone") == [] and s.registry.get("kuper", "gone") is None
    assert all(r["user_id"] != "gone" for r in s.registry.rejected())
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(b"gone" not in p.read_bytes() for p in files)  # registry included
    s2 = _server(tmp_path)  # a restarted server brings nothing back
    assert s2.registry.versions("kuper", "gone") == []


def test_a_user_replies_from_one_node_only(tmp_path: Path) -> None:
    """Defect (review): a user enrolled on two nodes was sampled by both (twice the rate)."""
    s = _server(tmp_path)
    s.process(1, 4, [_reply(s, "u0", 1, node=7)], population=10)
    summary = s.process(2, 4, [_reply(s, "u0", 2, node=8)], population=10)
    assert summary["valid"] == 0 and summary["rejected"] == 1
    assert "hosted by node 7" in s.registry.rejected()[0]["reason"]


def test_the_shared_part_also_states_its_epsilon_without_amplification(tmp_path: Path) -> None:
    """Defect (review): a service backend sees which rounds its users' packages came from, so
    against it the sampling does not amplify; the summary says what holds then."""
    s = _server(tmp_path, aggregation=AggregationConfig(noise_multiplier=2.0))
    summary = s.process(1, 4, [_reply(s, "u0", 1)], population=40)
    from userlayer.sdk.privacy import Mechanism, epsilon

    assert summary["epsilon_participation_known"] == pytest.approx(
        epsilon([Mechanism(2.0, 1.0, 1)], 1e-5), rel=1e-9
    )
    assert summary["epsilon_participation_known"] > summary["epsilon"]


def test_restarted_server_resumes(tmp_path: Path) -> None:
    s = _server(tmp_path)
    s.process(1, 4, [_reply(s, f"u{i}", 1) for i in range(3)], population=10)
    shared = s.state.copy_shared()
    s2 = _server(tmp_path)  # a new process on the same directories
    assert s2.resumed and s2.state.round == 1 and not s2.done
    assert all(torch.equal(shared[k], s2.state.shared[k]) for k in shared)
    assert s2.state.dp_history == s.state.dp_history
    s2.process(2, 4, [_reply(s2, f"u{i}", 2) for i in range(3)], population=10)
    s2.process(3, 4, [_reply(s2, f"u{i}", 3) for i in range(3)], population=10)
    assert s2.done and s2.registry.versions("kuper", "u1") == [1, 2, 3]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["round"] == 3 and len(state["rounds"]) == 3
    assert len(list((tmp_path / "state").glob("shared-*.safetensors"))) == 1


def test_server_dying_before_its_checkpoint_reruns_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _server(tmp_path)
    s.process(1, 4, [_reply(s, f"u{i}", 1) for i in range(3)], population=10)
    shared1 = s.state.copy_shared()

    def die(*_: object) -> None:
        raise KeyboardInterrupt("the server died")

    monkeypatch.setattr(ServerState, "save", die)
    with pytest.raises(KeyboardInterrupt):  # round 2's packages are stored, no checkpoint
        s.process(2, 4, [_reply(s, f"u{i}", 2) for i in range(3)], population=10)
    assert s.registry.versions("kuper", "u0") == [1, 2]
    monkeypatch.undo()
    s2 = _server(tmp_path)  # restarted: back at the checkpoint of round 1
    assert s2.state.round == 1 and all(torch.equal(shared1[k], s2.state.shared[k]) for k in shared1)
    assert s2.registry.versions("kuper", "u0") == [1]  # the unfinished attempt is discarded
    # round 2 runs again (u0 drops out this time) and stores exactly its valid replies
    replies = [Reply(node=0, user="u0", error="drop"), _reply(s2, "u1", 2)]
    summary = s2.process(2, 4, [*replies, _reply(s2, "u2", 2, step=0.02)], population=10)
    assert summary["valid"] == 2 and summary["dropped"] == 2  # u0 and the unanswered node
    assert [s2.registry.versions("kuper", f"u{i}") for i in range(3)] == [[1], [1, 2], [1, 2]]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [1, 2] and len(state["dp_history"]) == 2


def test_users_are_sampled_independently_and_big_node_ids_work(tmp_path: Path) -> None:
    s = _server(tmp_path, users_per_round=3)
    ids = [2**63 + 5, 2**64 - 1, 7, 11]
    hosted = {2**63 + 5: 1, 2**64 - 1: 4, 7: 1, 11: 2}
    population = sum(hosted.values())  # 8 users: q = 3/8
    counts = dict.fromkeys(ids, 0)
    rounds = 4000
    for _ in range(rounds):
        for n in s.sample(ids, population, hosted):
            counts[n] += 1
    for n in ids:  # a node is selected when at least one of its users is sampled
        p = node_probability(3 / 8, hosted[n])
        assert abs(counts[n] / rounds - p) < 4 * (p * (1 - p) / rounds) ** 0.5, n


def test_aggregation_methods() -> None:
    ups = [{"w": torch.full((4,), 0.1)} for _ in range(8)] + [{"w": torch.full((4,), 50.0)}]
    clipped, norm = clip_update(ups[-1], 1.0)
    assert norm == pytest.approx(100.0) and float(clipped["w"].norm()) == pytest.approx(1.0)
    zero, n0 = clip_update({"w": torch.zeros(3)}, 1.0)
    assert n0 == 0 and torch.equal(zero["w"], torch.zeros(3))  # no division by zero
    shapes = {"w": (4,)}
    med = aggregate_updates(ups, AggregationConfig(method="median", clip=1.0), shapes)
    assert torch.allclose(med["w"], torch.full((4,), 0.1))
    tm = aggregate_updates(
        ups, AggregationConfig(method="trimmed_mean", clip=1.0, trim=0.2), shapes
    )
    assert torch.allclose(tm["w"], torch.full((4,), 0.1))
    mean = aggregate_updates(ups, AggregationConfig(clip=1.0, noise_multiplier=0.0), shapes)
    assert float(mean["w"][0]) > 0.1  # the outlier moves the plain mean (by at most clip/n)
    from userlayer.sdk.privacy import SecureRandom

    big = [{"w": torch.zeros(20000)} for _ in range(4)]
    dp = AggregationConfig(clip=2.0, noise_multiplier=1.5)
    noisy = aggregate_updates(big, dp, {"w": (20000,)}, SecureRandom(), expected=5.0)
    assert float(noisy["w"].std()) == pytest.approx(1.5 * 2.0 / 5, rel=0.03)
    with pytest.raises(CloudError, match="expected users"):
        aggregate_updates(big, dp, {"w": (20000,)}, SecureRandom())
    with pytest.raises(CloudError):
        AggregationConfig(method="krum")
    with pytest.raises(CloudError, match="no updates"):
        aggregate_updates([], AggregationConfig(noise_multiplier=0.0), shapes)
    with pytest.raises(CloudError, match="other tensors"):
        aggregate_updates([{"w": torch.zeros(3)}], AggregationConfig(noise_multiplier=0.0), shapes)
