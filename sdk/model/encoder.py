"""The profile encoder: a user's whole history -> a DP release -> the user's prefix vectors.

DESIGN.md's way (b), after User-LLM (user embeddings as soft prompts) and
Embedding-to-Prefix (a projected user embedding as soft tokens), made private:

1. **Per-event vectors** (:meth:`ProfileEncoder.event_vectors`): each event
   contributes, for each time scale ``s`` (``profile_half_lives``; 0 means no
   decay), the block ``a * [w_s * u, w_s]`` where ``u`` is the unit-norm
   encoder embedding of the event's item (a learned, public function of its
   Semantic ID), ``w_s = 0.5 ** (age / half_life_s)`` in (0, 1] its decay
   against the release clock (never against another event), and
   ``a = sqrt(share / (2 * S))``; with ``profile_histogram`` (the default) the
   event also adds ``c * w_0`` to the bin of its item's first Semantic ID
   code (a histogram over the catalog's top-level codes, multi-modal where
   the mean embedding is not), ``c = sqrt(1 - share)``, ``share = 1/2``. So
   every event's vector has L2 norm <= 1 whatever the item or its age.
2. **The release** (on the edge, :mod:`userlayer.edge.encoder`): the sum of
   the user's event vectors plus Gaussian noise N(0, z^2 I). Adding or
   removing one event moves the sum by at most 1 in L2: one Gaussian
   mechanism of sensitivity 1 per event, noise multiplier ``z``, accounted in
   the user's ledger like a DP-SGD training (``Mechanism(z, 1.0, 1)``). The
   count coordinates (``a * sum(w_s)``) travel inside the same release: no
   data-dependent normaliser is used unnoised.
3. **Post-processing** (:meth:`ProfileEncoder.forward`): per scale the noisy
   mean ``sum(w u) / max(sum(w), 1)``, the log of the noisy count and the
   noise-to-count ratio go through a public MLP to ``profile_prefix`` prefix
   vectors of the base's width: the adapter's ``prefix`` tensor. Anything
   computed from the release and public values is covered by its epsilon.

The base is pretrained with these prefixes, noised at a range of noise
multipliers and sometimes absent (``userlayer.tools.train``), so it reads a
noisy prefix and degrades gracefully to no prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from userlayer.sdk.model.config import ModelConfig, ModelError

__all__ = ["ProfileEncoder", "event_ages"]

_MS_PER_DAY = 86_400_000.0
_MARGIN = 1.0 - 1e-6  # every event vector's norm stays below 1 after rounding


class ProfileEncoder(nn.Module):
    """Shared, public encoder of a released profile (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.profile_dim:
            raise ModelError("the model config has no profile encoder (`profile_dim` is 0)")
        self.cfg = cfg
        self.dim = cfg.profile_dim
        self.scales = len(cfg.profile_half_lives)
        self.code = nn.Embedding(cfg.n_codes, cfg.profile_dim)
        self.bins = cfg.level_sizes[0] if cfg.profile_histogram else 0
        feats = self.scales * (cfg.profile_dim + 2) + self.bins
        self.mlp = nn.Sequential(
            nn.Linear(feats, cfg.profile_hidden),
            nn.GELU(),
            nn.Linear(cfg.profile_hidden, cfg.profile_prefix * cfg.d_model),
        )
        nn.init.normal_(self.code.weight, std=1.0)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def release_dim(self) -> int:
        """Size of the released vector: ``S * (profile_dim + 1)`` plus the histogram's bins."""
        return self.scales * (self.dim + 1) + self.bins

    @property
    def _share(self) -> float:
        return 0.5 if self.bins else 1.0

    @property
    def scale_weight(self) -> float:
        """``a = sqrt(share / 2S)``: the embedding blocks' part of the norm bound 1."""
        return math.sqrt(self._share / (2 * self.scales))

    @property
    def histogram_weight(self) -> float:
        """``c = sqrt(1 - share)``: the histogram's part of the norm bound 1."""
        return math.sqrt(1.0 - self._share)

    def event_vectors(
        self, codes: Tensor, age_days: Tensor, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Per-event vectors (..., release_dim), each of L2 norm <= 1 - 1e-6.

        Every vector is divided by ``max(1, its norm)`` and scaled by
        ``1 - 1e-6``: the bound holds after rounding, not only in exact
        arithmetic. Releases compute in float64 (``dtype``), where summing
        even millions of events rounds by far less than that margin; float32
        (the default: the module's dtype) is for training only.

        Args:
            codes: (..., L) flat code indices (token id minus ``FIRST_CODE``).
            age_days: (...) each event's age in days at the release (>= 0).
            dtype: the computation's dtype (float64 for a release).
        """
        if codes.shape[-1] != self.cfg.n_levels:
            raise ModelError(f"`codes` should end in {self.cfg.n_levels} levels, got {codes.shape}")
        emb = self.code(codes).sum(-2)
        dtype = dtype or emb.dtype
        u = F.normalize(emb.to(dtype), dim=-1, eps=1e-6)
        age = age_days.to(dtype).clamp(min=0).unsqueeze(-1)
        blocks = []
        weights = []
        for h in self.cfg.profile_half_lives:
            w = torch.ones_like(age) if h == 0 else torch.exp2(-age / h)
            weights.append(w)
            blocks.extend([w * u, w])
        out = torch.cat(blocks, -1) * self.scale_weight
        if self.bins:
            top = F.one_hot(codes[..., 0].clamp(0, self.bins - 1), self.bins).to(out.dtype)
            out = torch.cat([out, top * weights[0] * self.histogram_weight], -1)
        norm = out.detach().norm(dim=-1, keepdim=True).clamp(min=1.0)
        bounded: Tensor = out / norm * _MARGIN
        return bounded

    def stats(
        self, codes: Tensor, age_days: Tensor, mask: Tensor, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Sum of the event vectors over each row's valid events: (B, release_dim).

        Args:
            codes: (B, M, L) flat code indices.
            age_days: (B, M) ages in days.
            mask: (B, M) bool, the events that count.
            dtype: the computation's dtype (float64 for a release).
        """
        v = self.event_vectors(codes, age_days, dtype)
        return (v * mask.unsqueeze(-1).to(v.dtype)).sum(1)

    def forward(self, released: Tensor, noise_multiplier: Tensor) -> Tensor:
        """Prefix vectors (B, profile_prefix, d_model) from released sums (B, release_dim).

        ``noise_multiplier`` (B,) is the public noise level of each release (0: exact).
        """
        a = self.scale_weight
        b = released.shape[0]
        n_emb = self.scales * (self.dim + 1)
        blocks = released[:, :n_emb].reshape(b, self.scales, self.dim + 1)
        count = blocks[..., -1] / a  # noisy sum of the weights, per scale
        denom = count.clamp(min=1.0)
        mean = blocks[..., :-1] / a / denom.unsqueeze(-1)
        z = noise_multiplier.to(released.dtype).view(b, 1).expand(b, self.scales)
        feats = torch.cat(
            [mean, torch.log1p(count.clamp(min=0)).unsqueeze(-1), (z / a / denom).unsqueeze(-1)],
            -1,
        ).reshape(b, -1)
        if self.bins:  # the histogram as shares of the (first scale's) weight
            hist = released[:, n_emb:] / self.histogram_weight / denom[:, :1]
            feats = torch.cat([feats, hist], -1)
        out: Tensor = self.mlp(feats)
        return out.view(b, self.cfg.profile_prefix, self.cfg.d_model)


def event_ages(times_ms: Tensor, now_ms: Tensor) -> Tensor:
    """Ages in days of events at ``times_ms`` (..., M) for release clocks ``now_ms`` (...)."""
    return (now_ms.unsqueeze(-1) - times_ms).to(torch.float32) / _MS_PER_DAY
