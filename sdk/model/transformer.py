"""The generative recommender: a decoder-only transformer whose rows carry user layers.

Built bottom-up: RMSNorm with optional FiLM, rotary positions, attention with
grouped-query heads and per-row LoRA, SwiGLU MLP with per-row LoRA, block,
model. Per-row adapters are explicit inputs (:class:`RowAdapters`), gathered
from a slab by row index; a row whose index is -1 has no adapter and its
output equals the base model's bit for bit (its LoRA and FiLM tensors are
zeros, which apply as exact no-ops without a per-row branch; its ``active``
flag switches its prefix positions off; the base path never changes shape).

Prefix vectors (the user's profile embedding and the request mode's
component) form a small second stream that goes through every layer with the
same weights; sequence tokens attend to the prefix positions and to earlier
sequence positions. There is no Python control flow on tensor values, so the
module exports to ONNX with the adapter tensors as graph inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from userlayer.sdk.model.config import AdapterConfig, ModelConfig, ModelError
from userlayer.sdk.model.encoder import ProfileEncoder
from userlayer.sdk.model.tokens import (
    CTX,
    FIRST_CODE,
    PAD,
    ContextVocab,
    level_offsets,
    level_radix,
)

__all__ = ["BeamCache", "KVCache", "Recommender", "RowAdapters", "adapter_shapes", "new_adapter"]


def _lora_dims(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    kv = cfg.n_kv_heads * cfg.head_dim
    d, ff = cfg.d_model, cfg.d_ff
    return {
        "q": (d, d),
        "k": (d, kv),
        "v": (d, kv),
        "o": (d, d),
        "gate": (d, ff),
        "up": (d, ff),
        "down": (ff, d),
    }


def adapter_shapes(cfg: ModelConfig, acfg: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of one user's adapter tensors (no batch dimension)."""
    shapes: dict[str, tuple[int, ...]] = {}
    dims = _lora_dims(cfg)
    for t in acfg.targets:
        d_in, d_out = dims[t]
        shapes[f"lora_a.{t}"] = (cfg.n_layers, acfg.rank, d_in)
        shapes[f"lora_b.{t}"] = (cfg.n_layers, d_out, acfg.rank)
    if acfg.n_prefix:
        shapes["prefix"] = (acfg.n_prefix, cfg.d_model)
    if acfg.film:
        shapes["film_scale"] = (2 * cfg.n_layers + 1, cfg.d_model)
        shapes["film_shift"] = (2 * cfg.n_layers + 1, cfg.d_model)
    if acfg.n_modes and acfg.n_mode_prefix:
        shapes["mode_prefix"] = (acfg.n_modes, acfg.n_mode_prefix, cfg.d_model)
    return shapes


@dataclass
class RowAdapters:
    """Per-row adapter tensors of a batch (leading dimension A).

    ``active`` (A,) marks rows that have an adapter; ``tensors`` maps the
    names of :func:`adapter_shapes` to (A, *shape) tensors; ``mode_weights``
    (A, n_modes) gates the mode components (one-hot for a stated mode, a
    distribution from mode detection, or zeros for none).

    A batch of B = A * g rows may share them in contiguous groups: rows
    ``i*g .. i*g+g-1`` use adapter ``i`` (the beams of one request in beam
    search), without copying the adapter g times.

    A row whose ``active`` is false must hold zeros in its tensors
    (:meth:`gather` and the engine's slab make them so): every row's LoRA
    delta and FiLM scale and shift are applied without a per-row branch, and
    zeros make them exact no-ops, so such a row equals the base model bit for
    bit (``active`` still switches the prefix positions off).

    ``steer`` (A, S, d), when given, holds each row's critique steer
    (:mod:`userlayer.sdk.model.steer`): S more prefix positions, on for a row
    whose vectors are not all zero, whether or not the row has an adapter.
    """

    config: AdapterConfig
    active: Tensor
    tensors: dict[str, Tensor]
    mode_weights: Tensor | None = None
    steer: Tensor | None = None

    @classmethod
    def gather(
        cls,
        config: AdapterConfig,
        slab: dict[str, Tensor],
        index: Tensor,
        mode_weights: Tensor | None = None,
    ) -> RowAdapters:
        """Take each row's adapter from a slab (S, *shape) by ``index`` (-1 = none: zeros)."""
        safe = index.clamp(min=0)
        on = index >= 0

        def take(v: Tensor) -> Tensor:
            rows = v.index_select(0, safe)
            return torch.where(on.view(-1, *[1] * (v.dim() - 1)), rows, torch.zeros_like(rows))

        return cls(config, on, {k: take(v) for k, v in slab.items()}, mode_weights)

    def select(self, rows: Tensor) -> RowAdapters:
        """Reorder/duplicate rows (beam search)."""
        return RowAdapters(
            self.config,
            self.active.index_select(0, rows),
            {n: t.index_select(0, rows) for n, t in self.tensors.items()},
            None if self.mode_weights is None else self.mode_weights.index_select(0, rows),
            None if self.steer is None else self.steer.index_select(0, rows),
        )

    @property
    def rows(self) -> int:
        """A: how many adapter rows (the batch may be a multiple)."""
        return int(self.active.shape[0])

    def check(self, cfg: ModelConfig, rows: int) -> None:
        """Refuse tensors whose shape does not fit the model (names the tensor).

        Raises:
            ModelError: naming the tensor, its shape and the expected one.
        """
        if self.active.dim() != 1 or self.rows == 0 or rows % self.rows:
            raise ModelError(
                f"adapter `active` has shape {tuple(self.active.shape)}: expected (A,) "
                f"with A dividing the {rows} rows of the batch"
            )
        batch = self.rows
        expected = adapter_shapes(cfg, self.config)
        missing = sorted(set(expected) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(expected))
        if missing or extra:
            raise ModelError(f"adapter tensors missing {missing}, unexpected {extra}")
        for name, shape in expected.items():
            got = tuple(self.tensors[name].shape)
            if got != (batch, *shape):
                raise ModelError(
                    f"adapter tensor {name!r} has shape {got}, expected {(batch, *shape)}"
                )
        if self.steer is not None and (
            self.steer.dim() != 3 or tuple(self.steer.shape[::2]) != (batch, cfg.d_model)
        ):
            raise ModelError(
                f"`steer` has shape {tuple(self.steer.shape)}, expected ({batch}, S, {cfg.d_model})"
            )
        if self.mode_weights is not None and tuple(self.mode_weights.shape) != (
            batch,
            self.config.n_modes,
        ):
            raise ModelError(
                f"`mode_weights` has shape {tuple(self.mode_weights.shape)}, "
                f"expected ({batch}, {self.config.n_modes})"
            )


