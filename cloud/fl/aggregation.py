"""Aggregation of the shared adapter part under user-level DP, with robust options.

Each valid reply's update (its shared tensors minus the current shared ones)
is clipped to L2 norm ``clip`` over all tensors together, then combined:

- ``mean`` (default): DP-FedAvg (McMahan et al. 2018). The sum of the clipped
  updates (one per user: sensitivity ``clip`` under the add/remove of a
  user) plus Gaussian noise ``N(0, (noise_multiplier * clip)^2)`` per
  coordinate from the OS CSPRNG, divided by a *fixed* denominator: the
  expected number of users per round ``q * population``, never the number of
  replies (which depends on the data). With users sampled independently at
  rate ``q`` this is the Poisson-subsampled Gaussian mechanism, accounted per
  round (:mod:`userlayer.sdk.privacy.accounting`). Under DP a round always
  releases, a noise-only step when no reply was valid. Without noise
  (``noise_multiplier`` 0) it is the plain mean of the replies.
- ``trimmed_mean`` (drop the ``trim`` fraction at each end, per coordinate)
  and ``median``: robust to a minority of bad updates that pass validation.
  Their sensitivity is not that of the mean, so no DP guarantee is claimed
  for the shared part when they are used (the round's epsilon is ``None``);
  personal adapters keep their own record-level DP either way.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` is not used because
it skips aggregation when any reply is an error and its accountant assumes
every sampled node replies; this project must finish rounds with drop-outs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.privacy import DPRandom

__all__ = ["AggregationConfig", "aggregate_updates", "clip_update"]


@dataclass(frozen=True)
class AggregationConfig:
    """How replies are combined; validated on creation."""

    method: str = "mean"  # mean | trimmed_mean | median
    clip: float = 0.5
    noise_multiplier: float = 1.0  # 0 disables the noise (and the DP claim)
    trim: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in ("mean", "trimmed_mean", "median"):
            raise CloudError(
                f"`method` should be mean, trimmed_mean or median, got {self.method!r}"
            )
        if self.clip <= 0 or self.noise_multiplier < 0:
            raise CloudError("`clip` should be > 0 and `noise_multiplier` >= 0")
        if not 0 <= self.trim < 0.5:
            raise CloudError(f"`trim` should be in [0, 0.5), got {self.trim}")

    @property
    def is_dp(self) -> bool:
        """Whether the aggregation is the Gaussian mechanism with a DP claim."""
        return self.method == "mean" and self.noise_multiplier > 0


def clip_update(update: dict[str, Tensor], clip: float) -> tuple[dict[str, Tensor], float]:
    """Scale an update to L2 norm at most ``clip``; returns it and its original norm."""
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in update.values()))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0  # an all-zero update stays zero
    return {k: t * factor for k, t in update.items()}, norm


def aggregate_updates(
    updates: list[dict[str, Tensor]],
    cfg: AggregationConfig,
    shapes: Mapping[str, tuple[int, ...]],
    rng: DPRandom | None = None,
    expected: float | None = None,
) -> dict[str, Tensor]:
    """Combine clipped updates (see the module docstring).

    Args:
        updates: one update per user (at most one per user: the caller deduplicates).
        cfg: the method, clip and noise.
        shapes: every tensor's shape (a DP round with no update is noise only).
        rng: the DP randomness (required when ``cfg.is_dp``).
        expected: the expected number of users per round, the DP mean's denominator.

    Raises:
        CloudError: with no updates (outside DP), updates of other names or shapes,
            or a DP mean without ``rng`` or ``expected``.
    """
    names = set(shapes)
    for i, u in enumerate(updates):
        if set(u) != names or any(tuple(u[k].shape) != tuple(shapes[k]) for k in names):
            raise CloudError(f"update {i} has other tensors or shapes than the adapter")
    clipped = [clip_update(u, cfg.clip)[0] for u in updates]
    if cfg.is_dp:
        if rng is None or expected is None or not expected > 0:
            raise CloudError("a DP mean needs the DP randomness and the expected users per round")
        out = {}
        for k in sorted(names):
            total = torch.zeros(shapes[k], dtype=torch.float32)
            for u in clipped:
                total += u[k].float()
            z = torch.from_numpy(rng.gaussian(tuple(shapes[k]), cfg.noise_multiplier * cfg.clip))
            out[k] = (total + z.float()) / expected
        return out
    if not updates:
        raise CloudError("no updates to aggregate")
    n = len(clipped)
    out = {}
    for k in sorted(names):
        stack = torch.stack([u[k].float() for u in clipped])
        if cfg.method == "mean":
            agg = stack.mean(0)
        elif cfg.method == "median":
            agg = stack.median(0).values
        else:
            cut = math.floor(cfg.trim * n)
            srt = stack.sort(0).values
            agg = srt[cut : n - cut].mean(0) if n - 2 * cut > 0 else srt.mean(0)
        out[k] = agg
    return out
