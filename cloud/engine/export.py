"""Export the base model to ONNX with the per-row adapter tensors as graph inputs.

Two graphs serve every mix of users (dynamic batch and sequence axes):

``prefill.onnx``
    inputs ``tokens`` (B, T) int64, ``ctx`` (B, T, 7) int64, ``active`` (B,)
    bool, ``mode_weights`` (B, M) float, and one ``ad.<name>`` (B, *shape)
    float per adapter tensor; outputs the next-code ``logits`` (B, n_codes)
    and the cache: ``k``/``v`` (L, B, KV, T, hd), ``pk``/``pv`` (L, B, H, P,
    hd) when the adapter has prefix vectors, ``key_valid`` (B, T) bool,
    ``next_pos`` (B,) int64 and ``prefix_valid`` (B, P) bool.

``decode.onnx``
    inputs ``codes`` (N, 1) int64, ``origin`` (N,) int64 (the cache row each
    new row continues: beam search's reordering happens inside the graph),
    the cache of the previous call, ``active`` (A,) and ``ad.<name>`` (A, ...)
    where rows ``i*N/A ..`` share adapter ``i``; outputs the same as prefill
    for the N rows (the cache one position longer).

A row whose ``active`` is false has no adapter and gets the base model's
output. ``manifest.json`` records the model fingerprint, the adapter
configuration, the input and output names and the opset.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.model import AdapterConfig, Recommender, RowAdapters, adapter_shapes
from userlayer.sdk.model.io import fingerprint, load_model
from userlayer.sdk.model.transformer import KVCache, _LayerCache

__all__ = ["EXPORT_FORMAT", "ExportError", "GraphSpec", "export_onnx", "graph_spec"]

EXPORT_FORMAT = "userlayer.onnx/1"
OPSET = 18


class ExportError(CloudError):
    """The model could not be exported, or an export directory is not usable."""


class GraphSpec:
    """Input and output names of the two graphs for one adapter configuration.

    ``base=True`` describes the graphs of the base model alone (no adapter
    inputs at all): what a batch without any personalized row runs.
    """

    def __init__(self, model: Recommender, acfg: AdapterConfig, base: bool = False) -> None:
        self.acfg = acfg
        self.base = base
        self.adapter = [] if base else list(adapter_shapes(model.cfg, acfg))
        self.prefix = not base and acfg.n_prefix_total > 0
        cache = ["k", "v", *(["pk", "pv"] if self.prefix else []), "key_valid", "next_pos"]
        if self.prefix:
            cache.append("prefix_valid")
        self.cache = cache
        ads = [f"ad.{n}" for n in self.adapter]
        rows = [] if base else ["active"]
        self.prefill_inputs = ["tokens", "ctx", *rows, *([] if base else ["mode_weights"]), *ads]
        self.decode_inputs = ["codes", "origin", *cache, *rows, *ads]
        self.outputs = ["logits", *cache]

    def rows(self, args: tuple[Tensor, ...], mode_weights: bool) -> RowAdapters | None:
        """The adapter rows from the graph's trailing inputs (None for the base graphs)."""
        if self.base:
            return None
        active, rest = args[0], args[1:]
        mw = rest[0] if mode_weights else None
        ad = rest[1:] if mode_weights else rest
        return RowAdapters(self.acfg, active, dict(zip(self.adapter, ad, strict=True)), mw)


def graph_spec(model: Recommender, acfg: AdapterConfig, base: bool = False) -> GraphSpec:
    """The graphs' input and output names."""
    return GraphSpec(model, acfg, base)


def _cache_out(logits: Tensor, cache: KVCache | None, spec: GraphSpec) -> tuple[Tensor, ...]:
    assert cache is not None
    out = [
        logits[:, -1],
        torch.stack([lc.k for lc in cache.layers]),
        torch.stack([lc.v for lc in cache.layers]),
    ]
    if spec.prefix:
        out += [
            torch.stack([lc.pk for lc in cache.layers if lc.pk is not None]),
            torch.stack([lc.pv for lc in cache.layers if lc.pv is not None]),
        ]
    out += [cache.key_valid, cache.next_pos]
    if spec.prefix:
        assert cache.prefix_valid is not None
        out.append(cache.prefix_valid)
    return tuple(out)