@dataclass
class _LayerCache:
    k: Tensor  # (B, KV, T, hd)
    v: Tensor
    pk: Tensor | None  # prefix keys (B, H, P, hd)
    pv: Tensor | None


@dataclass
class KVCache:
    """Keys and values of past positions, for incremental decoding."""

    layers: list[_LayerCache]
    key_valid: Tensor  # (B, T) bool
    next_pos: Tensor  # (B,) rotary position of the next token
    prefix_valid: Tensor | None  # (B, P) bool
    service: Tensor | None = None  # (B,) the last step's service id (domain experts)

    def select(self, rows: Tensor) -> KVCache:
        """Reorder/duplicate rows (beam search)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, rows)

        return KVCache(
            [
                _LayerCache(
                    lc.k.index_select(0, rows), lc.v.index_select(0, rows), pick(lc.pk), pick(lc.pv)
                )
                for lc in self.layers
            ],
            self.key_valid.index_select(0, rows),
            self.next_pos.index_select(0, rows),
            pick(self.prefix_valid),
            pick(self.service),
        )


@dataclass
class BeamCache:
    """Keys and values of the positions decoded after the prompts, one row per beam.

    Beam search keeps the prompts' own cache (a :class:`KVCache` of B rows,
    one per request) apart and shares it: the N = B * w beam rows of request
    ``i`` (rows ``i*w .. i*w+w-1``) read it through a group view of their
    queries, so reordering beams copies only these few new positions, never
    the prompt's.
    """

    k: Tensor  # (L, N, KV, Tn, hd)
    v: Tensor
    next_pos: Tensor  # (N,) rotary position of each row's next token

    @classmethod
    def start(cls, prompt: KVCache) -> BeamCache:
        """No new position yet: one row per prompt."""
        k = torch.stack([lc.k[:, :, :0] for lc in prompt.layers])
        return cls(k, k, prompt.next_pos)

    def select(self, rows: Tensor) -> BeamCache:
        """Reorder/duplicate rows (each new row continues row ``rows[j]``)."""
        return BeamCache(
            self.k.index_select(1, rows),
            self.v.index_select(1, rows),
            self.next_pos.index_select(0, rows),
        )


@dataclass
class _StepState:
    """What one layer's decode step reads: the prompts' cache (B rows), the beams' own."""

    prompt: _LayerCache
    prompt_valid: Tensor  # (B, Tp) bool
    prefix_valid: Tensor | None  # (B, P) bool
    bk: Tensor  # (N, KV, Tn, hd)
    bv: Tensor


