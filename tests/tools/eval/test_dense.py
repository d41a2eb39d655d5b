"""The eval's dense rankings: the lists the engine serves, and named errors for bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from userlayer.sdk.model.dense_search import dense_search, head_order
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.model.trie_search import TensorTrie
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.dense import DENSE_MODES, dense_lists, head_lists, rank_dense, rank_head
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import Prompt, UserSequences, build_prompts, pack_prompts

Run = tuple[Recommender, TensorTrie, list[Prompt]]


@pytest.fixture(scope="module")
def run(tiny_head_model_dir: Path, synth_data_dir: Path) -> Run:
    """The tiny base with a head, its trie and 12 test prompts of the synthetic data."""
    model = load_model(tiny_head_model_dir).eval()
    table = SemanticIdTable.load(tiny_head_model_dir / "sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(synth_data_dir), table, model.cfg.geo_buckets)
    return model, TensorTrie(table), build_prompts(seqs, "test", "full")[:12]


def test_fused_lists_are_the_engines_at_its_width_and_bad_settings_are_named(run: Run) -> None:
    model, trie, prompts = run
    # k above the beam: the beam is widened to k, as the engine serves (max(beam, k))
    got = dense_lists(model, trie, prompts, "fused", k=6, beam=4, batch_size=5)
    tok, ctx = pack_prompts(prompts)
    services = [p.service for p in prompts]
    want = dense_search(model, trie, head_order(model, trie), tok, ctx, 6, 6, services, fuse=True)
    assert [[x.item_id for x in r] for r in got] == [[x.item_id for x in r] for r in want]
    assert all(len(r) == 6 for r in got)
    with pytest.raises(ToolsError, match="`k` should be at least 1"):
        dense_lists(model, trie, prompts, "fused", k=0)
    assert dense_lists(model, trie, prompts, "fused", k=3, beam=0) == dense_lists(
        model, trie, prompts, "fused", k=3, beam=3
    )  # a beam below k is widened to k
    with pytest.raises(ToolsError, match="should be some of"):
        dense_lists(model, trie, prompts, "fusion")


def test_the_modes_ranked_together_are_each_ranked_alone(run: Run) -> None:
    model, trie, prompts = run
    ticks: list[int] = []
    together = head_lists(model, trie, prompts, DENSE_MODES, 5, 4, 5, True, ticks.append)
    assert sum(ticks) == len(prompts)  # each prompt counted once, not once per mode
    metrics = rank_head(model, trie, prompts, DENSE_MODES, 5, 4, 5, True)
    for mode in DENSE_MODES:
        alone = dense_lists(model, trie, prompts, mode, 5, 4, 5, True)
        assert [[x.item_id for x in r] for r in together[mode]] == [
            [x.item_id for x in r] for r in alone
        ], mode
        assert metrics[mode] == rank_dense(model, trie, prompts, mode, 5, 4, 5, True)
    with pytest.raises(ToolsError, match="should be some of"):
        head_lists(model, trie, prompts, ())
