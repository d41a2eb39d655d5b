"""The engine: backends agree, each row keeps its own adapter, slots are reused LRU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from userlayer.cloud.engine.backends import EngineError, tensorrt_available
from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest, Slab
from userlayer.cloud.engine.export import export_onnx
from userlayer.sdk.model import new_adapter
from userlayer.sdk.model.dense_search import fuse_lists
from userlayer.sdk.model.io import preferred_ranking
from userlayer.sdk.schemas import Context, Mode


@pytest.fixture(scope="module")
def engines(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Engine, Engine]:
    onnx = tmp_path_factory.mktemp("onnx")
    export_onnx(tiny_model_dir, onnx)
    eo = Engine(tiny_model_dir, EngineConfig(backend="onnxruntime", onnx_dir=str(onnx), slots=16))
    et = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=16))
    return eo, et


def _adapter(e: Engine, seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    base = new_adapter(e.model_cfg, e.acfg, torch.Generator().manual_seed(seed))
    return {
        k: v.numpy() + 0.5 * g.standard_normal(v.shape).astype(np.float32) for k, v in base.items()
    }


def _requests(e: Engine, slots: list[int]) -> list[EngineRequest]:
    items = sorted(e.table.codes)
    modes = [Mode.HUNGRY, Mode.SHOPPING, Mode.HEALTH, Mode.UNSPECIFIED]
    return [
        EngineRequest(
            service=e.table.services[items[7 * i]],
            context=Context(mode=modes[i % 4]),
            session=tuple(items[7 * i : 7 * i + 1 + i % 3]),
            k=5,
            slot=s,
        )
        for i, s in enumerate(slots)
    ]


def test_backends_agree_and_rows_keep_their_own_adapters(engines: tuple[Engine, Engine]) -> None:
    eo, et = engines
    slots = []
    for u in range(6):
        ad = _adapter(eo, u)
        assert eo.slab.load(("samokat", f"u{u}", 1), ad) == et.slab.load(
            ("samokat", f"u{u}", 1), ad
        )
        slots.append(eo.slab.lookup(("samokat", f"u{u}", 1)))
    reqs = _requests(eo, [slots[0], -1, slots[1], slots[2], -1, slots[3], slots[4], slots[5]])
    a, b = eo.recommend(reqs), et.recommend(reqs)
    for x, y in zip(a, b, strict=True):
        assert len(x) == 5 and [r.item_id for r in x] == [r.item_id for r in y]
        np.testing.assert_allclose([r.score for r in x], [r.score for r in y], atol=1e-4)
    # a row in a batch gets what it gets alone: no adapter leaks between rows (a row
    # without adapter, next to slot 0's user, runs the base graphs when alone)
    for e, batch in ((eo, a), (et, b)):
        for i, r in enumerate(reqs):
            alone = e.recommend([r])[0]
            assert [x.item_id for x in alone] == [x.item_id for x in batch[i]]
            np.testing.assert_allclose(
                [x.score for x in alone], [x.score for x in batch[i]], atol=1e-4
            )
    # the adapters matter: the same request with another user's adapter differs
    swapped = [
        EngineRequest(**{**r.__dict__, "slot": slots[(i + 1) % 6]}) for i, r in enumerate(reqs)
    ]
    assert [[x.item_id for x in o] for o in eo.recommend(swapped)] != [
        [x.item_id for x in o] for o in a
    ]


def test_results_respect_service_k_and_exclude(engines: tuple[Engine, Engine]) -> None:
    eo, _ = engines
    req = _requests(eo, [-1])[0]
    first = eo.recommend([req])[0]
    again = eo.recommend(
        [EngineRequest(**{**req.__dict__, "exclude": (first[0].item_id,), "k": 3})]
    )[0]
    assert len(again) == 3 and first[0].item_id not in {x.item_id for x in again}
    assert all(eo.table.services[x.item_id] == req.service for x in first)


def test_a_layers_favourites_come_before_the_session(engines: tuple[Engine, Engine]) -> None:
    """Favourites are prompt steps before the session, for rows with a layer only."""
    eo, _ = engines
    slot = eo.slab.load(("samokat", "fav", 1), _adapter(eo, 9))
    items = sorted(eo.table.codes)
    [req] = _requests(eo, [slot])
    favs = (items[3], items[11])
    with_favs = EngineRequest(**{**req.__dict__, "favourites": (*favs, "not-in-catalog")})
    as_session = EngineRequest(**{**req.__dict__, "session": (*favs, *req.session)})
    got, expect = eo.recommend([with_favs, as_session])
    assert [(x.item_id, x.score) for x in got] == [(x.item_id, x.score) for x in expect]
    assert [(x.item_id, x.score) for x in got] != [
        (x.item_id, x.score) for x in eo.recommend([req])[0]
    ]
    # a row served by the base (no layer) never reads favourites
    base = EngineRequest(**{**with_favs.__dict__, "slot": -1})
    plain = EngineRequest(**{**req.__dict__, "slot": -1})
    assert [x.item_id for x in eo.recommend([base])[0]] == [
        x.item_id for x in eo.recommend([plain])[0]
    ]


def test_the_tensor_search_serves_what_the_reference_serves(
    engines: tuple[Engine, Engine], tiny_model_dir: Path
) -> None:
    eo, _ = engines
    ref = Engine(
        tiny_model_dir,
        EngineConfig(backend="onnxruntime", onnx_dir=eo.cfg.onnx_dir, slots=16, search="reference"),
    )
    slots = [ref.slab.load(("samokat", f"r{u}", 1), _adapter(ref, u)) for u in range(3)]
    for u in range(3):
        eo.slab.load(("samokat", f"r{u}", 1), _adapter(eo, u))
    reqs = _requests(ref, [slots[0], -1, slots[1], slots[2]])
    reqs[1] = EngineRequest(**{**reqs[1].__dict__, "exclude": tuple(sorted(ref.table.codes)[:40])})
    eo_slots = [eo.slab.lookup(("samokat", f"r{u}", 1)) for u in range(3)]
    mine = [EngineRequest(**{**r.__dict__, "slot": s}) for r, s in
            zip(reqs, [eo_slots[0], -1, eo_slots[1], eo_slots[2]], strict=True)]  # fmt: skip
    for a, b in zip(eo.recommend(mine), ref.recommend(reqs), strict=True):
        assert [x.item_id for x in a] == [x.item_id for x in b]
        np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-5)
    with pytest.raises(EngineError, match="search"):
        EngineConfig(search="greedy")


def test_slab_gives_rows_without_adapter_zeros_not_slot_0s_user() -> None:
    """The model applies zeros as no-ops: a -1 row must never carry a user's tensors."""
    slab = Slab({"w": (2, 3)}, slots=4)
    slab.load("alice", {"w": np.full((2, 3), 7.0, np.float32)})  # slot 0
    active, t = slab.gather(np.array([0, -1, 0]))
    assert active.tolist() == [True, False, True]
    assert (t["w"][1] == 0).all() and (t["w"][0] == 7).all()
    assert (slab.arrays["w"][0] == 7).all()  # the slab itself is untouched


