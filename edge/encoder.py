"""Way (b) where the data lives: the user's profile released through the Gaussian mechanism.

The shared profile encoder (:mod:`userlayer.sdk.model.encoder`) sums one
vector of L2 norm <= 1 per event of the user's history (every event within
the ledger's period, across the services ``events`` covers, decayed against
the release clock ``now``); the sum plus N(0, z^2 I) noise from the OS CSPRNG
is the release, a Gaussian mechanism of sensitivity 1 per event (adding or
removing one event). ``z`` is the smallest noise multiplier whose epsilon
(the ledger's accountant, delta) is within ``epsilon``; the release is
reserved in the user's ledger before the noise is drawn, like a DP-SGD
training, and charged as ``Mechanism(z, sample_rate=1, steps=1)``. The
prefix is post-processing of the release by the public encoder.

With ``favourites`` the same release also carries the user's favourite
items (:mod:`userlayer.sdk.privacy.favourites`): each event's vector is the
profile block scaled by ``sqrt(1 - share)`` beside its item's one-hot count
scaled by ``sqrt(share)``: an event moves the joint vector by at most 1 (its
count block moves by at most ``sqrt(share)`` even though counts are days
with an event, see :mod:`userlayer.sdk.privacy.favourites`), and the noise
N(0, z^2) covers both blocks (the count block over the whole catalog). Dividing each block by
its scale is post-processing, so the profile is read at noise multiplier
``z / sqrt(1 - share)`` and the counts at standard deviation
``z / sqrt(share)``; the ledger is charged ``Mechanism(z, 1, 1)`` once, as
without favourites.

No training, no round: a new user with a handful of events gets a layer at
once (measured with ``userlayer bench`` and ``userlayer eval-privacy``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import torch
from torch import Tensor

from userlayer.edge.exceptions import TrainingError
from userlayer.edge.privacy import PrivacyLedger
from userlayer.sdk.adapter import PrivacyRecord
from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.tokens import FIRST_CODE, item_tokens
from userlayer.sdk.model.transformer import Recommender, adapter_shapes
from userlayer.sdk.privacy import Mechanism, dp_random, noise_multiplier
from userlayer.sdk.privacy.favourites import FavouritesConfig, occasions, select_favourites
from userlayer.sdk.schemas import Event
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["ProfileRelease", "profile_inputs", "release_profile", "zero_adapter"]


@dataclass
class ProfileRelease:
    """The adapter with the released prefix, and what the release cost."""

    adapter: dict[str, Tensor]
    record: PrivacyRecord
    seconds: float
    events: int  # events inside the release (stays on the device)
    favourites: tuple[str, ...] = ()  # released favourite items, least frequent first


def zero_adapter(model: Recommender, acfg: AdapterConfig) -> dict[str, Tensor]:
    """An adapter with no effect but its prefix slots (all zeros)."""
    return {k: torch.zeros(s) for k, s in adapter_shapes(model.cfg, acfg).items()}


def profile_inputs(
    events: Sequence[Event], table: SemanticIdTable, now: datetime, horizon_days: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Codes (1, M, L), ages in days (1, M) and mask (1, M) of the events inside the horizon.

    Events of items outside the Semantic ID table and events not strictly
    older than ``now`` (or older than the horizon) are left out.
    """
    oldest = now - timedelta(days=horizon_days)
    keep = [e for e in events if e.item_id in table.codes and oldest < e.timestamp <= now]
    m = max(1, len(keep))
    codes = np.zeros((1, m, table.n_levels), dtype=np.int64)
    ages = np.zeros((1, m), dtype=np.float64)
    mask = np.zeros((1, m), dtype=bool)
    for i, e in enumerate(keep):
        codes[0, i] = (
            np.asarray(item_tokens(table.level_sizes, table.codes[e.item_id])) - FIRST_CODE
        )
        ages[0, i] = (now - e.timestamp).total_seconds() / 86_400.0
        mask[0, i] = True
    return torch.from_numpy(codes), torch.from_numpy(ages), torch.from_numpy(mask)


