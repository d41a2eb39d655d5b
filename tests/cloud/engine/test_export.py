"""ONNX export: ONNX Runtime equals torch on mixed batches, rows without adapter equal the base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from userlayer.cloud.engine.backends import EngineError, OnnxBackend
from userlayer.cloud.engine.export import (
    ExportError,
    GraphSpec,
    _Decode,
    _Prefill,
    ensure_onnx,
    example_inputs,
    export_onnx,
)
from userlayer.sdk.model import AdapterConfig, ModelConfig, ModelError, Recommender, RowAdapters
from userlayer.sdk.model.io import load_model, save_model
from userlayer.sdk.model.steer import CritiqueSteer, SteerConfig, save_steer

# two layers and grouped-query attention, so that both are in the graph
CFG = ModelConfig(level_sizes=(16, 16, 8), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m")
    save_model(Recommender(CFG).eval(), d)
    return d


def _sessions(d: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return (
        ort.InferenceSession(str(d / "prefill.onnx"), providers=["CPUExecutionProvider"]),
        ort.InferenceSession(str(d / "decode.onnx"), providers=["CPUExecutionProvider"]),
    )


def _run(sess: ort.InferenceSession, names: list[str], args: tuple[torch.Tensor, ...]) -> list:  # type: ignore[type-arg]
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True) if n in wanted})


def _assert_graphs_equal_module(
    d: Path, acfg: AdapterConfig, shapes: list[tuple[int, int, int, int]], steer: int = 0
) -> None:
    """The graphs exported to ``d/onnx`` from ``d/m`` equal the module on each (b, t, g, tn)."""
    pre, dec = _sessions(d / "onnx")
    model = load_model(d / "m")
    spec = GraphSpec(model, acfg, steer=steer)
    for b, t, g, tn in shapes:
        p_args, d_args = example_inputs(model, acfg, b=b, t=t, g=g, tn=tn, steer=steer)
        with torch.no_grad():
            ref = _Prefill(model, spec)(*p_args)
            ref_d = _Decode(model, spec)(*d_args)
        out = _run(pre, spec.prefill_inputs, p_args)
        out_d = _run(dec, spec.decode_inputs, d_args)
        for got, want in [*zip(out, ref, strict=True), *zip(out_d, ref_d, strict=True)]:
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "acfg",
    [AdapterConfig(), AdapterConfig(rank=4, n_prefix=0, n_modes=0, film=False)],
    ids=["full-adapter", "lora-only"],
)
def test_onnx_runtime_equals_torch_on_mixed_batches(
    model_dir: Path, tmp_path: Path, acfg: AdapterConfig
) -> None:
    manifest = export_onnx(model_dir, tmp_path / "onnx", acfg)
    assert manifest["adapter"] == acfg.to_dict() and manifest["fingerprint"]
    pre, dec = _sessions(tmp_path / "onnx")
    model = load_model(model_dir)
    spec = GraphSpec(model, acfg)
    # shapes other than the traced ones (3 rows, 11 tokens, 2 beams, 1 decoded position),
    # the first step (no beam position yet) included
    for b, t, g, tn in [(5, 17, 3, 0), (1, 6, 20, 2), (8, 26, 4, 1)]:
        p_args, d_args = example_inputs(model, acfg, b=b, t=t, g=g, tn=tn)
        with torch.no_grad():
            ref = _Prefill(model, spec)(*p_args)
            ref_d = _Decode(model, spec)(*d_args)
            base, _ = model(p_args[0], p_args[1])
        out = _run(pre, spec.prefill_inputs, p_args)
        out_d = _run(dec, spec.decode_inputs, d_args)
        for got, want in [*zip(out, ref, strict=True), *zip(out_d, ref_d, strict=True)]:
            assert got.shape == tuple(want.shape)
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
        inactive = ~p_args[2].numpy()  # rows without an adapter: the base model's output
        np.testing.assert_allclose(out[0][inactive], base[:, -1].numpy()[inactive], atol=1e-4)


def test_base_graphs_equal_the_model_without_adapters(model_dir: Path, tmp_path: Path) -> None:
    export_onnx(model_dir, tmp_path / "onnx")
    pre = ort.InferenceSession(str(tmp_path / "onnx" / "base_prefill.onnx"))
    dec = ort.InferenceSession(str(tmp_path / "onnx" / "base_decode.onnx"))
    model = load_model(model_dir)
    spec = GraphSpec(model, AdapterConfig(), base=True)
    assert spec.prefill_inputs == ["tokens", "ctx"] and "active" not in spec.decode_inputs
    p_args, d_args = example_inputs(model, AdapterConfig(), b=4, t=13, g=5, base=True, tn=0)
    with torch.no_grad():
        ref = _Prefill(model, spec)(*p_args)
        ref_d = _Decode(model, spec)(*d_args)
        plain, _ = model(p_args[0], p_args[1])
    out = _run(pre, spec.prefill_inputs, p_args)
    out_d = _run(dec, spec.decode_inputs, d_args)
    np.testing.assert_allclose(out[0], plain[:, -1].numpy(), atol=1e-4)
    for got, want in [*zip(out, ref, strict=True), *zip(out_d, ref_d, strict=True)]:
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_decode_graph_equals_the_prompt_cache_gathered_to_every_beam(
    model_dir: Path, tmp_path: Path
) -> None:
    """The graph's group view of the shared prompt gives what copying the prompt's cache to
    every beam gives (the full forward pass with a cache, before the cache was shared)."""
    acfg = AdapterConfig()
    export_onnx(model_dir, tmp_path / "onnx", acfg)
    pre, dec = _sessions(tmp_path / "onnx")
    model = load_model(model_dir)
    spec = GraphSpec(model, acfg)
    p_args, d_args = example_inputs(model, acfg, b=4, t=9, g=3, tn=0)
    out = _run(pre, spec.prefill_inputs, p_args)
    step = _run(dec, spec.decode_inputs, d_args)
    ad = dict(zip(spec.adapter, p_args[4:], strict=True))
    rows = RowAdapters(acfg, p_args[2], ad, p_args[3])
    with torch.no_grad():
        _, cache = model(p_args[0], p_args[1], rows, return_cache=True)
        assert cache is not None
        codes, origin = d_args[0], d_args[1]
        zero = torch.zeros(codes.shape[0], 1, 7, dtype=torch.long)
        full, _ = model(codes, zero, rows, cache.select(origin), return_cache=True)
    level1 = full[:, -1, d_args[2]]  # the graph returns the wanted (next level's) codes only
    assert step[0].shape == tuple(level1.shape)
    np.testing.assert_allclose(step[0], level1.numpy(), atol=1e-4, rtol=0)
    assert out[1].shape[1] == 4 and step[1].shape[1] == 12  # prompt: 4 rows; beams: 12


def test_a_base_with_domain_experts_exports_and_equals_torch(tmp_path: Path) -> None:
    """Per-service experts route inside the graphs: prefill and decode equal the module."""
    torch.manual_seed(1)
    cfg = ModelConfig(**{**CFG.to_dict(), "n_experts": 3, "expert_ff": 24})
    save_model(Recommender(cfg).eval(), tmp_path / "m")
    acfg = AdapterConfig(rank=2)
    manifest = export_onnx(tmp_path / "m", tmp_path / "onnx", acfg)
    assert "service" in manifest["prefill"]["outputs"]
    _assert_graphs_equal_module(tmp_path, acfg, [(5, 17, 3, 0), (2, 9, 4, 1)])


def test_a_dense_item_heads_scores_are_prefills_last_output_and_equal_torch(
    tmp_path: Path,
) -> None:
    """Prefill (with and without adapters) also returns every item's dense score, as torch."""
    torch.manual_seed(2)
    cfg = ModelConfig(**{**CFG.to_dict(), "n_items": 6})
    m = Recommender(cfg)
    m.set_items(
        torch.tensor([[i % cfg.level_sizes[0]] + [0] * (cfg.n_levels - 1) for i in range(6)])
    )
    save_model(m.eval(), tmp_path / "m")
    acfg = AdapterConfig(rank=2)
    manifest = export_onnx(tmp_path / "m", tmp_path / "onnx", acfg)
    assert manifest["items"] == 6
    assert manifest["prefill"]["outputs"][-1] == manifest["base_prefill"]["outputs"][-1] == "items"
    _assert_graphs_equal_module(tmp_path, acfg, [(3, 13, 2, 1), (5, 7, 1, 0)])
    model = load_model(tmp_path / "m")
    p_args, _ = example_inputs(model, acfg, b=4, t=9)
    out = _run(_sessions(tmp_path / "onnx")[0], GraphSpec(model, acfg).prefill_inputs, p_args)
    with torch.no_grad():
        rows = GraphSpec(model, acfg).rows(p_args[2:], mode_weights=True)
        want = model.item_logits(p_args[0], p_args[1], rows)
    assert out[-1].shape == (4, 6)
    np.testing.assert_allclose(out[-1], want.numpy(), atol=1e-4, rtol=0)
    base = ort.InferenceSession(str(tmp_path / "onnx" / "base_prefill.onnx"))
    got = base.run(None, {"tokens": p_args[0].numpy(), "ctx": p_args[1].numpy()})[-1]
    with torch.no_grad():
        np.testing.assert_allclose(
            got, model.item_logits(p_args[0], p_args[1]).numpy(), atol=1e-4, rtol=0
        )