def test_slab_reuses_the_least_recently_used_slot() -> None:
    slab = Slab({"w": (2,)}, 2)
    a = slab.load(("s", "a", 1), {"w": np.ones(2, np.float32)})
    b = slab.load(("s", "b", 1), {"w": np.full(2, 2, np.float32)})
    assert slab.lookup(("s", "a", 1)) == a  # a is now the most recent
    c = slab.load(("s", "c", 1), {"w": np.full(2, 3, np.float32)})
    assert c == b and slab.lookup(("s", "b", 1)) == -1
    active, t = slab.gather(np.array([a, -1, c]))
    assert active.tolist() == [True, False, True] and t["w"][[0, 2], 0].tolist() == [1, 3]
    assert slab.evict(("s", "a")) == 1 and slab.lookup(("s", "a", 1)) == -1
    with pytest.raises(EngineError, match="'w' has shape \\(3,\\), expected \\(2,\\)"):
        slab.load(("s", "d", 1), {"w": np.ones(3, np.float32)})


def test_bad_config_and_batches_are_refused(
    engines: tuple[Engine, Engine], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match="backend"):
        EngineConfig(backend="tvm")
    with pytest.raises(EngineError, match="beam"):
        EngineConfig(beam=0)
    eo, _ = engines
    with pytest.raises(EngineError, match="empty"):
        eo.recommend([])
    with pytest.raises(EngineError, match="out of range"):
        eo.recommend(_requests(eo, [99]))
    with pytest.raises(EngineError, match="not an ONNX export"):
        Engine(tiny_model_dir, EngineConfig(onnx_dir=str(tmp_path)))


def test_tensorrt_says_why_it_cannot_run(tiny_model_dir: Path) -> None:
    why = tensorrt_available()
    if why is None:
        pytest.skip("TensorRT is available here: covered by the GPU run")
    with pytest.raises(EngineError, match="tensorrt"):
        Engine(tiny_model_dir, EngineConfig(backend="tensorrt"))


@pytest.fixture(scope="module")
def head_engines(tiny_head_model_dir: Path) -> tuple[Path, Engine, Engine]:
    """A tiny base pretrained with a dense item head, on ONNX Runtime and torch."""
    d = tiny_head_model_dir
    eo = Engine(d, EngineConfig(backend="onnxruntime", slots=8, ranking="dense"))
    et = Engine(d, EngineConfig(backend="torch", slots=8, ranking="dense"))
    return d, eo, et


