"""Export the base model to ONNX with the per-row adapter tensors as graph inputs.

Two graphs serve every mix of users (dynamic batch and sequence axes):

``prefill.onnx``
    inputs ``tokens`` (B, T) int64, ``ctx`` (B, T, 7) int64, ``active`` (B,)
    bool, ``mode_weights`` (B, M) float, and one ``ad.<name>`` (B, *shape)
    float per adapter tensor; outputs the next-code ``logits`` (B, n_codes)
    and the prompts' cache: ``k``/``v`` (L, B, KV, T, hd), ``pk``/``pv``
    (L, B, KV, P, hd) when the adapter has prefix vectors, ``key_valid``
    (B, T) bool, ``next_pos`` (B,) int64, ``prefix_valid`` (B, P) bool, and
    with domain experts ``service`` (B,) int64, the request's service.
    With a critique steer beside the model (:mod:`userlayer.sdk.model.steer`)
    prefill also takes ``steer`` (B, S, d) float: S more prefix positions,
    off for a row of zeros. With a dense item head
    (:mod:`userlayer.sdk.model.dense_search`) prefill's last output is
    ``items`` (B, n_items) float, every item's dense score in head order.

``decode.onnx``
    one beam-search step: inputs ``codes`` (N, 1) int64 and ``origin`` (N,)
    int64 (the beam row each new row continues: the reordering happens
    inside the graph), the prompts' cache as prefill gave it (B rows, never
    copied per beam: the N = B * w beam rows of request ``i`` are rows
    ``i*w ..`` and read it through a group view), the beams' own positions
    ``bk``/``bv`` (L, R, KV, Tn, hd) and ``bpos`` (R,) of the previous step
    (Tn = 0 and ``bpos = next_pos`` at the first step), ``active`` (B,) and
    ``ad.<name>`` (B, ...), and ``want`` (S,) int64, the codes whose logits
    are wanted (the next Semantic ID level's); outputs ``logits`` (N, S) and
    ``out.bk``/``out.bv``/``out.bpos`` one position longer.

A row whose ``active`` is false has no adapter and gets the base model's
output. ``manifest.json`` records the export format, the model fingerprint,
the adapter configuration, the input and output names and the opset.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.model import (
    AdapterConfig,
    ModelError,
    Recommender,
    RowAdapters,
    adapter_shapes,
)
from userlayer.sdk.model.decoding import level_codes
from userlayer.sdk.model.io import fingerprint, load_model
from userlayer.sdk.model.steer import load_steer
from userlayer.sdk.model.tokens import CTX, FIRST_CODE
from userlayer.sdk.model.transformer import BeamCache, KVCache, _LayerCache

__all__ = [
    "EXPORT_FORMAT",
    "ExportError",
    "GraphSpec",
    "ensure_onnx",
    "export_onnx",
    "graph_spec",
]

EXPORT_FORMAT = "userlayer.onnx/3"  # /3: decode shares the prompts' cache, returns one level
OPSET = 18
BEAMS = ("bk", "bv", "bpos")  # the beams' own positions, in and out of decode


class ExportError(CloudError):
    """The model could not be exported, or an export directory is not usable."""


class GraphSpec:
    """Input and output names of the two graphs for one adapter configuration.

    ``base=True`` describes the graphs of the base model alone (no adapter
    inputs at all): what a batch without any personalized row runs.
    """

    def __init__(
        self, model: Recommender, acfg: AdapterConfig, base: bool = False, steer: int = 0
    ) -> None:
        self.acfg = acfg
        self.base = base
        self.steer = 0 if base else steer  # prefix vectors of a critique steer (0: none)
        self.adapter = [] if base else list(adapter_shapes(model.cfg, acfg))
        self.prefix = not base and (acfg.n_prefix_total > 0 or self.steer > 0)
        cache = ["k", "v", *(["pk", "pv"] if self.prefix else []), "key_valid", "next_pos"]
        if self.prefix:
            cache.append("prefix_valid")
        if model.cfg.n_experts:
            cache.append("service")  # each row's request service: its experts route by it
        self.cache = cache  # prefill's outputs after the logits
        self.items = model.cfg.n_items > 0  # the dense item head's scores, prefill's last output
        self.prompt = [n for n in cache if n != "next_pos"]  # what decode reads of them
        ads = [f"ad.{n}" for n in self.adapter]
        rows = [] if base else ["active"]
        self.prefill_inputs = ["tokens", "ctx", *rows, *([] if base else ["mode_weights"]), *ads]
        if self.steer:
            self.prefill_inputs.append("steer")
        self.decode_inputs = ["codes", "origin", "want", *self.prompt, *BEAMS, *rows, *ads]
        self.outputs = ["logits", *cache, *(["items"] if self.items else [])]
        self.decode_outputs = ["logits", *(f"out.{n}" for n in BEAMS)]

    def rows(self, args: tuple[Tensor, ...], mode_weights: bool) -> RowAdapters | None:
        """The adapter rows from the graph's trailing inputs (None for the base graphs).

        Prefill (``mode_weights``) ends with the steer when the graphs have one.
        """
        if self.base:
            return None
        active, rest = args[0], args[1:]
        steer = None
        if mode_weights and self.steer:
            rest, steer = rest[:-1], rest[-1]
        mw = rest[0] if mode_weights else None
        ad = rest[1:] if mode_weights else rest
        return RowAdapters(self.acfg, active, dict(zip(self.adapter, ad, strict=True)), mw, steer)


def graph_spec(
    model: Recommender, acfg: AdapterConfig, base: bool = False, steer: int = 0
) -> GraphSpec:
    """The graphs' input and output names."""
    return GraphSpec(model, acfg, base, steer)


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
    if "service" in spec.cache:
        assert cache.service is not None
        out.append(cache.service)
    return tuple(out)