def release_profile(
    model: Recommender,
    acfg: AdapterConfig,
    table: SemanticIdTable,
    events: Sequence[Event],
    epsilon: float,
    ledger: PrivacyLedger,
    user_id: str,
    init: Mapping[str, Tensor] | None = None,
    now: datetime | None = None,
    seed: int | None = None,
    favourites: FavouritesConfig | None = None,
) -> ProfileRelease:
    """Release the user's profile prefix at ``epsilon`` per event (see the module docstring).

    ``init`` is the adapter whose ``prefix`` the release replaces (all zeros
    by default); ``seed`` is the test hook of :func:`userlayer.sdk.privacy.dp_random`
    (a seeded release is NOT private); ``favourites`` also releases the user's
    favourite items in the same mechanism (the module docstring).

    Raises:
        TrainingError: the model has no profile encoder or the adapter's prefix does
            not fit it; BudgetExceededError: the release would pass the budget.
    """
    t0 = time.perf_counter()
    enc = model.profile
    if enc is None:
        raise TrainingError("this base model has no profile encoder (`profile_dim` is 0)")
    if acfg.n_prefix != model.cfg.profile_prefix:
        raise TrainingError(
            f"the adapter has {acfg.n_prefix} prefix vectors, the encoder makes "
            f"{model.cfg.profile_prefix}"
        )
    # checks that hold or fail for every user alike, before any event is read: an error
    # raised only for some users would tell whoever sees it something about their data
    if not bool(torch.isfinite(enc.code.weight).all()) or not all(
        bool(torch.isfinite(p).all()) for p in enc.mlp.parameters()
    ):
        raise TrainingError("the base's profile encoder has non-finite weights")
    if tuple(table.level_sizes) != tuple(model.cfg.level_sizes):
        raise TrainingError(
            f"the Semantic ID table's levels {list(table.level_sizes)} are not the base's "
            f"{list(model.cfg.level_sizes)}"
        )
    if now is not None and now.tzinfo is None:
        raise TrainingError("the release clock `now` needs a timezone")
    now = now or datetime.now(UTC)
    rng = dp_random(seed)
    try:
        z = noise_multiplier(epsilon, ledger.delta, 1.0, 1, ledger.accountant)
        mech = Mechanism(z, 1.0, 1)
    except PrivacyError as e:
        raise TrainingError(str(e)) from e
    share = 0.0 if favourites is None else favourites.share
    z_profile = z / math.sqrt(1.0 - share)
    z_counts = 0.0 if favourites is None else z / math.sqrt(share)
    catalog = sorted(table.codes) if favourites is not None else []
    codes, ages, mask = profile_inputs(events, table, now, ledger.period_days)
    with ledger.reserve(user_id, mech, 1, now, rng.source) as reservation, torch.no_grad():
        stats = enc.stats(codes, ages, mask, dtype=torch.float64)
        noise = torch.from_numpy(rng.gaussian(tuple(stats.shape), z_profile))
        released = (stats + noise).float()
        prefix = enc(released, torch.tensor([z_profile]))[0]
        favs: list[str] = []
        if favourites is not None:
            oldest = now - timedelta(days=ledger.period_days)
            inside = [e for e in events if e.item_id in table.codes and oldest < e.timestamp <= now]
            days = [int(e.timestamp.timestamp() // 86_400) for e in inside]
            once = occasions([e.item_id for e in inside], days)
            favs = select_favourites(once, catalog, z_counts, favourites, rng)
    entry = reservation.entry
    adapter = {k: v.detach().clone() for k, v in (init or zero_adapter(model, acfg)).items()}
    adapter["prefix"] = prefix.detach().clone()
    record = PrivacyRecord(
        epsilon=entry.epsilon_after,
        delta=ledger.delta,
        accountant=entry.accountant,
        library=entry.library,
        steps=1,
        noise_multiplier=z,
        sample_rate=1.0,
        clip=1.0,
        unit="event",
        examples_per_unit=1,
        rng=rng.source,
        mechanism="profile",
        favourites_noise=z_counts,
    )
    return ProfileRelease(adapter, record, time.perf_counter() - t0, int(mask.sum()), tuple(favs))