class _Ctx:
    """What every layer needs about the batch's adapters.

    Activations (A*g, T, d) are viewed as (A, g*T, d) so that each adapter row
    meets its group of batch rows (reshapes only: no copies of the adapter).
    """

    def __init__(self, ad: RowAdapters | None) -> None:
        self.ad = ad

    def lora(self, name: str, layer: int, x: Tensor, y: Tensor) -> Tensor:
        ad = self.ad
        if ad is None or f"lora_a.{name}" not in ad.tensors:
            return y
        a = ad.tensors[f"lora_a.{name}"][:, layer]  # (A, r, d_in)
        b = ad.tensors[f"lora_b.{name}"][:, layer]  # (A, d_out, r)
        xg = x.reshape(a.shape[0], -1, x.shape[-1])  # (A, g*T, d_in)
        yg = y.reshape(a.shape[0], -1, y.shape[-1])
        delta = torch.bmm(torch.bmm(xg, a.transpose(1, 2)), b.transpose(1, 2)) * ad.config.scale
        return (yg + delta).reshape(y.shape)  # a row without adapter has zeros: delta 0

    def film(self, idx: int, y: Tensor) -> Tensor:
        ad = self.ad
        if ad is None or "film_scale" not in ad.tensors:
            return y
        scale = ad.tensors["film_scale"][:, idx][:, None, :]
        shift = ad.tensors["film_shift"][:, idx][:, None, :]
        yg = y.reshape(scale.shape[0], -1, y.shape[-1])
        return (yg * (1.0 + scale) + shift).reshape(y.shape)  # zeros: y * 1 + 0 = y


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize over the last dimension."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads, rotary positions and a prefix stream."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd, kv = cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attn_bias)
        self.k = nn.Linear(cfg.d_model, kv, bias=cfg.attn_bias)
        self.v = nn.Linear(cfg.d_model, kv, bias=cfg.attn_bias)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.scale = 1.0 / math.sqrt(hd)

    def _proj(self, c: _Ctx, layer: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (
            c.lora("q", layer, x, self.q(x)),
            c.lora("k", layer, x, self.k(x)),
            c.lora("v", layer, x, self.v(x)),
        )

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.cfg.head_dim).transpose(1, 2)  # (B, n, T, hd)

    def _group(self, q: Tensor) -> Tensor:
        """Queries (B, H, T, hd) as (B, KV, rep*T, hd): head ``h`` reads KV head ``h // rep``.

        Grouped-query attention without copying keys and values per head.
        """
        return q.reshape(q.shape[0], self.cfg.n_kv_heads, -1, q.shape[-1])

    def _ungroup(self, x: Tensor, t: int) -> Tensor:
        """(B, KV, rep*T, n) back to (B, H, T, n)."""
        return x.reshape(x.shape[0], self.cfg.n_heads, t, x.shape[-1])

    def _attend(self, q: Tensor, k: Tensor) -> Tensor:
        """Scaled scores (B, H, T, Tk) of grouped queries against KV heads."""
        t = q.shape[2]
        return self._ungroup((self._group(q) @ k.transpose(-1, -2)) * self.scale, t)

    def _mix(self, probs: Tensor, v: Tensor) -> Tensor:
        """Attention output (B, H, T, hd) from probabilities (B, H, T, Tk) and KV-head values."""
        t = probs.shape[2]
        return self._ungroup(self._group(probs) @ v, t)

    def forward(
        self,
        c: _Ctx,
        layer: int,
        x: Tensor,
        p: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        prefix_valid: Tensor | None,
        cache: _LayerCache | None,
    ) -> tuple[Tensor, Tensor | None, _LayerCache]:
        """Attend; returns the sequence output, the prefix output and this layer's cache."""
        cfg = self.cfg
        q, k, v = self._proj(c, layer, x)
        q = self._heads(q, cfg.n_heads)  # (B, H, T, hd)
        k = self._heads(k, cfg.n_kv_heads)  # (B, KV, T, hd)
        v = self._heads(v, cfg.n_kv_heads)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k = torch.cat([cache.k, k], dim=2)
            v = torch.cat([cache.v, v], dim=2)
        neg = torch.finfo(q.dtype).min
        scores = self._attend(q, k)  # (B, H, T, Tk)
        scores = scores.masked_fill(~mask[:, None], neg)
        out = self._mix(scores.softmax(-1), v)  # base path
        p_out: Tensor | None = None
        pk: Tensor | None = None
        pv: Tensor | None = None
        if prefix_valid is not None:
            if cache is not None and cache.pk is not None and cache.pv is not None:
                pk, pv = cache.pk, cache.pv
            elif p is not None:
                pq_, pk_, pv_ = self._proj(c, layer, p)
                pq = self._heads(pq_, cfg.n_heads)  # (B, H, P, hd)
                pk = self._heads(pk_, cfg.n_kv_heads)  # (B, KV, P, hd)
                pv = self._heads(pv_, cfg.n_kv_heads)
                ps = self._attend(pq, pk)  # (B, H, P, P)
                ps = ps.masked_fill(~prefix_valid[:, None, None, :], neg)
                pa = self._mix(ps.softmax(-1), pv).transpose(1, 2).reshape(p.shape)
                p_out = c.lora("o", layer, pa, self.o(pa))
            if pk is not None and pv is not None:
                sp = self._attend(q, pk)  # (B, H, T, P)
                sp = sp.masked_fill(~prefix_valid[:, None, None, :], neg)
                probs = torch.cat([sp, scores], dim=-1).softmax(-1)
                full = self._mix(probs, torch.cat([pv, v], dim=2))
                has = prefix_valid.any(-1)[:, None, None, None]
                out = torch.where(has, full, out)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, cfg.d_model)
        y = c.lora("o", layer, out, self.o(out))
        return y, p_out, _LayerCache(k, v, pk, pv)

    def decode(
        self,
        c: _Ctx,
        layer: int,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        st: _StepState,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One new token per beam row (N, 1, d) against its request's shared prompt cache.

        The B prompts' keys and values (and prefix vectors) are read through
        a group view of the queries, (B, KV, w * rep, hd), so they are never
        copied per beam; the beams' own positions ``bk``/``bv`` (N, KV, Tn, hd)
        are per row. The softmax over prefix, prompt and own positions is
        combined from the parts' maxima and sums (no concatenation, no
        slicing by a dynamic length: the same code exports to ONNX).
        Returns the output (N, 1, d) and the beams' keys and values with
        this position appended.
        """
        cfg = self.cfg
        kvh, hd = cfg.n_kv_heads, cfg.head_dim
        rep = cfg.n_heads // kvh
        prompt, prefix_valid = st.prompt, st.prefix_valid
        b = prompt.k.shape[0]
        q, k, v = self._proj(c, layer, x)
        q = self._heads(q, cfg.n_heads)  # (N, H, 1, hd)
        k = self._heads(k, kvh)
        v = self._heads(v, kvh)
        q = q * cos + _rotate_half(q) * sin
        k = torch.cat([st.bk, k * cos + _rotate_half(k) * sin], dim=2)  # (N, KV, Tn+1, hd)
        v = torch.cat([st.bv, v], dim=2)
        qn = q.reshape(-1, kvh, rep, hd)  # (N, KV, rep, hd): head h reads KV head h // rep

        def to_b(t: Tensor) -> Tensor:  # (N, KV, rep, X) -> (B, KV, w * rep, X)
            return (
                t.reshape(b, -1, kvh, rep, t.shape[-1])
                .transpose(1, 2)
                .reshape(b, kvh, -1, t.shape[-1])
            )

        def to_n(t: Tensor) -> Tensor:  # (B, KV, w * rep, X) -> (N, KV, rep, X)
            return (
                t.reshape(b, kvh, -1, rep, t.shape[-1])
                .transpose(1, 2)
                .reshape(-1, kvh, rep, t.shape[-1])
            )

        qg = to_b(qn)
        neg = torch.finfo(q.dtype).min
        shared = [(prompt.k, prompt.v, st.prompt_valid)]
        if prefix_valid is not None and prompt.pk is not None and prompt.pv is not None:
            shared.append((prompt.pk, prompt.pv, prefix_valid))
        s_shared = [
            ((qg @ kk.transpose(-1, -2)) * self.scale).masked_fill(~ok[:, None, None, :], neg)
            for kk, _, ok in shared
        ]  # (B, KV, w * rep, S) each
        s_own = (qn @ k.transpose(-1, -2)) * self.scale  # (N, KV, rep, Tn+1)
        m_b = s_shared[0].amax(-1, keepdim=True)
        for s in s_shared[1:]:
            m_b = torch.maximum(m_b, s.amax(-1, keepdim=True))
        m = torch.maximum(to_n(m_b), s_own.amax(-1, keepdim=True))  # (N, KV, rep, 1)
        m_b = to_b(m)
        num_b: Tensor | None = None
        den_b: Tensor | None = None
        for s, (_, vv, _) in zip(s_shared, shared, strict=True):
            e = (s - m_b).exp()
            nb, db = e @ vv, e.sum(-1, keepdim=True)
            num_b = nb if num_b is None else num_b + nb
            den_b = db if den_b is None else den_b + db
        assert num_b is not None
        assert den_b is not None
        e_own = (s_own - m).exp()
        out = (to_n(num_b) + e_own @ v) / (to_n(den_b) + e_own.sum(-1, keepdim=True))
        out = out.reshape(-1, 1, cfg.d_model)  # (N, KV, rep, hd) -> (N, 1, H * hd)
        return c.lora("o", layer, out, self.o(out)), k, v


class MLP(nn.Module):
    """SwiGLU feed-forward with per-row LoRA on gate, up and down.

    With domain experts (``n_experts``), one SwiGLU expert per service is added
    to the shared one; ``route`` (…, E) one-hot picks each position's expert
    (all zeros: the shared FFN alone). Every expert is computed and the route
    masks them (one graph for any mix of services, exportable to ONNX); the
    per-row LoRA stays on the shared FFN.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.n_experts = cfg.n_experts
        if cfg.n_experts:
            e, d, f = cfg.n_experts, cfg.d_model, cfg.expert_ff or cfg.d_ff
            self.e_gate = nn.Parameter(torch.randn(e, d, f) * 0.02)
            self.e_up = nn.Parameter(torch.randn(e, d, f) * 0.02)
            self.e_down = nn.Parameter(torch.randn(e, f, d) * 0.02)

    def forward(self, c: _Ctx, layer: int, x: Tensor, route: Tensor | None = None) -> Tensor:
        """Apply the MLP (and the routed expert)."""
        g = c.lora("gate", layer, x, self.gate(x))
        u = c.lora("up", layer, x, self.up(x))
        h = F.silu(g) * u
        out = c.lora("down", layer, h, self.down(h))
        if self.n_experts and route is not None:
            ge = torch.einsum("btd,edf->btef", x, self.e_gate)
            ue = torch.einsum("btd,edf->btef", x, self.e_up)
            he = F.silu(ge) * ue * route[..., None]  # only the routed expert survives
            out = out + torch.einsum("btef,efd->btd", he, self.e_down)
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, idx: int) -> None:
        super().__init__()
        self.idx = idx
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        c: _Ctx,
        x: Tensor,
        p: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        prefix_valid: Tensor | None,
        cache: _LayerCache | None,
        route: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, _LayerCache]:
        """Run one block on the sequence and the prefix stream."""
        i = self.idx
        n1 = c.film(2 * i, self.norm1(x))
        pn1 = None if p is None else c.film(2 * i, self.norm1(p))
        a, pa, new_cache = self.attn(c, i, n1, pn1, cos, sin, mask, prefix_valid, cache)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(c, i, c.film(2 * i + 1, self.norm2(x)), route))
        if p is not None and pa is not None:
            p = p + pa
            p = p + self.mlp(c, i, c.film(2 * i + 1, self.norm2(p)))
        return x, p, new_cache

    def decode(
        self,
        c: _Ctx,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        st: _StepState,
        route: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decode step of this block (inference: no dropout); see :meth:`Attention.decode`."""
        i = self.idx
        n1 = c.film(2 * i, self.norm1(x))
        a, k, v = self.attn.decode(c, i, n1, cos, sin, st)
        x = x + a
        x = x + self.mlp(c, i, c.film(2 * i + 1, self.norm2(x)), route)
        return x, k, v


class Recommender(nn.Module):
    """The base model. ``forward`` returns item-code logits (B, T, n_codes).

    Inputs: ``tokens`` (B, T) int64 (see :mod:`userlayer.sdk.model.tokens`;
    left padding with 0), ``ctx`` (B, T, 7) int64 context field ids (used at
    context positions), optional per-row ``adapters``, optional ``cache`` of
    earlier positions for incremental decoding.
    """

    rope_cos: Tensor
    rope_sin: Tensor
    level_mask: Tensor
    next_level: Tensor
    item_codes: Tensor
    item_keys: Tensor
    item_feats: Tensor
    radix: Tensor
    code_offsets: Tensor
    token_level: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx_vocab = ContextVocab(cfg.geo_buckets)
        self.tok = nn.Embedding(FIRST_CODE + cfg.n_codes, cfg.d_model, padding_idx=PAD)
        self.ctx = nn.ModuleList(
            nn.Embedding(n, cfg.d_model, padding_idx=0) for n in self.ctx_vocab.sizes
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # the shared profile encoder (way (b)); not part of forward: its output is a prefix
        self.profile = ProfileEncoder(cfg) if cfg.profile_dim else None
        hd = cfg.head_dim
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(cfg.max_len + 64, dtype=torch.float32), inv)
        ang = torch.cat([ang, ang], dim=-1)
        self.register_buffer("rope_cos", ang.cos(), persistent=False)
        self.register_buffer("rope_sin", ang.sin(), persistent=False)
        # level mask (n_levels, n_codes) and the level each token predicts next (-1: none)
        offs = level_offsets(cfg.level_sizes)
        mask = torch.zeros(cfg.n_levels, cfg.n_codes, dtype=torch.bool)
        nxt = torch.full((FIRST_CODE + cfg.n_codes,), -1, dtype=torch.long)
        nxt[CTX] = 0
        lvl_of = torch.full_like(nxt, -1)  # each code token's level (-1: not a code)
        for lvl, (o, s) in enumerate(zip(offs, cfg.level_sizes, strict=True)):
            mask[lvl, o : o + s] = True
            nxt[FIRST_CODE + o : FIRST_CODE + o + s] = lvl + 1 if lvl + 1 < cfg.n_levels else -1
            lvl_of[FIRST_CODE + o : FIRST_CODE + o + s] = lvl
        self.register_buffer("level_mask", mask, persistent=False)
        self.register_buffer("next_level", nxt, persistent=False)
        self.register_buffer("token_level", lvl_of, persistent=False)
        # the dense item head (cfg.n_items): a free vector per item, plus its codes' output
        # embeddings; items in Semantic ID order (item_key), their codes saved with the weights
        radix = torch.tensor(level_radix(cfg.level_sizes), dtype=torch.long)
        self.register_buffer("radix", radix, persistent=False)
        self.register_buffer("code_offsets", torch.tensor(offs, dtype=torch.long), persistent=False)
        free = cfg.n_items and cfg.item_free
        self.item_emb = nn.Embedding(cfg.n_items, cfg.d_model) if free else None
        # the free input vector of each history item (cfg.item_input), in head order too;
        # narrower than d_model (item_input_dim), it is mapped up by one shared matrix
        # (item_tied: no table of its own, the head's free vectors are read instead)
        r = cfg.item_input_dim or cfg.d_model
        own = cfg.item_input and not cfg.item_tied
        self.item_in = nn.Embedding(cfg.n_items, r) if own else None
        low = cfg.item_input and cfg.item_input_dim
        self.item_in_up = nn.Linear(r, cfg.d_model, bias=False) if low else None
        # fixed feature vectors per item (cfg.item_features), in head order, and the two
        # learned maps that read them: into the input, into the head's output vectors
        nf = cfg.item_features
        self.feat_in = nn.Linear(nf, cfg.d_model, bias=False) if nf else None
        self.feat_out = nn.Linear(nf, cfg.d_model, bias=False) if nf else None
        self.register_buffer("item_feats", torch.zeros(cfg.n_items, nf), persistent=bool(nf))
        # saved only with a head: a base without one keeps its state dict and fingerprint
        keep = bool(cfg.n_items)
        codes = torch.zeros(cfg.n_items, cfg.n_levels, dtype=torch.long)
        keys = torch.zeros(cfg.n_items, dtype=torch.long)
        self.register_buffer("item_codes", codes, persistent=keep)
        self.register_buffer("item_keys", keys, persistent=keep)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def _check(self, tokens: Tensor, ctx: Tensor, adapters: RowAdapters | None) -> None:
        if tokens.dim() != 2:
            raise ModelError(f"`tokens` should be (B, T), got shape {tuple(tokens.shape)}")
        b, t = tokens.shape
        if tuple(ctx.shape) != (b, t, len(self.ctx_vocab.sizes)):
            raise ModelError(
                f"`ctx` has shape {tuple(ctx.shape)}, expected {(b, t, len(self.ctx_vocab.sizes))}"
            )
        if adapters is not None:
            adapters.check(self.cfg, b)

    def embed(self, tokens: Tensor, ctx: Tensor, items: bool = True) -> Tensor:
        """Token embeddings plus context-field embeddings: (B, T, d).

        With ``item_input`` or ``item_features`` (and ``items``), each complete
        item's input vector is added where its last code is read
        (:meth:`item_inputs`).
        """
        x: Tensor = self.tok(tokens)
        for f, emb in enumerate(self.ctx):
            x = x + emb(ctx[..., f])
        if items and self.reads_items:
            x = x + self.item_inputs(tokens)
        return x

    @property
    def reads_items(self) -> bool:
        """Whether a history item's input depends on the whole item (free vectors, features)."""
        return self.cfg.item_input or self.feat_in is not None

    def _check_whole_items(self, tokens: Tensor) -> None:
        """A chunk run after a cache must not end an item begun in the cache.

        :meth:`item_inputs` reads an item's codes from the chunk alone, so such
        an item would lose its input vector and the chunk's outputs would
        differ from one run over the whole sequence.
        """
        head = tokens[:, : self.cfg.n_levels - 1]  # too close to the start to hold a whole item
        if bool((self.token_level[head] == self.cfg.n_levels - 1).any()):
            raise ModelError(
                "with item inputs, a chunk run after a cache must not hold the last code of "
                "an item whose first codes are in the cache: run whole items"
            )

    def item_inputs(self, tokens: Tensor) -> Tensor:
        """Item input vectors (B, T, d): an item's at the position of its last code, else 0.

        Only a position that ends a whole item (its codes of levels 0..L-1, in
        order, in ``tokens``) gets one, so no position sees an item before all
        its codes are read: a code being predicted never leaks through it. The
        vector is the item's free input vector (``item_input``) plus its mapped
        fixed features (``item_features``); with ``item_tied`` the free input
        vector is the head's free vector of the item. In training each free vector is
        dropped with probability ``item_input_drop`` (and the kept ones scaled
        by ``1 / (1 - p)``), so the codes stay learned; features, fixed, are not.
        """
        assert self.reads_items
        n_lv, t = self.cfg.n_levels, tokens.shape[1]
        tokens = tokens.long()  # keys of 3-4 levels of 256 codes overflow int32
        # the n_lv tokens ending at each position (B, T, L); stacked slices, as unfold does
        # not export to ONNX over a dynamic length
        padded = F.pad(tokens, (n_lv - 1, 0), value=PAD)
        win = torch.stack([padded[:, lvl : lvl + t] for lvl in range(n_lv)], -1)
        levels = torch.arange(n_lv, device=tokens.device)
        whole = (self.token_level[win] == levels).sum(-1) == n_lv
        idx = self.item_index((win - FIRST_CODE - self.code_offsets).clamp(min=0))
        found = (whole & (idx >= 0)).to(self.tok.weight.dtype)
        idx = idx.clamp(min=0)
        parts = []
        if self.feat_in is not None:
            parts.append(self.feat_in(self.item_feats[idx]) * found[..., None])
        table = self.item_emb if self.cfg.item_tied else self.item_in
        if table is not None:
            keep, p = found, self.cfg.item_input_drop
            if self.training and p > 0:
                keep = keep * (torch.rand(keep.shape, device=keep.device) >= p) / (1.0 - p)
            vec: Tensor = table(idx)
            if self.item_in_up is not None:
                vec = self.item_in_up(vec)
            parts.append(vec * keep[..., None])
        out: Tensor = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return out

    def _prefix(
        self, ad: RowAdapters | None, b: int, dtype: torch.dtype
    ) -> tuple[Tensor | None, Tensor | None]:
        if ad is None or (ad.config.n_prefix_total == 0 and ad.steer is None):
            return None, None
        parts, valid = [], []
        act = ad.active
        if "prefix" in ad.tensors:  # expand(-1, ..): no batch size baked into an export
            parts.append(ad.tensors["prefix"].to(dtype))
            valid.append(act[:, None].expand(-1, ad.config.n_prefix))
        if "mode_prefix" in ad.tensors:
            w = ad.mode_weights
            if w is None:
                w = torch.zeros(ad.rows, ad.config.n_modes, dtype=dtype, device=act.device)
            parts.append(torch.einsum("bm,bmpd->bpd", w.to(dtype), ad.tensors["mode_prefix"]))
            on = act & (w.abs().sum(-1) > 0)
            valid.append(on[:, None].expand(-1, ad.config.n_mode_prefix))
        if ad.steer is not None:  # a critique's steer: on where its vectors are not all zero
            parts.append(ad.steer.to(dtype))
            valid.append(
                (ad.steer.abs().sum(-1) > 0).any(-1, keepdim=True).expand_as(ad.steer[..., 0])
            )
        if not parts:
            return None, None
        p, v = torch.cat(parts, dim=1), torch.cat(valid, dim=1)
        if ad.rows != b:  # rows share adapters in groups (the prefix is per row)
            p = p.repeat_interleave(b // ad.rows, dim=0)
            v = v.repeat_interleave(b // ad.rows, dim=0)
        return p, v

    def _route(self, service: Tensor) -> Tensor | None:
        """One-hot expert per position (…, E) from service ids (2.. services; else none)."""
        if not self.cfg.n_experts:
            return None
        experts = torch.arange(self.cfg.n_experts, device=service.device)
        return (service[..., None] - 2 == experts).to(self.tok.weight.dtype)

    def step_service(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        """Each position's step service id (B, T): that of its step's context position.

        Rows are steps ``[CTX c1 .. cL]`` (a prompt ends with a lone ``CTX``),
        left-padded: a position's step starts ``(t - first) mod (1 + L)``
        positions before it, ``first`` being the row's first real token.
        """
        t = tokens.shape[1]
        first = (tokens == PAD).sum(1, keepdim=True)
        pos = torch.arange(t, device=tokens.device)[None]
        start = pos - torch.remainder(pos - first, 1 + self.cfg.n_levels)
        return ctx[..., 0].gather(1, start.clamp(min=0))

    def forward(
        self,
        tokens: Tensor,
        ctx: Tensor,
        adapters: RowAdapters | None = None,
        cache: KVCache | None = None,
        return_cache: bool = False,
    ) -> tuple[Tensor, KVCache | None]:
        """Compute item-code logits (B, T, n_codes) and, if asked, the updated cache.

        Raises:
            ModelError: if an input or adapter tensor has the wrong shape.
        """
        _, logits, new_cache = self.run(tokens, ctx, adapters, cache, return_cache)
        return logits, new_cache

    def run(
        self,
        tokens: Tensor,
        ctx: Tensor,
        adapters: RowAdapters | None = None,
        cache: KVCache | None = None,
        return_cache: bool = False,
    ) -> tuple[Tensor, Tensor, KVCache | None]:
        """:meth:`forward` that also returns the final hidden states (B, T, d), first."""
        self._check(tokens, ctx, adapters)
        if cache is not None and self.reads_items:
            self._check_whole_items(tokens)
        b, t = tokens.shape
        c = _Ctx(adapters)
        x = self.drop(self.embed(tokens, ctx))
        valid = tokens != PAD
        start = (
            torch.zeros(b, dtype=torch.long, device=tokens.device)
            if cache is None
            else cache.next_pos
        )
        pos = start[:, None] + valid.long().cumsum(1) - 1
        pos = pos.clamp(min=0)
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, hd)
        key_valid = valid if cache is None else torch.cat([cache.key_valid, valid], dim=1)
        tk = key_valid.shape[1]
        causal = torch.ones(t, tk, dtype=torch.bool, device=tokens.device).tril(tk - t)
        mask = causal[None] & key_valid[:, None, :]  # (B, T, Tk)
        if cache is None:
            p, prefix_valid = self._prefix(adapters, b, x.dtype)
        else:
            p, prefix_valid = None, cache.prefix_valid
        service: Tensor | None = None  # the last step's service, per row (experts only)
        route = None  # the prefix stream takes the shared FFN alone: it belongs to no step
        if self.cfg.n_experts:
            if cache is not None and cache.service is not None:  # new codes of the last step
                service = cache.service
                svc = service[:, None].expand(b, t)
            else:
                svc = self.step_service(tokens, ctx)
                service = svc[:, -1]
            route = self._route(svc)
        new_layers = []
        for i, blk in enumerate(self.blocks):
            lc = None if cache is None else cache.layers[i]
            x, p, nlc = blk(c, x, p, cos, sin, mask, prefix_valid, lc, route)
            new_layers.append(nlc)
        h = c.film(2 * self.cfg.n_layers, self.norm(x))
        logits = h @ self.tok.weight[FIRST_CODE:].T  # tied output embedding
        if not return_cache:
            return h, logits, None
        nxt = pos[:, -1] + valid[:, -1].long() if t else start
        return h, logits, KVCache(new_layers, key_valid, nxt, prefix_valid, service)

    def set_items(self, codes: Tensor, features: Tensor | None = None) -> Tensor:
        """Give the dense item head its catalog: (n_items, n_levels) codes; returns the order.

        Items are kept in Semantic ID order (:func:`~userlayer.sdk.model.tokens.item_key`):
        the returned permutation maps head index to row of ``codes``. ``features``
        (n_items, item_features), one row per row of ``codes``, is required exactly
        when the model has ``item_features``.

        Raises:
            ModelError: without a head, with another item count, codes out of range,
                or features missing, unexpected, misshapen or not finite.
        """
        n, lv, nf = self.cfg.n_items, self.cfg.n_levels, self.cfg.item_features
        if not n or tuple(codes.shape) != (n, lv):
            raise ModelError(f"item codes should be ({n}, {lv}), got {tuple(codes.shape)}")
        if features is None and nf:
            raise ModelError(f"this model reads {nf} item features: give them with the codes")
        if features is not None and not nf:
            raise ModelError("this model reads no item features (`item_features` is 0)")
        if features is not None and (
            tuple(features.shape) != (n, nf) or not bool(torch.isfinite(features).all())
        ):
            raise ModelError(
                f"item features should be finite, ({n}, {nf}), got {tuple(features.shape)}"
            )
        sizes = torch.tensor(self.cfg.level_sizes)
        if bool(((codes < 0) | (codes >= sizes)).any()):
            raise ModelError("item codes out of their levels' range")
        keys = (codes.long() * self.radix.cpu()).sum(1)
        order = keys.argsort()
        if bool((keys[order][1:] == keys[order][:-1]).any()):
            raise ModelError("two items share a Semantic ID")
        self.item_keys.copy_(keys[order])
        self.item_codes.copy_(codes.long()[order])
        if features is not None:
            self.item_feats.copy_(features.to(self.item_feats)[order])
        return order

    def item_index(self, codes: Tensor) -> Tensor:
        """Head index of each code tuple (…, n_levels); -1 where no item has it."""
        return self._key_index((codes * self.radix).sum(-1))

    def _key_index(self, keys: Tensor) -> Tensor:
        """Head index of each Semantic ID key (any shape); -1 where no item has it.

        A branchless binary search over the sorted ``item_keys`` (log2 n_items
        gathers, unrolled): it exports to ONNX, which has no searchsorted.
        """
        n = self.cfg.n_items
        if not n:
            return torch.full_like(keys, -1)
        count = torch.zeros_like(keys)  # items whose key is <= keys, found so far
        step = 1 << (n.bit_length() - 1)
        while step:
            cand = count + step
            probe = self.item_keys[(cand - 1).clamp(max=n - 1)]
            count = torch.where((cand <= n) & (probe <= keys), cand, count)
            step >>= 1
        idx = (count - 1).clamp(min=0)
        hit = (count > 0) & (self.item_keys[idx] == keys)
        return torch.where(hit, idx, torch.full_like(idx, -1))

    def item_vectors(self) -> Tensor:
        """Each item's output vector (n_items, d): its codes' embeddings plus extras.

        The extras are its free vector (``item_free``) and its mapped fixed
        features (``item_features``); with neither, the head adds no parameter
        to the base.
        """
        if not self.cfg.n_items:
            raise ModelError("this model has no dense item head (n_items 0)")
        codes = self.tok.weight[FIRST_CODE + self.code_offsets + self.item_codes]  # (n, L, d)
        out: Tensor = codes.sum(1)
        if self.item_emb is not None:
            out = out + self.item_emb.weight
        if self.feat_out is not None:
            out = out + self.feat_out(self.item_feats)
        return out

    def item_scores(self, h: Tensor) -> Tensor:
        """Every item's score (…, n_items) from final hidden states (…, d).

        An item's score is ``h`` times its output vector (:meth:`item_vectors`):
        the sum of its codes' logits read from the same state (the code output
        embeddings are tied), plus ``h`` times its free vector and mapped features.
        """
        out: Tensor = h @ self.item_vectors().T
        return out

    def item_logits(
        self, tokens: Tensor, ctx: Tensor, adapters: RowAdapters | None = None
    ) -> Tensor:
        """Dense scores (B, n_items) of the item each prompt (ending with ``CTX``) asks for."""
        h, _, _ = self.run(tokens, ctx, adapters)
        return self.item_scores(h[:, -1])

    def decode(
        self,
        codes: Tensor,
        prompt: KVCache,
        beams: BeamCache,
        origin: Tensor,
        adapters: RowAdapters | None = None,
        want: Tensor | None = None,
    ) -> tuple[Tensor, BeamCache]:
        """Beam search's step: next-code logits (N, n_codes) after one code per beam row.

        With ``want`` (S,) code indices, only those codes' logits (N, S): the
        next level's codes are all a step needs (a third of the output layer
        or less).

        ``codes`` (N, 1) continue the rows ``origin`` (N,) of ``beams``; the N
        rows are the B prompts' beams in contiguous groups of N / B, and they
        share ``prompt`` (the prefill's cache, B rows) instead of copying it.
        ``adapters`` has B rows (or divides N). Same logits as :meth:`forward`
        with ``prompt`` gathered to every beam, up to float rounding.
        """
        beams = beams.select(origin)
        c = _Ctx(adapters)
        ctx = torch.zeros(
            *codes.shape, len(self.ctx_vocab.sizes), dtype=torch.long, device=codes.device
        )
        x = self.embed(codes, ctx, items=False)  # a beam never reads an item's last code
        route = None
        if self.cfg.n_experts and prompt.service is not None:  # the request's service, per beam
            groups = codes.reshape(prompt.service.shape[0], -1)  # (B, w)
            route = self._route((prompt.service[:, None] + groups * 0).reshape(-1, 1))
        pos = beams.next_pos
        cos, sin = self.rope_cos[pos][:, None, None], self.rope_sin[pos][:, None, None]
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            assert isinstance(blk, Block)
            st = _StepState(
                prompt.layers[i], prompt.key_valid, prompt.prefix_valid, beams.k[i], beams.v[i]
            )
            x, k, v = blk.decode(c, x, cos, sin, st, route)
            ks.append(k)
            vs.append(v)
        h = c.film(2 * self.cfg.n_layers, self.norm(x))
        out_w = self.tok.weight[FIRST_CODE:]  # tied output embedding
        if want is not None:
            out_w = out_w.index_select(0, want)
        logits = h[:, -1] @ out_w.T
        return logits, BeamCache(torch.stack(ks), torch.stack(vs), pos + 1)

    def level_logits(self, logits: Tensor, level: Tensor) -> Tensor:
        """Mask logits (…, n_codes) to the codes of ``level`` (…,) (-1 masks everything)."""
        allowed = self.level_mask[level.clamp(min=0)] & (level >= 0)[..., None]
        return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)

    def _targets(self, tokens: Tensor, last_item_only: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Level predicted at each position, the target code, and which positions count."""
        level = self.next_level[tokens[:, :-1]]
        target = tokens[:, 1:] - FIRST_CODE
        use = (level >= 0) & (target >= 0)
        use = use & self.level_mask[level.clamp(min=0), target.clamp(min=0)]
        if last_item_only:
            t = target.shape[1]
            use = use & (torch.arange(t, device=tokens.device) >= t - self.cfg.n_levels)[None]
        return level, target, use

    def n_targets(self, tokens: Tensor, last_item_only: bool = False) -> Tensor:
        """How many code positions :meth:`loss` averages over (a 0-d int64 tensor).

        Data-parallel training sums the ranks' counts to weight each rank's
        ``reduction="sum"`` loss exactly as one process's mean over the global batch.
        """
        return self._targets(tokens, last_item_only)[2].sum()

    def item_starts(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Where each whole item of the rows is predicted, and which item it is.

        Returns ``start`` (B, T - 1), true at the positions that predict an
        item's first code with all its codes counted (where the dense head's
        loss applies), and ``index`` (B, T - 1), the item's head index there
        (-1 elsewhere). :meth:`loss`'s ``teacher`` holds one row per true
        ``start``, in row-major order.

        Raises:
            ModelError: if the model has no dense item head.
        """
        if not self.cfg.n_items:
            raise ModelError("this model has no dense item head (n_items 0)")
        start, _, idx = self._whole_items(*self._targets(tokens, False))
        return start, torch.where(start, idx, torch.full_like(idx, -1))

    def _whole_items(
        self, level: Tensor, target: Tensor, use: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The item starts the head's losses read, each item's codes (…, L) and head index.

        A start predicts an item's first code with all its codes counted, of
        an item the head knows (index >= 0).
        """
        start, codes = _item_targets(target, level, use, self.cfg.n_levels, self.code_offsets)
        idx = self.item_index(codes)
        return start & (idx >= 0), codes, idx

    def _distill(
        self,
        h: Tensor,
        logp: Tensor,
        target: Tensor,
        level: Tensor,
        use: Tensor,
        teacher: Tensor,
        codes_too: bool = True,
    ) -> Tensor:
        """KL(teacher || model) per item start (B, T - 1): the head's, plus each code level's.

        At an item start the teacher's distribution over items is matched by
        the head's softmax over items, and, level by level along the target's
        codes, the teacher's probability of each next code given the target's
        codes so far (its items with that prefix, summed by their next code) is
        matched by the model's code distribution at that position. A zero
        teacher row adds nothing; a level where the teacher gives the target's
        prefix no probability adds nothing there. Without ``codes_too`` only the
        head's KL counts.
        """
        start, codes, _ = self._whole_items(level, target, use)
        n = int(start.sum())
        if tuple(teacher.shape) != (n, self.cfg.n_items):
            raise ModelError(
                f"the teacher should give ({n}, {self.cfg.n_items}) item probabilities "
                f"(one row per item start), got {tuple(teacher.shape)}"
            )
        out = torch.zeros(target.shape, dtype=h.dtype, device=h.device)
        has = teacher.sum(-1) > 0
        if not bool(has.any()):
            return out
        rows, cols = start.nonzero(as_tuple=True)
        rows, cols, q = rows[has], cols[has], teacher[has].to(h.dtype)
        q = q / q.sum(-1, keepdim=True)

        def kl(p: Tensor, logp_model: Tensor) -> Tensor:
            return (torch.xlogy(p, p) - p * logp_model).sum(-1)

        loss = kl(q, self.item_scores(h[rows, cols]).log_softmax(-1))
        if not codes_too:
            out[rows, cols] = loss
            return out
        want = codes[rows, cols]  # (M, L) the targets' codes
        follows = torch.ones_like(q, dtype=torch.bool)  # items sharing the target's prefix
        for lvl, size in enumerate(self.cfg.level_sizes):
            code = self.item_codes[:, lvl]
            mass = torch.zeros(len(q), size, dtype=q.dtype, device=q.device)
            mass = mass.index_add(1, code, q * follows)
            total = mass.sum(-1, keepdim=True)
            off = int(self.code_offsets[lvl])
            lp = logp[rows, cols + lvl, off : off + size]
            loss = loss + kl(mass / total.clamp(min=1e-12), lp) * (total[:, 0] > 1e-9)
            follows = follows & (code[None] == want[:, lvl : lvl + 1])
        out[rows, cols] = loss
        return out

    def _item_ce(
        self, h: Tensor, target: Tensor, level: Tensor, use: Tensor, smoothing: float = 0.0
    ) -> Tensor:
        """The items' cross-entropy (B, T), at each position that predicts an item's first code."""
        start, _, idx = self._whole_items(level, target, use)
        out = torch.zeros(target.shape, dtype=h.dtype, device=h.device)
        if not bool(start.any()):
            return out
        scores = self.item_scores(h[start])
        out[start] = F.cross_entropy(
            scores, idx[start], reduction="none", label_smoothing=smoothing
        )
        return out

    def loss(
        self,
        tokens: Tensor,
        ctx: Tensor,
        adapters: RowAdapters | None = None,
        reduction: str = "mean",
        last_item_only: bool = False,
        label_smoothing: float = 0.0,
        teacher: Tensor | None = None,
        distill: float = 0.0,
        distill_codes: bool = True,
    ) -> Tensor:
        """Next-code cross-entropy on every code position (each level masked to its codes).

        With ``last_item_only`` only the codes of each row's final item count
        (rows end at the last position: left padding), as when a prompt is
        scored on its target. ``reduction``: ``mean`` over the code positions,
        ``sum`` of them, or ``none`` (per row: the mean over its positions).
        ``label_smoothing`` spreads that share of each target over the codes
        of its level only (and over every item for the dense head's loss).

        ``teacher`` (N, n_items), another model's probabilities of each item
        at the N item starts of :meth:`item_starts` (row-major; a zero row for
        a start it has none for), adds ``distill`` times the KL divergence
        from it: of the head's item distribution, and of each code level's
        distribution along the target's codes (knowledge distillation; a
        one-hot teacher on the target adds exactly the item and code
        cross-entropies). Without ``distill_codes`` only the head's KL is added
        (the code levels learn from the targets alone).

        Raises:
            ModelError: if ``label_smoothing`` is not in [0, 1), ``distill`` is
                negative, or a teacher is given without a head, with
                ``last_item_only``, or misshapen.
        """
        if not 0.0 <= label_smoothing < 1.0:
            raise ModelError(f"`label_smoothing` should be in [0, 1), got {label_smoothing}")
        if not distill >= 0.0:
            raise ModelError(f"`distill` should be >= 0, got {distill}")
        if teacher is not None and (not self.cfg.n_items or last_item_only):
            raise ModelError(
                "a teacher's item probabilities need the dense item head and every "
                "position (not `last_item_only`)"
            )
        h, logits, _ = self.run(tokens, ctx, adapters)
        level, target, use = self._targets(tokens, last_item_only)
        logp = self.level_logits(logits[:, :-1], level).log_softmax(-1)
        ce = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
        if label_smoothing:  # the uniform part over the level's own codes (others are masked)
            allowed = self.level_mask[level.clamp(min=0)]
            spread = -torch.where(allowed, logp, torch.zeros_like(logp)).sum(-1)
            spread = spread / allowed.sum(-1).clamp(min=1)
            ce = (1.0 - label_smoothing) * ce + label_smoothing * spread
        ce = ce * use
        if self.cfg.n_items and self.cfg.item_loss > 0:
            item = self._item_ce(h[:, :-1], target, level, use, label_smoothing)
            ce = ce + self.cfg.item_loss * item
        if teacher is not None and distill > 0:
            kl = self._distill(h[:, :-1], logp, target, level, use, teacher, distill_codes)
            ce = ce + distill * kl
        if reduction == "none":  # per row: mean over its code positions
            return ce.sum(1) / use.sum(1).clamp(min=1)
        if reduction == "sum":
            return ce.sum()
        return ce.sum() / use.sum().clamp(min=1)


def _item_targets(
    target: Tensor, level: Tensor, use: Tensor, n_levels: int, offsets: Tensor
) -> tuple[Tensor, Tensor]:
    """Where an item starts (level 0 predicted, all its codes counted) and its codes (…, L)."""
    b = target.shape[0]
    pad = torch.full((b, n_levels - 1), -1, dtype=target.dtype, device=target.device)
    win = torch.cat([target, pad], 1).unfold(1, n_levels, 1)  # (B, T, L) codes from here on
    ok = torch.cat([use, torch.zeros_like(pad, dtype=torch.bool)], 1).unfold(1, n_levels, 1)
    start = (level == 0) & ok.all(-1)
    return start, (win - offsets).clamp(min=0)


def new_adapter(
    cfg: ModelConfig, acfg: AdapterConfig, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """A fresh adapter: no effect yet, ready to train.

    LoRA ``A`` is random and ``B`` zero (the delta starts at zero), FiLM starts
    at identity, prefix vectors start small and random.
    """
    out: dict[str, Tensor] = {}
    for name, shape in adapter_shapes(cfg, acfg).items():
        if name.startswith("lora_a."):
            out[name] = torch.randn(shape, generator=generator) / math.sqrt(shape[-1])
        elif name in ("prefix", "mode_prefix"):
            out[name] = torch.randn(shape, generator=generator) * 0.02
        else:
            out[name] = torch.zeros(shape)
    return out
