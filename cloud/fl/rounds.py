"""One federated round's server logic, independent of the transport.

:class:`RoundServer` holds the state between rounds and turns the replies of
a round into: validated personal packages written straight into the adapter
registry that serves them (the one registry: deleting a user there deletes
what rounds wrote), rejected replies logged with their reason in the same
registry, the aggregated shared part, the round's user-level epsilon, and a
checkpoint.

Trust is per (service, user): a reply for user ``u`` counts only if each of
its packages verifies against a signer enrolled for ``u`` in that service
in the registry (enrolled by the service backend through the API, never from
a package), names ``u`` and the package's service, and carries the round as
its version. User ids must match the API's pattern. The Flower ServerApp
(:mod:`userlayer.cloud.fl.server`) only moves messages; everything that can
be wrong with a reply is decided here.

A refused package of a valid reply never aborts the round: packages are
stored one by one, each refusal logged. What an attempt at a round stored is
listed in ``pending.json`` until the round's checkpoint; a server restarted
after dying in between discards exactly those versions and runs the round
again.

User-level DP of the shared part: users are sampled independently at rate
``q = users_per_round / population`` (nodes selected with probability
``1 - (1 - q)^m`` for ``m`` hosted users, see
:mod:`userlayer.sdk.privacy.sampling`), at most one reply per user and round
is used (later duplicates are rejected; a user's replies must all come from
one node), and the aggregate divides by the fixed ``q * population``. The
round's ``epsilon`` counts the amplification by sampling, which holds against
parties that do not learn who took part; ``epsilon_participation_known`` is
the bound against one that does (a service backend sees its users' packages
of each round): no amplification, as if the user took part every round. All
of its randomness (node selection, noise) comes from the OS CSPRNG;
``RoundConfig.seed`` is a test hook that makes a run reproducible and NOT
private (its summaries say so).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.fl.aggregation import AggregationConfig, aggregate_updates, clip_update
from userlayer.cloud.fl.state import ServerState
from userlayer.cloud.registry import AdapterInfo, AdapterRegistry, RejectedError
from userlayer.sdk.api import ID_PATTERN
from userlayer.sdk.exceptions import PrivacyError
from userlayer.sdk.privacy import (
    DEFAULT_ACCOUNTANT,
    DPRandom,
    Mechanism,
    dp_random,
    epsilon,
    node_probability,
)

__all__ = ["Reply", "RoundConfig", "RoundServer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundConfig:
    """Settings of the federated run; validated on creation."""

    rounds: int = 5
    users_per_round: int = 50  # expected users per round (each sampled independently)
    min_replies: int = 2  # without DP: fewer valid replies leave the shared part as it was
    timeout: float = 900.0
    delta: float = 1e-5
    max_update_norm: float = 100.0  # larger shared updates are rejected, not clipped
    max_package_norm: float = 1e3
    seed: int | None = None  # test hook only: seeds node sampling and noise (NOT private)
    accountant: str = DEFAULT_ACCOUNTANT
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    client: Mapping[str, Any] = field(default_factory=dict)  # sent to nodes each round

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.users_per_round < 1 or self.min_replies < 1:
            raise CloudError("`rounds`, `users_per_round` and `min_replies` should be positive")
        if self.min_replies > self.users_per_round:
            raise CloudError("`min_replies` cannot exceed `users_per_round`")
        try:
            epsilon([], self.delta, self.accountant)
        except PrivacyError as e:
            raise CloudError(str(e)) from e


@dataclass
class Reply:
    """One user's part of a node's reply (or a drop-out when ``error`` is set)."""

    node: int
    user: str = ""
    arrays: dict[str, Tensor] | None = None
    packages: dict[str, bytes] = field(default_factory=dict)  # service -> sealed package
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class RoundServer:
    """Server state plus the validation and aggregation of each round."""

    def __init__(
        self,
        cfg: RoundConfig,
        init: dict[str, Tensor],
        registry: AdapterRegistry,
        state_dir: str | Path,
        rng: DPRandom | None = None,
    ) -> None:
        self.cfg = cfg
        self.rng = rng or dp_random(cfg.seed)
        self.registry = registry
        self.fingerprint = registry.fingerprint
        self.shapes = dict(registry.shapes)
        self.state_dir = Path(state_dir)
        loaded = ServerState.load(self.state_dir)
        self.state = loaded or ServerState(0, {k: v.clone() for k, v in init.items()})
        if set(self.state.shared) != set(self.shapes):
            raise CloudError("checkpointed shared adapter does not match the adapter shapes")
        self.resumed = loaded is not None
        self._homes: dict[str, int] = {}  # user -> the node their replies come from
        stale = self._discard_unfinished()
        if stale:
            logger.warning(
                "discarded %d packages of the unfinished round %d (the server stopped before "
                "its checkpoint; the round runs again)",
                stale,
                self.state.round + 1,
            )

    @property
    def _pending(self) -> Path:
        return self.state_dir / "pending.json"

    def _discard_unfinished(self) -> int:
        """Remove what an attempt at a round stored before dying ahead of its checkpoint."""
        if not self._pending.exists():
            return 0
        doc = json.loads(self._pending.read_text("utf-8"))
        n = 0
        if int(doc["round"]) > self.state.round:
            for service, user, version, sha in doc["stored"]:
                n += self.registry.discard(service, user, int(version), sha)
        self._pending.unlink()
        return n

    @property
    def done(self) -> bool:
        """Whether every configured round has run."""
        return self.state.round >= self.cfg.rounds

    def sample_rate(self, population: int) -> float:
        """Each user's probability of taking part in a round."""
        if population < 1:
            raise CloudError(f"`population` should be positive, got {population}")
        return min(1.0, self.cfg.users_per_round / population)

    def sample(
        self, node_ids: list[int], population: int, hosted: Mapping[int, int] | None = None
    ) -> list[int]:
        """The nodes selected this round (OS randomness).

        Each node independently, with the probability that at least one of its
        ``hosted[node]`` users (default 1) is sampled at the round's rate.
        """
        q = self.sample_rate(population)
        ids = sorted(node_ids)  # node ids can exceed int64: never through numpy
        u = self.rng.uniform(len(ids))
        hosted = hosted or {}
        return [n for n, x in zip(ids, u, strict=True) if x < node_probability(q, hosted.get(n, 1))]

    def epsilon(self, population: int) -> float | None:
        """User-level epsilon of the shared part so far (None if a round had no DP claim)."""
        if any(r.get("epsilon") is None for r in self.state.rounds if r.get("aggregated")):
            return None
        return self._epsilon() if population else 0.0

    def _epsilon(self, participation_known: bool = False) -> float:
        """The shared part's epsilon per user.

        With ``participation_known``: no amplification by sampling (against a party
        that learns who took part, e.g. a service backend that sees its users'
        packages of each round), as if the user took part in every round.
        """
        mechs = [
            Mechanism(s, 1.0 if participation_known else q, n) for s, q, n in self.state.dp_history
        ]
        return epsilon(mechs, self.cfg.delta, self.cfg.accountant)

    def _check_arrays(self, arrays: dict[str, Tensor] | None) -> str | None:
        if arrays is None:
            return "no shared-part update"
        if set(arrays) != set(self.shapes):
            return f"shared-part tensors {sorted(arrays)} do not match {sorted(self.shapes)}"
        for k, shape in self.shapes.items():
            if tuple(arrays[k].shape) != tuple(shape):
                return f"shared-part tensor {k!r} has shape {tuple(arrays[k].shape)}, not {shape}"
            if not torch.isfinite(arrays[k]).all():
                return f"shared-part tensor {k!r} has non-finite values"
        upd = {k: arrays[k].float() - self.state.shared[k] for k in self.shapes}
        _, norm = clip_update(upd, 1.0)
        if norm > self.cfg.max_update_norm:
            return f"shared-part update norm {norm:.3g} exceeds {self.cfg.max_update_norm}"
        return None

    def _check_user(self, r: Reply, seen: set[str], rnd: int) -> str | None:
        if not re.fullmatch(ID_PATTERN, r.user):
            return f"invalid user id {r.user[:40]!r}"
        if r.user in seen:
            return f"duplicate reply for user {r.user!r} in round {rnd} (one per user)"
        # a user hosted by two nodes would be sampled (and budgeted) twice
        home = self._homes.setdefault(r.user, r.node)
        if home != r.node:
            return f"user {r.user!r} replied from node {r.node}, but is hosted by node {home}"
        return None

    def _check_packages(self, r: Reply, rnd: int) -> str | None:
        # a node packages every service its users may be customers of; only those where
        # the user has an enrolled signer count (the others are left out, not refused)
        enrolled = {s: b for s, b in r.packages.items() if self.registry.signers.list(s, r.user)}
        if not enrolled:
            return "no package for a service in which the user has an enrolled signer"
        r.packages = enrolled
        for service, blob in enrolled.items():
            try:
                info = self.registry.verify(service, r.user, blob)
            except RejectedError as e:
                return f"package for {service}: {e}"
            if info.version != rnd:
                return f"package for {service} has version {info.version}, round is {rnd}"
        return None

    def _reject(self, rnd: int, r: Reply, reason: str) -> None:
        service = next(iter(r.packages), "-")
        who = r.user if re.fullmatch(ID_PATTERN, r.user) else "-"
        self.registry.log_rejection(service, who, f"round {rnd}, node {r.node}: {reason}")
        logger.warning("round %d: rejected reply of node %d: %s", rnd, r.node, reason)

    def _store(self, rnd: int, valid: list[Reply]) -> int:
        """Store the valid replies' packages one by one (a refusal never aborts the round)."""
        items = [(svc, r.user, blob) for r in valid for svc, blob in r.packages.items()]
        if not items:
            return 0
        pending: dict[str, Any] = {"round": rnd, "stored": []}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._pending.write_text(json.dumps(pending), "utf-8")
        out = self.registry.put_many(items)
        stored = [o for o in out if isinstance(o, AdapterInfo)]
        pending["stored"] = [[i.service, i.user_id, i.version, i.sha256] for i in stored]
        self._pending.write_text(json.dumps(pending), "utf-8")
        for (svc, user, _), o in zip(items, out, strict=True):
            if isinstance(o, RejectedError):
                logger.warning("round %d: package of %s for %s not stored: %s", rnd, user, svc, o)
        return len(stored)

    def process(
        self, rnd: int, sampled: int, replies: list[Reply], population: int
    ) -> dict[str, Any]:
        """Validate, store, aggregate and checkpoint one round; returns its summary."""
        if rnd != self.state.round + 1:
            raise CloudError(f"round {rnd} out of order (last finished: {self.state.round})")
        t0 = time.perf_counter()
        valid: list[Reply] = []
        seen: set[str] = set()
        dropped = rejected = 0
        for r in replies:
            if r.error is not None:
                dropped += 1
                continue
            reason = (
                self._check_user(r, seen, rnd)
                or self._check_arrays(r.arrays)
                or self._check_packages(r, rnd)
            )
            if reason is not None:
                rejected += 1
                self._reject(rnd, r, reason)
                continue
            seen.add(r.user)
            valid.append(r)
        agg_cfg = self.cfg.aggregation
        q = self.sample_rate(population)
        summary: dict[str, Any] = {
            "round": rnd,
            "sampled": sampled,
            "replied": len(replies) - dropped,
            "dropped": dropped + max(0, sampled - len(replies)),
            "rejected": rejected,
            "valid": len(valid),
            "aggregated": False,
            "epsilon": None,
            "sample_rate": q,
            "rng": self.rng.source,
        }
        summary["stored"] = self._store(rnd, valid)
        if agg_cfg.is_dp or len(valid) >= self.cfg.min_replies:
            updates = [
                {k: r.arrays[k].float() - self.state.shared[k] for k in self.shapes}  # type: ignore[index]
                for r in valid
            ]
            agg = aggregate_updates(updates, agg_cfg, self.shapes, self.rng, q * population)
            self.state.shared = {k: self.state.shared[k] + agg[k] for k in self.shapes}
            summary["aggregated"] = True
            if agg_cfg.is_dp:
                self.state.dp_history.append((agg_cfg.noise_multiplier, q, 1))
                summary["epsilon"] = self._epsilon()
                summary["epsilon_participation_known"] = self._epsilon(participation_known=True)
                summary["accountant"] = self.cfg.accountant
        else:
            logger.warning(
                "round %d: %d valid replies, fewer than %d: shared part not updated",
                rnd,
                len(valid),
                self.cfg.min_replies,
            )
        for key in ("epsilon_user", "seconds"):  # nodes send nothing else (no loss)
            vals = [
                r.metrics[key] for r in valid if key in r.metrics and math.isfinite(r.metrics[key])
            ]
            if vals:
                summary[f"{key}_median"] = float(np.median(vals))
                summary[f"{key}_max"] = float(np.max(vals))
        summary["server_seconds"] = round(time.perf_counter() - t0, 3)
        self.state.round = rnd
        self.state.rounds.append(summary)
        self.state.save(self.state_dir)
        self._pending.unlink(missing_ok=True)
        return summary