class _Prefill(nn.Module):
    def __init__(self, model: Recommender, spec: GraphSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, tokens: Tensor, ctx: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        """Prompts in; next-code logits and the cache out."""
        rows = self.spec.rows(rest, mode_weights=True)
        logits, cache = self.model(tokens, ctx, rows, return_cache=True)
        return _cache_out(logits, cache, self.spec)


class _Decode(nn.Module):
    def __init__(self, model: Recommender, spec: GraphSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, codes: Tensor, origin: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        """One code per row after the rows ``origin`` of the cache; logits and the cache out."""
        spec = self.spec
        n_cache = len(spec.cache)
        c = dict(zip(spec.cache, rest[:n_cache], strict=True))
        layers = [
            _LayerCache(
                c["k"][i],
                c["v"][i],
                c["pk"][i] if spec.prefix else None,
                c["pv"][i] if spec.prefix else None,
            )
            for i in range(self.model.cfg.n_layers)
        ]
        cache = KVCache(layers, c["key_valid"], c["next_pos"], c.get("prefix_valid")).select(origin)
        ctx = torch.zeros(codes.shape[0], 1, len(self.model.ctx_vocab.sizes), dtype=torch.long)
        rows = spec.rows(rest[n_cache:], mode_weights=False)
        logits, new = self.model(codes, ctx, rows, cache, return_cache=True)
        return _cache_out(logits, new, spec)


def example_inputs(
    model: Recommender,
    acfg: AdapterConfig,
    b: int = 3,
    t: int = 11,
    g: int = 2,
    base: bool = False,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Small random inputs for both graphs (tracing, parity tests)."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 2 + cfg.n_codes, (b, t), generator=gen)
    tokens[:, -1] = 1
    tokens[:, ::5] = 1
    tokens[0, :3] = 0  # left padding
    ctx = torch.randint(0, 3, (b, t, len(model.ctx_vocab.sizes)), generator=gen)
    active = torch.tensor([i % 2 == 0 for i in range(b)])
    mw = torch.zeros(b, max(acfg.n_modes, 1))[:, : acfg.n_modes]
    if acfg.n_modes:
        mw[:, 0] = 1.0
    shapes = adapter_shapes(cfg, acfg)
    ad = tuple(torch.randn((b, *s), generator=gen) * 0.05 for s in shapes.values())
    prefill = (tokens, ctx) if base else (tokens, ctx, active, mw, *ad)
    spec = GraphSpec(model, acfg, base)
    with torch.no_grad():
        outs = _Prefill(model, spec)(*prefill)
    origin = torch.arange(b).repeat_interleave(g)
    codes = torch.randint(2, 2 + cfg.level_sizes[0], (b * g, 1), generator=gen)
    decode = (codes, origin, *outs[1:]) if base else (codes, origin, *outs[1:], active, *ad)
    return prefill, decode


def _dynamic_axes(spec: GraphSpec, decode: bool) -> dict[str, dict[int, str]]:
    b = "N" if decode else "B"
    prev = "R" if decode else "B"  # cache rows coming in
    ax: dict[str, dict[int, str]] = {"logits": {0: b}}
    if decode:
        ax |= {"codes": {0: b}, "origin": {0: b}}
        for name in spec.cache:
            ax[name] = {0: prev} if name in ("key_valid", "next_pos", "prefix_valid") else {1: prev}
        ax["key_valid"][1] = "Tc"
        ax["k"][3] = "Tc"
        ax["v"][3] = "Tc"
        a = "A"
    else:
        ax |= {"tokens": {0: b, 1: "T"}, "ctx": {0: b, 1: "T"}}
        if not spec.base:
            ax["mode_weights"] = {0: b}
        a = b
    if not spec.base:
        ax["active"] = {0: a}
    for n in spec.adapter:
        ax[f"ad.{n}"] = {0: a}
    # outputs (decode's cache outputs share names with its inputs: ONNX names must be
    # unique, so outputs are written with an ``out.`` prefix)
    t_out = "Tc1" if decode else "T"
    for name in spec.cache:
        key = f"out.{name}" if decode else name
        if name in ("k", "v"):
            ax[key] = {1: b, 3: t_out}
        elif name in ("pk", "pv"):
            ax[key] = {1: b}
        elif name == "key_valid":
            ax[key] = {0: b, 1: t_out}
        else:
            ax[key] = {0: b}
    return ax


def export_onnx(
    model_dir: str | Path, out_dir: str | Path, acfg: AdapterConfig | None = None
) -> dict[str, Any]:
    """Export ``prefill.onnx`` and ``decode.onnx`` plus ``manifest.json``; returns the manifest.

    Raises:
        ExportError: if the export fails.
    """
    acfg = acfg or AdapterConfig()
    model = load_model(model_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    graphs: dict[str, Any] = {}
    for base in (False, True):
        spec = GraphSpec(model, acfg, base)
        prefill, decode = example_inputs(model, acfg, base=base)
        dec_outputs = ["logits", *(f"out.{n}" for n in spec.cache)]
        pre = "base_" if base else ""
        jobs += [
            (
                f"{pre}prefill.onnx",
                _Prefill(model, spec),
                prefill,
                spec.prefill_inputs,
                spec.outputs,
                spec,
                False,
            ),
            (
                f"{pre}decode.onnx",
                _Decode(model, spec),
                decode,
                spec.decode_inputs,
                dec_outputs,
                spec,
                True,
            ),
        ]
        graphs[f"{pre}prefill"] = {"inputs": spec.prefill_inputs, "outputs": spec.outputs}
        graphs[f"{pre}decode"] = {"inputs": spec.decode_inputs, "outputs": dec_outputs}
    for fname, module, args, inputs, outputs, spec, is_decode in jobs:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about shape checks
                torch.onnx.export(
                    module,
                    args,
                    str(out / fname),
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes=_dynamic_axes(spec, is_decode),
                    opset_version=OPSET,
                    dynamo=False,
                )
        except Exception as e:  # the exporter raises many kinds
            raise ExportError(f"exporting {fname} failed: {e}") from e
    manifest = {
        "format": EXPORT_FORMAT,
        "fingerprint": fingerprint(model),
        "model": model.cfg.to_dict(),
        "adapter": acfg.to_dict(),
        "opset": OPSET,
        **graphs,
        "torch": torch.__version__,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), "utf-8")
    return manifest