class _Prefill(nn.Module):
    def __init__(self, model: Recommender, spec: GraphSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, tokens: Tensor, ctx: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        """Prompts in; next-code logits, the cache and (with a head) the items' scores out."""
        rows = self.spec.rows(rest, mode_weights=True)
        h, logits, cache = self.model.run(tokens, ctx, rows, return_cache=True)
        out = _cache_out(logits, cache, self.spec)
        if self.spec.items:
            out = (*out, self.model.item_scores(h[:, -1]))
        return out


class _Decode(nn.Module):
    def __init__(self, model: Recommender, spec: GraphSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(
        self, codes: Tensor, origin: Tensor, want: Tensor, *rest: Tensor
    ) -> tuple[Tensor, ...]:
        """One code per beam row after rows ``origin`` of the beams; ``want``'s logits out."""
        spec = self.spec
        n_prompt = len(spec.prompt)
        c = dict(zip(spec.prompt, rest[:n_prompt], strict=True))
        bk, bv, bpos = rest[n_prompt : n_prompt + 3]
        layers = [
            _LayerCache(
                c["k"][i],
                c["v"][i],
                c["pk"][i] if spec.prefix else None,
                c["pv"][i] if spec.prefix else None,
            )
            for i in range(self.model.cfg.n_layers)
        ]
        # decode reads the beams' positions (bpos), never the prompts' next_pos
        prompt = KVCache(layers, c["key_valid"], bpos[:0], c.get("prefix_valid"), c.get("service"))
        rows = spec.rows(rest[n_prompt + 3 :], mode_weights=False)
        beams_in = BeamCache(bk, bv, bpos)
        logits, beams = self.model.decode(codes, prompt, beams_in, origin, rows, want)
        return logits, beams.k, beams.v, beams.next_pos


def example_inputs(
    model: Recommender,
    acfg: AdapterConfig,
    b: int = 3,
    t: int = 11,
    g: int = 2,
    base: bool = False,
    tn: int = 1,
    steer: int = 0,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Small random inputs for both graphs (tracing, parity tests).

    Decode continues ``g`` beams per prompt that have ``tn`` positions of
    their own already (0: the first step after prefill).
    """
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    if cfg.n_items:  # whole catalog items, so that item lookups (item_input) are in the check
        step = 1 + cfg.n_levels
        items = torch.randint(0, cfg.n_items, (b, t // step + 1), generator=gen)
        codes = model.item_codes[items] + FIRST_CODE + model.code_offsets  # (b, k, L)
        lead = torch.full((*items.shape, 1), CTX, dtype=torch.long)
        steps = torch.cat([lead, codes], -1).reshape(b, -1)
        tokens = torch.cat([steps, torch.full((b, 1), CTX, dtype=torch.long)], 1)[:, -t:]
    else:
        tokens = torch.randint(2, 2 + cfg.n_codes, (b, t), generator=gen)
        tokens[:, -1] = 1
        tokens[:, ::5] = 1
    tokens[0, :3] = 0  # left padding
    ctx = torch.randint(0, 3, (b, t, len(model.ctx_vocab.sizes)), generator=gen)
    ctx[..., 0] = torch.randint(0, model.ctx_vocab.sizes[0], (b, t), generator=gen)  # services
    active = torch.tensor([i % 2 == 0 for i in range(b)])
    mw = torch.zeros(b, max(acfg.n_modes, 1))[:, : acfg.n_modes]
    if acfg.n_modes:
        mw[:, 0] = 1.0
    shapes = adapter_shapes(cfg, acfg)
    ad = tuple(  # rows without adapter hold zeros, as the engine's slab gives them
        torch.randn((b, *s), generator=gen) * 0.05 * active.view(-1, *[1] * len(s))
        for s in shapes.values()
    )
    prefill = (tokens, ctx) if base else (tokens, ctx, active, mw, *ad)
    spec = GraphSpec(model, acfg, base, steer)
    if spec.steer:  # a critique on the odd rows only (no adapter there), zeros elsewhere
        on = torch.tensor([i % 2 == 1 for i in range(b)]).view(-1, 1, 1)
        prefill = (*prefill, torch.randn(b, steer, cfg.d_model, generator=gen) * 0.5 * on)
    with torch.no_grad():
        outs = _Prefill(model, spec)(*prefill)
    cache = dict(zip(spec.cache, outs[1 : 1 + len(spec.cache)], strict=True))
    # the beams so far: g per prompt when tn > 0 (random positions stand in for decoded ones)
    r = b * g if tn else b
    kv = (cfg.n_layers, r, cfg.n_kv_heads, tn, cfg.head_dim)
    bk, bv = torch.randn(kv, generator=gen) * 0.5, torch.randn(kv, generator=gen) * 0.5
    bpos = cache["next_pos"].repeat_interleave(r // b) + tn
    within = torch.randint(0, r // b, (b * g,), generator=gen)
    origin = torch.arange(b).repeat_interleave(g) * (r // b) + within
    codes = torch.randint(2, 2 + cfg.level_sizes[0], (b * g, 1), generator=gen)
    beams = (bk, bv, bpos)
    prompt = tuple(cache[n] for n in spec.prompt)
    rows = () if base else (active, *ad)
    want = level_codes(cfg.level_sizes, 1)
    return prefill, (codes, origin, want, *prompt, *beams, *rows)


def _dynamic_axes(spec: GraphSpec, decode: bool) -> dict[str, dict[int, str]]:
    if decode:
        ax: dict[str, dict[int, str]] = {
            "codes": {0: "N"},
            "origin": {0: "N"},
            "want": {0: "S"},
            "logits": {0: "N", 1: "S"},
            "bk": {1: "R", 3: "Tn"},
            "bv": {1: "R", 3: "Tn"},
            "bpos": {0: "R"},
            "out.bk": {1: "N", 3: "Tn1"},
            "out.bv": {1: "N", 3: "Tn1"},
            "out.bpos": {0: "N"},
        }
        names = spec.prompt  # inputs here, B rows
    else:
        ax = {"tokens": {0: "B", 1: "T"}, "ctx": {0: "B", 1: "T"}, "logits": {0: "B"}}
        if spec.items:
            ax["items"] = {0: "B"}
        if not spec.base:
            ax["mode_weights"] = {0: "B"}
        names = spec.cache
    for name in names:
        if name in ("k", "v"):
            ax[name] = {1: "B", 3: "T"}
        elif name in ("pk", "pv"):
            ax[name] = {1: "B"}
        elif name == "key_valid":
            ax[name] = {0: "B", 1: "T"}
        else:
            ax[name] = {0: "B"}
    if not spec.base:
        ax["active"] = {0: "B"}
    if spec.steer and not decode:
        ax["steer"] = {0: "B"}
    for n in spec.adapter:
        ax[f"ad.{n}"] = {0: "B"}
    return ax


def _steer_vectors(model_dir: str | Path, model: Recommender, fp: str) -> int:
    """Prefix vectors of the critique steer saved beside the model ``fp`` (0: none or unusable).

    A stale or broken steer exports no steer input; the engine switches it off too.
    """
    try:
        got = load_steer(model_dir, fp, model.cfg.d_model)
    except ModelError:
        return 0
    return 0 if got is None else got[0].cfg.n_vectors


def export_onnx(
    model_dir: str | Path, out_dir: str | Path, acfg: AdapterConfig | None = None
) -> dict[str, Any]:
    """Export ``prefill.onnx`` and ``decode.onnx`` plus ``manifest.json``; returns the manifest.

    A critique steer beside the model adds the adapter graphs' ``steer`` input.

    Raises:
        ExportError: if the export fails.
    """
    acfg = acfg or AdapterConfig()
    model = load_model(model_dir).eval()
    fp = fingerprint(model)
    steer = _steer_vectors(model_dir, model, fp)
    for p in model.parameters():
        p.requires_grad_(False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    graphs: dict[str, Any] = {}
    for base in (False, True):
        spec = GraphSpec(model, acfg, base, steer)
        prefill, decode = example_inputs(model, acfg, base=base, steer=steer)
        dec_outputs = spec.decode_outputs
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
        "fingerprint": fp,
        "model": model.cfg.to_dict(),
        "adapter": acfg.to_dict(),
        "steer": steer,
        "items": model.cfg.n_items,  # the dense head's items (prefill's ``items`` output)
        "opset": OPSET,
        **graphs,
        "torch": torch.__version__,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), "utf-8")
    return manifest


def ensure_onnx(model_dir: str | Path) -> Path:
    """``model_dir/onnx``, exported again unless it holds this format of this model's graphs."""
    d = Path(model_dir)
    out = d / "onnx"
    try:
        manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        manifest = {}
    model = load_model(d)
    fp = fingerprint(model)
    if (
        manifest.get("format") != EXPORT_FORMAT
        or manifest.get("fingerprint") != fp
        or manifest.get("steer", 0) != _steer_vectors(d, model, fp)
        or manifest.get("items", 0) != model.cfg.n_items
    ):
        adapter = manifest.get("adapter")
        export_onnx(d, out, AdapterConfig.from_dict(adapter) if adapter else None)
    return out