def _catalog_model(features: int = 0, **fields: object) -> Recommender:
    """A base with a head over 37 drawn code tuples (``fields``: its config's extras)."""
    torch.manual_seed(3)
    n = 37  # not a power of two: every step of the search's unrolled loop is traced
    m = Recommender(ModelConfig(**{**CFG.to_dict(), "n_items": n, **fields}))
    gen = torch.Generator().manual_seed(4)
    k = torch.randperm(16 * 16 * 8, generator=gen)[:n]  # n distinct code tuples
    feats = torch.randn(n, features, generator=gen) if features else None
    m.set_items(torch.stack([k // 128, k // 8 % 16, k % 8], 1), feats)
    return m


def _exported_prefill(
    tmp_path: Path, m: Recommender
) -> tuple[tuple[torch.Tensor, ...], list[np.ndarray], dict[str, Any]]:
    """Export ``m`` with adapters, check its graphs, run the base prefill on whole items."""
    save_model(m.eval(), tmp_path / "m")
    acfg = AdapterConfig(rank=2)
    manifest = export_onnx(tmp_path / "m", tmp_path / "onnx", acfg)
    _assert_graphs_equal_module(tmp_path, acfg, [(3, 13, 2, 1), (5, 22, 1, 0)])
    p_args, _ = example_inputs(m, acfg, b=4, t=17)
    assert bool((m.item_inputs(p_args[0]).abs().sum(-1) > 0).any())  # the check reads items
    base = ort.InferenceSession(str(tmp_path / "onnx" / "base_prefill.onnx"))
    got = base.run(None, {"tokens": p_args[0].numpy(), "ctx": p_args[1].numpy()})
    return p_args, got, manifest


@pytest.mark.parametrize("tied", [False, True], ids=["own", "tied"])
def test_free_item_inputs_are_looked_up_inside_the_graphs_and_equal_torch(
    tmp_path: Path, tied: bool
) -> None:
    """The history items' free input vectors (a binary search of the catalog) export too.

    ``tied``: the inputs are the head's free vectors (``item_tied``).
    """
    m = _catalog_model(item_input=True, item_tied=tied)
    table = m.item_emb if tied else m.item_in
    assert table is not None and (m.item_in is None) == tied
    with torch.no_grad():
        table.weight.normal_(0, 0.5)
    p_args, got, _ = _exported_prefill(tmp_path, m)
    with torch.no_grad():
        want, _ = m(p_args[0], p_args[1])
        table.weight.zero_()
        without, _ = m(p_args[0], p_args[1])
    np.testing.assert_allclose(got[0], want[:, -1].numpy(), atol=1e-4, rtol=0)
    assert np.abs(got[0] - without[:, -1].numpy()).max() > 1e-3


def test_fixed_item_features_export_with_the_graphs_and_equal_torch(tmp_path: Path) -> None:
    """Item features (a buffer, looked up by the same search) feed input and head alike."""
    m = _catalog_model(features=5, item_features=5)
    assert m.feat_in is not None
    with torch.no_grad():
        m.feat_in.weight.normal_(0, 0.5)
    p_args, got, manifest = _exported_prefill(tmp_path, m)
    assert manifest["items"] == 37
    with torch.no_grad():
        want, _ = m(p_args[0], p_args[1])
        items = m.item_logits(p_args[0], p_args[1])
    np.testing.assert_allclose(got[0], want[:, -1].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[-1], items.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "acfg",
    [AdapterConfig(rank=2), AdapterConfig(rank=2, n_prefix=0, n_modes=0, film=False)],
    ids=["full-adapter", "no-adapter-prefix"],
)
def test_a_critique_steer_beside_the_model_is_a_prefill_input_and_equals_torch(
    acfg: AdapterConfig, tmp_path: Path
) -> None:
    """Odd rows carry a steer and no adapter; even rows an adapter and no steer."""
    torch.manual_seed(3)
    m = Recommender(CFG).eval()
    fp = save_model(m, tmp_path / "m")
    save_steer(CritiqueSteer(SteerConfig(d_model=CFG.d_model, n_vectors=2)), tmp_path / "m", fp, {})
    manifest = export_onnx(tmp_path / "m", tmp_path / "onnx", acfg)
    assert manifest["steer"] == 2 and manifest["prefill"]["inputs"][-1] == "steer"
    assert "steer" not in manifest["base_prefill"]["inputs"]
    _assert_graphs_equal_module(tmp_path, acfg, [(4, 13, 2, 1), (3, 9, 3, 0)], steer=2)
    backend = OnnxBackend(tmp_path / "onnx", fp)
    assert backend.steer == 2


def test_an_export_of_another_format_is_refused(model_dir: Path, tmp_path: Path) -> None:
    export_onnx(model_dir, tmp_path / "onnx")
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    manifest["format"] = "userlayer.onnx/1"
    (tmp_path / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="export it again"):
        OnnxBackend(tmp_path / "onnx", manifest["fingerprint"])


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nothing"):
        export_onnx(tmp_path / "nothing", tmp_path / "onnx")


def test_export_failure_names_the_graph(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "onnx").write_text("a file where the directory should be")
    with pytest.raises((ExportError, OSError)):
        export_onnx(model_dir, tmp_path / "onnx")


def test_ensure_onnx_exports_again_when_the_heads_scores_are_missing(tmp_path: Path) -> None:
    """An export made before the head's ``items`` output is replaced; a current one is kept."""
    torch.manual_seed(4)
    cfg = ModelConfig(**{**CFG.to_dict(), "n_items": 4})
    m = Recommender(cfg)
    m.set_items(torch.tensor([[i, 0, 0] for i in range(4)]))
    save_model(m.eval(), tmp_path / "m")
    out = ensure_onnx(tmp_path / "m")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["items"] == 4
    stamp = (out / "prefill.onnx").stat().st_mtime_ns
    assert ensure_onnx(tmp_path / "m") == out and (out / "prefill.onnx").stat().st_mtime_ns == stamp
    del manifest["items"]  # as an export of the previous release wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    ensure_onnx(tmp_path / "m")
    assert json.loads((out / "manifest.json").read_text())["items"] == 4
    backend = OnnxBackend(out, manifest["fingerprint"])
    assert backend.items == 4
    none, mw = np.zeros(1, dtype=bool), np.zeros((1, 0), np.float32)
    assert "items" in backend.decoder(none, {}, mw).fetch
    assert "items" not in backend.decoder(none, {}, mw, items=False).fetch  # the beam's
