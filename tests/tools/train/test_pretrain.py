from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from userlayer.sdk.model import fingerprint, load_model
from userlayer.sdk.model.io import preferred_ranking
from userlayer.tools.data.synth import SynthResult
from userlayer.tools.eval.evaluate import EvalConfig, evaluate
from userlayer.tools.eval.sasrec import SASRecConfig
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import (
    UserSequences,
    build_prompts,
    epoch_batches,
    training_windows,
)
from userlayer.tools.train.pretrain import PretrainConfig, pretrain


def test_leave_one_out_never_trains_on_the_last_items(
    synth_data_dir: Path, small_synth: SynthResult
) -> None:
    from userlayer.sdk import SemanticIdTable

    table = SemanticIdTable.load(synth_data_dir / "sids.json")
    seqs = UserSequences.from_dataset(small_synth.dataset, table)
    for t in seqs.tokens:  # mark the held-out events: they must never reach training
        t[-2:] = 10_000
    tok, _ = training_windows(seqs, 8)
    assert not (tok == 10_000).any()
    n_targets = int((tok == 1).sum())
    assert n_targets >= sum(len(t) - 2 for t in seqs.tokens)  # every other event is used
    seqs = UserSequences.from_dataset(small_synth.dataset, table)
    test = build_prompts(seqs, "test", "full")
    valid = build_prompts(seqs, "valid", "full")
    assert all(p.target == items[-1] for p, items in zip(test, seqs.items, strict=True))
    assert all(p.target == items[-2] for p, items in zip(valid, seqs.items, strict=True))
    private = build_prompts(seqs, "test", "private")
    assert all(p.n_history <= 5 for p in private)
    assert sum(p.n_history for p in private) < sum(p.n_history for p in test)


def test_resume_gives_the_same_weights(tmp_path: Path, synth_data_dir: Path) -> None:
    cfg = PretrainConfig(epochs=2, batch_size=32, checkpoint_every=3, model=TINY)
    straight = pretrain(synth_data_dir, tmp_path / "a", cfg)
    assert straight.finished
    n = straight.steps
    stopped = pretrain(
        synth_data_dir,
        tmp_path / "b",
        PretrainConfig(
            epochs=2, batch_size=32, checkpoint_every=3, max_steps=n // 2 + 1, model=TINY
        ),
    )
    assert not stopped.finished
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = pretrain(synth_data_dir, tmp_path / "b", cfg)
    assert resumed.finished
    assert resumed.fingerprint == straight.fingerprint
    assert resumed.losses == straight.losses
    assert resumed.valid_losses == straight.valid_losses
    assert len(straight.valid_losses) == 2  # one per epoch, the resumed run's restored
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert fingerprint(a) == fingerprint(b)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert straight.losses[-1] < straight.losses[0]
    assert not list((tmp_path / "a").rglob("*.pt")) and not list((tmp_path / "a").rglob("*.bin"))


def test_validation_loss_scores_the_held_out_item(
    tmp_path: Path, synth_data_dir: Path, small_synth: SynthResult
) -> None:
    from userlayer.sdk import SemanticIdTable
    from userlayer.tools.train.examples import pack_scored

    cfg = PretrainConfig(epochs=3, batch_size=32, valid_users=40, model=TINY)
    res = pretrain(synth_data_dir, tmp_path / "m", cfg)
    assert len(res.valid_losses) == 3
    assert res.valid_losses[-1] < res.valid_losses[0]  # it learns something that generalises
    meta = json.loads((tmp_path / "m" / "config.json").read_text("utf-8"))
    assert meta["pretrain"]["valid_losses"] == res.valid_losses
    # the rows end with the validation item's codes: a wrong target scores worse on average
    table = SemanticIdTable.load(synth_data_dir / "sids.json")
    seqs = UserSequences.from_dataset(small_synth.dataset, table)
    prompts = build_prompts(seqs, "valid", "full", max_history=TINY["max_items"] - 1)
    tok, ctx = pack_scored(prompts, table)
    assert tok.shape[1] == max(len(p.tokens) for p in prompts) + table.n_levels
    model = load_model(tmp_path / "m").eval()
    shuffled = [
        replace(p, target=prompts[(i + 7) % len(prompts)].target) for i, p in enumerate(prompts)
    ]
    with torch.no_grad():
        true = model.loss(tok, ctx, reduction="none", last_item_only=True).mean()
        wrong = model.loss(
            *pack_scored(shuffled, table), reduction="none", last_item_only=True
        ).mean()
    assert true < wrong
    with pytest.raises(ToolsError, match="valid_users"):
        PretrainConfig(valid_users=-1)