def test_a_base_with_a_dense_head_is_served_by_it_alike_on_both_backends(
    head_engines: tuple[Path, Engine, Engine],
) -> None:
    d, eo, et = head_engines
    assert eo.ranking == et.ranking == "dense"
    slots = [e.slab.load(("samokat", "h", 1), _adapter(e, 4)) for e in (eo, et)]
    reqs = _requests(eo, [slots[0], -1, slots[0], -1])
    items = sorted(eo.table.codes)
    reqs[3] = EngineRequest(**{**reqs[3].__dict__, "exclude": tuple(items[:50])})
    allowed = np.zeros(len(eo.tensor_trie.items), bool)
    allowed[::3] = True
    reqs[2] = EngineRequest(**{**reqs[2].__dict__, "allowed": allowed})
    got_o, got_t = eo.recommend(reqs), et.recommend(reqs)
    for a, b in zip(got_o, got_t, strict=True):
        assert [x.item_id for x in a] == [x.item_id for x in b] and len(a) == 5
        np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-4)
    for r, out in zip(reqs, got_o, strict=True):
        assert all(eo.table.services[x.item_id] == r.service for x in out)
        assert not {x.item_id for x in out} & set(r.exclude)
    assert all(allowed[eo.tensor_trie.index[x.item_id]] for x in got_o[2])
    without = eo.recommend([EngineRequest(**{**reqs[0].__dict__, "slot": -1}), reqs[1]])
    assert [x.item_id for x in without[0]] != [x.item_id for x in got_o[0]]  # the layer applies
    assert [x.score for x in without[1]] == pytest.approx([x.score for x in got_o[1]], abs=1e-5)
    alone = [eo.recommend([r])[0] for r in reqs]  # a row's items do not depend on its batch
    for a, b in zip(alone, got_o, strict=True):
        assert [x.item_id for x in a] == [x.item_id for x in b]
    beam = Engine(d, EngineConfig(backend="onnxruntime", slots=8, ranking="beam"))
    both = Engine(d, EngineConfig(backend="onnxruntime", slots=8, ranking="beam+dense"))
    plain = [EngineRequest(**{**r.__dict__, "slot": -1}) for r in reqs]
    wide = beam.recommend([EngineRequest(**{**r.__dict__, "k": 20}) for r in plain])
    for r, cands, reranked in zip(plain, wide, both.recommend(plain), strict=True):
        assert len(reranked) == 5 and {x.item_id for x in reranked} <= {x.item_id for x in cands}
        assert r.allowed is None or all(
            r.allowed[eo.tensor_trie.index[x.item_id]] for x in reranked
        )
    fused = Engine(d, EngineConfig(backend="onnxruntime", slots=8, ranking="fused"))
    dense = Engine(d, EngineConfig(backend="onnxruntime", slots=8, ranking="dense"))
    heads = dense.recommend([EngineRequest(**{**r.__dict__, "k": 20}) for r in plain])
    for r, b, h, out in zip(plain, wide, heads, fused.recommend(plain), strict=True):
        assert [x.item_id for x in out] == [x.item_id for x in fuse_lists(b, h, 5)]
        assert r.allowed is None or all(r.allowed[eo.tensor_trie.index[x.item_id]] for x in out)


def test_a_ranking_by_the_head_needs_one_in_the_model_and_in_its_export(
    head_engines: tuple[Path, Engine, Engine], tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match="ranking"):
        EngineConfig(ranking="dense-ish")
    with pytest.raises(EngineError, match="no dense item head"):
        Engine(tiny_model_dir, EngineConfig(backend="torch", ranking="dense"))
    assert Engine(tiny_model_dir, EngineConfig(backend="torch")).ranking == "beam"
    d, _, _ = head_engines
    # auto: what pretraining validated best (recorded in config.json); dense where none
    assert Engine(d, EngineConfig(backend="torch")).ranking == preferred_ranking(d)
    m = tmp_path / "m"
    shutil.copytree(d, m)
    doc = json.loads((m / "config.json").read_text())
    for recorded, served in [("beam+dense", "beam+dense"), ("beam", "beam"), ("greedy", "dense")]:
        doc["ranking"]["preferred"] = recorded
        (m / "config.json").write_text(json.dumps(doc))
        assert Engine(m, EngineConfig(backend="torch")).ranking == served
    del doc["ranking"]  # a head model pretrained before the choice was recorded
    (m / "config.json").write_text(json.dumps(doc))
    assert Engine(m, EngineConfig(backend="torch")).ranking == "dense"
    old = tmp_path / "onnx"  # an export made before the head's scores were a prefill output
    old.mkdir()
    for f in (d / "onnx").iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["items"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="export it again"):
        Engine(d, EngineConfig(backend="onnxruntime", onnx_dir=str(old), ranking="dense"))
    # auto serves as before the head could be served: by the beam, and says why
    e = Engine(m, EngineConfig(backend="onnxruntime", onnx_dir=str(old)))  # auto: dense
    assert e.ranking == "beam" and "export it again" in (e.ranking_reason or "")
    assert len(e.recommend(_requests(e, [-1]))[0]) == 5
    assert Engine(d, EngineConfig(onnx_dir=str(old), ranking="beam")).ranking_reason is None