def test_select_by_ndcg_keeps_the_best_ranking_epoch_and_resumes(
    tmp_path: Path, synth_data_dir: Path, small_synth: SynthResult
) -> None:
    """select="ndcg": every epoch ranks the validation users; the best NDCG@10's weights stay."""
    from userlayer.sdk import SemanticIdTable
    from userlayer.tools.train.pretrain import _validation_prompts, validation_ranks

    cfg = PretrainConfig(epochs=3, batch_size=32, valid_users=60, model=TINY, select="ndcg")
    res = pretrain(synth_data_dir, tmp_path / "a", cfg)
    assert len(res.valid_ranks) == 3 and len(res.valid_losses) == 3
    assert all(0 <= r["N@10"] <= r["R@10"] <= 1 for r in res.valid_ranks)
    ndcg = [r["N@10"] for r in res.valid_ranks]
    assert res.best_epoch == int(np.argmax(ndcg)) + 1
    meta = json.loads((tmp_path / "a" / "config.json").read_text("utf-8"))["pretrain"]
    assert meta["valid_ranks"] == res.valid_ranks and meta["best_epoch"] == res.best_epoch
    # the written model is the kept epoch's: it ranks the same users exactly as it did then
    table = SemanticIdTable.load(synth_data_dir / "sids.json")
    seqs = UserSequences.from_dataset(small_synth.dataset, table)
    prompts = _validation_prompts(seqs, 60, cfg.seed, TINY["max_items"] - 1)
    model = load_model(tmp_path / "a")
    assert validation_ranks(model, table.trie(), prompts) == res.valid_ranks[res.best_epoch - 1]
    # stopped inside the second epoch and resumed: the same figures, the same model
    stop = replace(cfg, max_steps=res.steps // 2 + 1)
    assert not pretrain(synth_data_dir, tmp_path / "b", stop).finished
    with pytest.raises(ToolsError, match="select='ndcg'"):  # one run, one criterion
        pretrain(synth_data_dir, tmp_path / "b", replace(cfg, select="loss"))
    resumed = pretrain(synth_data_dir, tmp_path / "b", cfg)
    assert resumed.valid_ranks == res.valid_ranks and resumed.best_epoch == res.best_epoch
    assert resumed.fingerprint == res.fingerprint
    with pytest.raises(ToolsError, match="select"):
        PretrainConfig(select="recall")


def test_select_by_ndcg_keeps_the_epoch_that_ranked_best_not_the_last_or_the_lowest_loss(
    tmp_path: Path, synth_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scripted NDCG@10 per epoch (0.3, 0.5, 0.4): the model holds epoch 2's weights."""
    from safetensors.torch import load_file

    import userlayer.tools.train.pretrain as pt

    cfg = PretrainConfig(epochs=3, batch_size=32, valid_users=20, model=TINY)
    by_loss = pretrain(synth_data_dir, tmp_path / "loss", cfg)
    script = iter([0.3, 0.5, 0.4])
    monkeypatch.setattr(pt, "validation_ranks", lambda *_: {"R@10": 0.9, "N@10": next(script)})
    res = pretrain(synth_data_dir, tmp_path / "ndcg", replace(cfg, select="ndcg"))
    assert [r["N@10"] for r in res.valid_ranks] == [0.3, 0.5, 0.4] and res.best_epoch == 2
    assert res.losses == by_loss.losses  # ranking after each epoch leaves training alone
    assert res.valid_losses == by_loss.valid_losses
    # epoch 2's weights: those of the same run stopped at the end of epoch 2
    stop = replace(cfg, max_steps=2 * res.steps // 3)
    assert not pretrain(synth_data_dir, tmp_path / "two", stop).finished
    epoch2 = load_file(str(tmp_path / "two" / "checkpoint" / "state.safetensors"))
    kept = load_model(tmp_path / "ndcg").state_dict()
    assert all(torch.equal(v, epoch2[f"model.{k}"]) for k, v in kept.items())
    last = load_file(str(tmp_path / "loss" / "checkpoint" / "state.safetensors"))  # epoch 3's
    assert not all(torch.equal(v, last[f"model.{k}"]) for k, v in kept.items())
    with pytest.raises(ToolsError, match="valid_users"):
        PretrainConfig(select="ndcg", valid_users=0)


def test_pretrain_needs_sids(tmp_path: Path, small_synth: SynthResult) -> None:
    small_synth.dataset.save(tmp_path / "d")
    with pytest.raises(ToolsError, match=r"no sids\.json"):
        pretrain(tmp_path / "d", tmp_path / "m")


def test_evaluate_end_to_end(synth_data_dir: Path, tiny_model_dir: Path) -> None:
    res = evaluate(
        synth_data_dir, tiny_model_dir, EvalConfig(beam=10, sasrec=SASRecConfig(epochs=1))
    )
    assert set(res["results"]) == {"generative", "popularity", "sasrec"}
    for name, by_regime in res["results"].items():
        assert set(by_regime) == {"full", "private"}, name
        for groups in by_regime.values():
            m = groups["all"]
            assert m["n"] == 60
            assert 0 <= m["N@10"] <= m["R@10"] <= 1
            assert m["R@5"] <= m["R@10"]
            assert set(groups) - {"all"} <= {"samokat", "kuper", "megamarket"}


def test_epoch_batches_cover_every_window_once_and_group_lengths() -> None:
    lengths = np.random.default_rng(1).integers(5, 106, size=1000)
    batches = epoch_batches(lengths, 16, seed=3, epoch=2, pool=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))  # each window once per epoch
    again = epoch_batches(lengths, 16, seed=3, epoch=2, pool=8)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))  # resumable
    other = epoch_batches(lengths, 16, seed=3, epoch=3, pool=8)
    assert any((a != b).any() for a, b in zip(batches, other, strict=False))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < np.ptp(lengths) / 4  # batches hold windows of similar length


def test_private_rows_and_profiles_never_see_the_target(synth_data_dir: Path) -> None:
    from userlayer.sdk import SemanticIdTable
    from userlayer.sdk.model.tokens import CTX, FIRST_CODE
    from userlayer.tools.data.format import Dataset
    from userlayer.tools.train.examples import private_rows, profile_inputs

    table = SemanticIdTable.load(synth_data_dir / "sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(synth_data_dir), table)
    pairs = [(u, t) for u in range(5) for t in (1, 7, len(seqs.tokens[u]) - 3)]
    codes, ages, mask = profile_inputs(seqs, pairs)
    tok, _ = private_rows(seqs, pairs)
    for row, (u, t) in enumerate(pairs):
        n = int(mask[row].sum())
        assert n == t  # every event before the cutoff (a year's horizon covers the data)
        assert torch.equal(codes[row, :n], torch.from_numpy(seqs.tokens[u][:t] - FIRST_CODE))
        assert float(ages[row, :n].min()) >= 0
        # the row ends with the target's context and codes: the target is scored, never input
        levels = seqs.n_levels
        assert tok[row, -levels - 1] == CTX and torch.equal(
            tok[row, -levels:], torch.from_numpy(seqs.tokens[u][t])
        )


def test_a_base_with_an_encoder_pretrains_and_reloads(tmp_path: Path, synth_data_dir: Path) -> None:
    out = tmp_path / "m"
    res = pretrain(
        synth_data_dir,
        out,
        PretrainConfig(epochs=1, batch_size=32, model={**TINY, "profile_dim": 8}, min_steps=3),
    )
    model = load_model(out)
    assert model.profile is not None and model.cfg.profile_dim == 8
    assert fingerprint(model) == res.fingerprint
    with pytest.raises(ToolsError, match="profile_absent"):
        PretrainConfig(profile_absent=2.0)


def test_simulated_favourites_are_the_release_and_fit_the_window(synth_data_dir: Path) -> None:
    """Pretraining's favourites are what the edge would release; rows keep the model's window."""
    from userlayer.sdk import SemanticIdTable
    from userlayer.sdk.model.tokens import CTX, ContextVocab
    from userlayer.sdk.privacy import SecureRandom
    from userlayer.sdk.privacy.favourites import FavouritesConfig, select_favourites
    from userlayer.tools.data.format import Dataset
    from userlayer.tools.train.examples import private_rows, session_begin
    from userlayer.tools.train.pretrain import _Catalog

    table = SemanticIdTable.load(synth_data_dir / "sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(synth_data_dir), table)
    cat = _Catalog.of(table, ContextVocab())
    items = sorted(table.codes)
    rng = np.random.default_rng(0)
    pairs = [(u, len(seqs.tokens[u]) - 3) for u in range(20)]
    favs = [cat.favourites(seqs.items[u][:t], 0.0, 10, rng) for u, t in pairs]
    for (u, t), f in zip(pairs, favs, strict=True):
        exact = select_favourites(seqs.items[u][:t], items, 0.0, FavouritesConfig(), SecureRandom())
        assert [items[i] for i in f] == exact
    assert any(len(f) for f in favs)  # the synthetic users repeat items
    before = [cat.steps(f, seqs.ctx[u][t]) for f, (u, t) in zip(favs, pairs, strict=True)]
    step = 1 + seqs.n_levels
    for cap in (None, 6):
        tok, ctx = private_rows(seqs, pairs, before, cap)
        for row, ((u, t), f) in enumerate(zip(pairs, favs, strict=True)):
            n_session = t - session_begin(seqs.times[u], t, seqs.timestamps_real)
            kept = len(f) if cap is None else min(len(f), max(0, cap - n_session))
            n_items = int((tok[row] == CTX).sum()) - 1  # the target's step is not an input
            assert n_items == n_session + kept
            if kept:  # the most frequent favourites stay, with the target's context
                first = tok.shape[1] - (n_session + kept + 1) * step
                codes = tok[row, first + 1 : first + step].numpy()
                assert (codes == cat.tokens[f[len(f) - kept]]).all()
                assert ctx[row, first, 0] == cat.service[f[len(f) - kept]]
                assert (ctx[row, first, 1:] == torch.from_numpy(seqs.ctx[u][t][1:])).all()


def test_a_base_with_a_dense_item_head_pretrains_and_is_evaluated_four_ways(
    tmp_path: Path, synth_data_dir: Path
) -> None:
    """--item-head: the head is trained on the table's items; eval ranks by all four rankings."""
    out = tmp_path / "m"
    pretrain(
        synth_data_dir,
        out,
        PretrainConfig(epochs=2, batch_size=32, model=TINY, item_head=True),
    )
    model = load_model(out)
    from userlayer.sdk import SemanticIdTable

    table = SemanticIdTable.load(synth_data_dir / "sids.json")
    assert model.cfg.n_items == len(table)
    res = evaluate(
        synth_data_dir,
        out,
        EvalConfig(beam=10, baselines=("popularity",), exclude_seen=True, max_users=40),
    )
    names = {"generative", "popularity"} | {
        f"generative ({m})" for m in ("dense", "beam+dense", "fused")
    }
    assert set(res["results"]) == names
    dense = res["results"]["generative (dense)"]["full"]["all"]
    pop = res["results"]["popularity"]["full"]["all"]
    assert dense["n"] == 40 and 0 <= dense["N@10"] <= dense["R@10"] <= 1
    assert dense["R@10"] > 0 and pop["n"] == 40  # 0.1 here: the head ranks real targets
    # pretraining recorded which ranking its validation users rank best by, for `auto`
    rec = json.loads((out / "config.json").read_text())["ranking"]
    assert set(rec["valid_ndcg10"]) == {"beam", "dense", "beam+dense", "fused"}
    assert rec["users"] > 0
    assert rec["valid_ndcg10"][rec["preferred"]] == max(rec["valid_ndcg10"].values())
    assert preferred_ranking(out) == rec["preferred"]
    assert preferred_ranking(tmp_path) is None  # no model here


def test_label_smoothing_reaches_the_training_loss_and_is_recorded(
    synth_data_dir: Path, tmp_path: Path
) -> None:
    cfg = PretrainConfig(epochs=1, batch_size=32, model=TINY, min_steps=3, valid_users=0)
    plain = pretrain(synth_data_dir, tmp_path / "plain", cfg)
    smooth = pretrain(synth_data_dir, tmp_path / "smooth", replace(cfg, label_smoothing=0.3))
    assert smooth.losses[0] != pytest.approx(plain.losses[0], abs=1e-6)  # same batch, same init
    doc = json.loads((tmp_path / "smooth" / "config.json").read_text())
    assert doc["pretrain"]["label_smoothing"] == 0.3
    with pytest.raises(ToolsError, match="label_smoothing"):
        PretrainConfig(label_smoothing=1.0)


def test_item_features_come_from_the_ids_embedding_and_stay_with_the_model(
    small_synth: SynthResult, tmp_path: Path
) -> None:
    """--item-features reads the vectors the IDs were built from, in the table's item order."""
    from userlayer.sdk import SemanticIdTable
    from userlayer.tools.sids import SidConfig, build_semantic_ids
    from userlayer.tools.sids.features import EMBEDDING_FILE, codes_digest, save_item_embedding

    data = tmp_path / "d"
    small_synth.save(data)
    table, rep = build_semantic_ids(
        small_synth.dataset, SidConfig(codebook_size=16, embedding="collaborative")
    )
    table.save(data / "sids.json")
    cfg = PretrainConfig(
        epochs=1, batch_size=32, model=TINY, min_steps=3, item_head=True, item_features=True
    )
    with pytest.raises(ToolsError, match="no item embedding at"):
        pretrain(data, tmp_path / "none", cfg)  # the file is not there
    assert rep.embedding is not None
    ids = small_synth.dataset.items.column("item_id").to_pylist()
    other = codes_digest({**table.codes, ids[0]: (0, 0, 0, 99)})
    save_item_embedding(data / EMBEDDING_FILE, ids, rep.embedding, rep.source, other)
    with pytest.raises(ToolsError, match="another Semantic ID table"):
        pretrain(data, tmp_path / "other", cfg)
    digest = codes_digest(table.codes)
    save_item_embedding(data / EMBEDDING_FILE, ids, rep.embedding, rep.source, digest)
    pretrain(data, tmp_path / "m", cfg)
    model = load_model(tmp_path / "m")
    assert model.cfg.item_features == rep.embedding.shape[1]
    # each item's row of the head is its own embedding row, whatever the orders
    codes = SemanticIdTable.load(data / "sids.json").codes
    rows = model.item_index(torch.tensor([codes[i] for i in ids]))
    assert sorted(rows.tolist()) == list(range(len(ids)))
    scale = float(np.sqrt((rep.embedding.astype(np.float64) ** 2).sum(1).mean()))
    want = torch.from_numpy(rep.embedding) / scale
    torch.testing.assert_close(model.item_feats[rows], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ToolsError, match="item_head"):
        PretrainConfig(item_features=True)


def test_device_is_runtime_only_and_the_cpu_run_is_the_default_run(
    synth_data_dir: Path, tmp_path: Path
) -> None:
    cfg = PretrainConfig(epochs=1, batch_size=32, model=TINY, min_steps=3, valid_users=0)
    plain = pretrain(synth_data_dir, tmp_path / "plain", cfg)
    cpu = pretrain(synth_data_dir, tmp_path / "cpu", replace(cfg, device="cpu"))
    assert cpu.losses == plain.losses
    assert cpu.fingerprint == plain.fingerprint
    doc = json.loads((tmp_path / "cpu" / "config.json").read_text())
    assert doc["pretrain"]["device"] is None  # where it ran is not part of the model


@pytest.mark.parametrize("name", ["tpu", "banana", "cuda:99", "meta"])
def test_a_device_this_process_cannot_train_on_is_refused_by_name(name: str) -> None:
    if name == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    with pytest.raises(ToolsError, match=f"`device`.*{name}"):
        PretrainConfig(device=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_follows_the_cpu_runs_loss_curve(synth_data_dir: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig(epochs=1, batch_size=32, model=TINY, min_steps=5, valid_users=50)
    cpu = pretrain(synth_data_dir, tmp_path / "cpu", cfg)
    gpu = pretrain(synth_data_dir, tmp_path / "gpu", replace(cfg, device="cuda"))
    assert gpu.finished
    # same init and batches; kernels differ in rounding only (dropout draws differ by device)
    assert gpu.losses[0] == pytest.approx(cpu.losses[0], rel=0.05)
    assert gpu.losses[-1] < gpu.losses[0]
    load_model(tmp_path / "gpu")  # saved from the GPU, loads on the CPU
