"""Pretraining of the base model: next-item (Semantic ID) training on all users.

AdamW with a linear warm-up and cosine decay, gradient clipping, fixed seeds,
and a checkpoint every ``checkpoint_every`` steps and at every epoch end.
Checkpoints are safetensors plus JSON (weights, AdamW moments, the step, and
the best validation epoch's weights), never pickles. A run restarted on the
same output directory resumes from the last checkpoint; the batch order is a
pure function of ``(seed, epoch)`` and every random draw of a step (dropout,
private rows) a function of ``(seed, step)``, so an interrupted and resumed run
ends with the same weights as an uninterrupted one. The model written at the
end holds the weights of the best validation epoch: the lowest validation
loss, or with ``select="ndcg"`` the highest beam-search NDCG@10.

Data-parallel: under ``torchrun`` (``torchrun --nproc-per-node N -m
userlayer.tools.cli pretrain ...``; multi-node with ``--nnodes``,
``--node-rank`` and ``--rdzv-endpoint``) each rank trains on its share of
every global batch with DistributedDataParallel (gloo on CPU, NCCL on
GPUs); see :func:`pretrain`.

With a profile encoder (``profile_dim`` > 0, the default), every step also
trains on private-regime rows: a random training event as the target, the
current session before it as the prompt, and the prefix the encoder makes
from every earlier event (:mod:`userlayer.sdk.model.encoder`), released with
Gaussian noise at a random noise multiplier (log-uniform over
``profile_noise``; exact for a ``profile_exact`` share of rows) or absent
(``profile_absent``), so the base learns to read a DP profile at any budget
and to do without one. With ``favourites`` > 0 the rows that have a prefix
also get the favourites the same release would carry
(:mod:`userlayer.sdk.privacy.favourites`, the default share 0.5, so the
counts' noise equals the row's profile noise multiplier) as prompt steps
before the session, as the cloud serves them. This noise trains robustness;
it is not a privacy mechanism (pretraining data are public or consented) and
uses torch's and numpy's seeded RNGs.

After every epoch the run measures the validation loss: the mean code
cross-entropy of each sampled user's held-out validation item (the one before
the test item, never trained on) given their last 20 items (fewer if the
model's window is shorter). It tells a model that cannot fit (training and
validation loss close) from one that memorises (validation loss rising while
training loss falls). The loss is a coarse stand-in for the ranking (two
checkpoints of one loss can rank 5% apart, docs/model.md), so ``select="ndcg"``
also ranks the same users after every epoch by beam search (k 10, beam 20, no
item excluded, as the engine serves), reports R@10 and N@10, and keeps the
epoch with the best NDCG@10. It costs one beam search over the validation users
per epoch (rank 0 ranks; the other ranks wait).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from userlayer.sdk.critique import CATALOG_FILE, catalog_document
from userlayer.sdk.model.config import AdapterConfig, ModelConfig
from userlayer.sdk.model.io import RANKING_KEY, save_model
from userlayer.sdk.model.tokens import CTX, PAD, ContextVocab, item_tokens
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.model.trie_search import TensorTrie
from userlayer.sdk.privacy.favourites import FavouritesConfig, occasions, top_favourites
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
from userlayer.tools.data.format import Dataset
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.sids.features import EMBEDDING_FILE, codes_digest, load_item_embedding
from userlayer.tools.train.examples import (
    Prompt,
    UserSequences,
    build_prompts,
    epoch_batches,
    pack_scored,
    private_rows,
    profile_inputs,
    training_windows,
)
from userlayer.tools.train.teacher import Teacher, load_teacher

__all__ = [
    "EpochReport",
    "PretrainConfig",
    "PretrainResult",
    "pretrain",
    "validation_loss",
]

logger = logging.getLogger(__name__)
_CKPT = "checkpoint"
_BEST = "best.safetensors"  # in the checkpoint directory: the best validation epoch's weights
SELECTIONS = ("loss", "ndcg")  # PretrainConfig.select


@dataclass(frozen=True)
class PretrainConfig:
    """Training settings and model size; validated on creation."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    max_steps: int | None = None  # stop early (leaving a checkpoint), e.g. to test resume
    valid_users: int = 2000  # users sampled for the per-epoch validation loss (0: none)
    threads: int | None = None  # runtime only; not stored in the model
    # runtime only: "cpu", "cuda" or "cuda:N" for a one-process run (None: the CPU);
    # under torchrun the backend decides (NCCL: each rank's GPU, gloo: the CPU)
    device: str | None = None
    min_steps: int = 0  # raise the epochs until the run takes at least this many steps
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    profile_absent: float = 0.15  # share of private rows without a prefix
    profile_exact: float = 0.2  # share of private rows with an exact (noise-free) profile
    profile_noise: tuple[float, float] = (0.3, 8.0)  # noise multipliers of the others
    favourites: int = 10  # favourites simulated in private rows with a prefix (0: none)
    item_head: bool = False  # a dense head over every item of the table (ModelConfig.n_items)
    select: str = "loss"  # which validation figure picks the kept epoch: "loss" or "ndcg"
    # give the head's items fixed features: the embedding the IDs were built from, read
    # from the data directory's item_embedding.safetensors (`sids build --save-embedding`)
    item_features: bool = False
    # of the training loss (codes within their level; items): the training losses it reports
    # are smoothed, so not comparable with an unsmoothed run's; the validation loss is not
    label_smoothing: float = 0.0
    # knowledge distillation: a teacher directory (`userlayer teacher`), the weight of the
    # KL divergence from its item distribution (head and code levels; 0: none) and the
    # temperature of its softmax; the training losses reported then include the KL
    # (not comparable with a run without it); the validation loss does not.
    # distill_codes False: the head's KL only (the code levels learn from the targets)
    teacher: str | None = None
    distill: float = 0.0
    distill_temperature: float = 1.0
    distill_codes: bool = True

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ToolsError(f"`select` should be one of {SELECTIONS}, got {self.select!r}")
        if self.select == "ndcg" and self.valid_users == 0:
            raise ToolsError("`select` 'ndcg' ranks the validation users: `valid_users` is 0")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ToolsError(f"`{name}` should be positive, got {getattr(self, name)}")
        if self.valid_users < 0:
            raise ToolsError(f"`valid_users` should be >= 0, got {self.valid_users}")
        if not 0 < self.lr < 1:
            raise ToolsError(f"`lr` should be in (0, 1), got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ToolsError("`warmup_steps`, `weight_decay` should be >= 0 and `grad_clip` > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ToolsError(f"`label_smoothing` should be in [0, 1), got {self.label_smoothing}")
        if self.item_features and not self.item_head:
            raise ToolsError("`item_features` are the dense item head's: set `item_head` too")
        if self.min_steps < 0:
            raise ToolsError(f"`min_steps` should be >= 0, got {self.min_steps}")
        if not self.distill >= 0 or not self.distill_temperature > 0:
            raise ToolsError(
                f"`distill` should be >= 0 and `distill_temperature` > 0, got "
                f"{self.distill}, {self.distill_temperature}"
            )
        if self.distill > 0 and (self.teacher is None or not self.item_head):
            raise ToolsError("`distill` needs a `teacher` directory and the dense `item_head`")
        if self.teacher is not None and self.distill == 0:
            raise ToolsError("a `teacher` is read only with `distill` > 0: set both or neither")
        if not self.distill_codes and self.distill == 0:
            raise ToolsError(
                "`distill_codes` False chooses what `distill` adds: set `distill` > 0 and a "
                "`teacher`, or leave it True"
            )
        if self.device is not None:
            _parse_device(self.device)
        if not 0 <= self.favourites <= 64:
            raise ToolsError(f"`favourites` should be in [0, 64], got {self.favourites}")
        lo, hi = self.profile_noise
        if not (0 <= self.profile_absent <= 1 and 0 <= self.profile_exact <= 1 and 0 < lo <= hi):
            raise ToolsError(
                "`profile_absent` and `profile_exact` should be in [0, 1] and `profile_noise` "
                f"an increasing positive range, got {self.profile_absent}, "
                f"{self.profile_exact}, {self.profile_noise}"
            )


@dataclass
class PretrainResult:
    """What a run produced."""

    out: Path
    fingerprint: str
    steps: int
    losses: list[float]
    seconds: float
    finished: bool
    valid_losses: list[float] = field(default_factory=list)  # one per finished epoch
    # with select="ndcg": per finished epoch, the validation users' beam {"R@10", "N@10"}
    valid_ranks: list[dict[str, float]] = field(default_factory=list)
    # the epoch whose weights the model holds (the last without validation users); None
    # while unfinished. Validation figures are rank 0's: other ranks hold what they resumed
    best_epoch: int | None = None


def _lr(cfg: PretrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _validation_prompts(
    seqs: UserSequences, users: int, seed: int, max_history: int
) -> list[Prompt]:
    """The sampled users' validation prompts (the loss and the head's ranking read them)."""
    prompts = build_prompts(seqs, "valid", "full", max_history=max_history)
    if users == 0 or not prompts:
        return []
    pick = np.random.default_rng([seed, 1]).permutation(len(prompts))[:users]
    return [prompts[i] for i in sorted(pick)]


def choose_ranking(
    model: Recommender, table: SemanticIdTable, prompts: list[Prompt]
) -> dict[str, Any]:
    """Which ranking serves a base with a dense item head best, on validation prompts.

    Each of beam, dense, beam+dense and fused ranks the prompts (k 10, beam 20, no
    item excluded, as the engine serves); the best validation NDCG@10 is
    ``preferred``, what the engine's ``auto`` ranking serves. Whether the
    head ranks better than the beam depends on the Semantic IDs and the
    head's loss weight (docs/model.md), so it is measured, not assumed.
    """
    from userlayer.tools.eval.dense import rank_head
    from userlayer.tools.eval.evaluate import EvalConfig, rank_generative

    ndcg = {"beam": rank_generative(model, table.trie(), prompts, EvalConfig())["all"]["N@10"]}
    for mode, m in rank_head(model, TensorTrie(table), prompts).items():
        ndcg[mode] = m["all"]["N@10"]
    best = max(ndcg, key=lambda m: (ndcg[m], m == "beam"))  # a tie: the beam
    return {"preferred": best, "valid_ndcg10": ndcg, "users": len(prompts)}


def validation_ranks(model: Recommender, trie: SidTrie, prompts: list[Prompt]) -> dict[str, float]:
    """Beam-search R@10 and N@10 of validation prompts (k 10, beam 20, no item excluded).

    Ranks in eval mode (no dropout, so no RNG draw) on the CPU, as the engine
    serves; a model on a GPU is ranked as a CPU copy. Restores the model's mode.
    Under torchrun the other ranks wait at the next barrier meanwhile (about
    5 s for 2,000 users at the default size on 2 cores, 8 s at d_model 256):
    keep ``valid_users`` well inside the process group's timeout.
    """
    from userlayer.tools.eval.evaluate import EvalConfig, rank_generative

    ranker = model if model.tok.weight.device.type == "cpu" else copy.deepcopy(model).cpu()
    was_training = model.training
    ranker.eval()
    try:
        m = rank_generative(ranker, trie, prompts, EvalConfig())["all"]
    finally:
        model.train(was_training)
    return {"R@10": round(m["R@10"], 5), "N@10": round(m["N@10"], 5)}


@torch.no_grad()
def validation_loss(model: Recommender, rows: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean target loss of rows from :func:`pack_scored`.

    Runs in eval mode (no dropout, so no RNG draw) and restores the model's mode.
    """
    was_training = model.training
    model.eval()
    dev = model.tok.weight.device
    tok, ctx = rows[0].to(dev), rows[1].to(dev)
    total = 0.0
    for s in range(0, len(tok), 256):
        width = int((tok[s : s + 256] != PAD).sum(1).max())
        part = model.loss(
            tok[s : s + 256, -width:],
            ctx[s : s + 256, -width:],
            reduction="none",
            last_item_only=True,
        )
        total += float(part.sum())
    model.train(was_training)
    return round(total / len(tok), 5)


def _save_checkpoint(
    d: Path,
    model: Recommender,
    opt: torch.optim.AdamW,
    step: int,
    losses: list[float],
    valid: list[float],
    best: bool = False,
    ranks: list[dict[str, float]] | None = None,
) -> None:
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                n = names[id(p)]
                tensors[f"opt.{n}.exp_avg"] = st["exp_avg"].cpu().contiguous()
                tensors[f"opt.{n}.exp_avg_sq"] = st["exp_avg_sq"].cpu().contiguous()
                tensors[f"opt.{n}.step"] = st["step"].reshape(1).float().cpu()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "trainer.json").write_text(
        json.dumps(
            {"step": step, "losses": losses, "valid_losses": valid, "valid_ranks": ranks or []}
        ),
        "utf-8",
    )
    if best:  # this step ends the best validation epoch so far: its weights
        save_file(
            {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(tmp / _BEST)
        )
    elif (d / _BEST).exists():  # an earlier epoch's stay with the checkpoint
        shutil.copy2(d / _BEST, tmp / _BEST)
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)  # atomic switch: a crash leaves the old or the new checkpoint


def _load_checkpoint(
    d: Path, model: Recommender, opt: torch.optim.AdamW
) -> tuple[int, list[float], list[float], list[dict[str, float]]]:
    tensors = load_file(str(d / "state.safetensors"))
    meta = json.loads((d / "trainer.json").read_text("utf-8"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for n, p in model.named_parameters():
        if f"opt.{n}.exp_avg" in tensors:
            opt.state[p] = {  # on the parameter's device (a GPU rank's)
                "exp_avg": tensors[f"opt.{n}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].to(p.device),
                "step": tensors[f"opt.{n}.step"].reshape(()).clone(),
            }
    ranks = [{k: float(v) for k, v in r.items()} for r in meta.get("valid_ranks", [])]
    return int(meta["step"]), list(meta["losses"]), list(meta.get("valid_losses", [])), ranks


def _private_targets(seqs: UserSequences, holdout: int = 2) -> np.ndarray:
    """Every (user, event) that can be a private row's target: not held out, not the first."""
    pairs = [(u, t) for u, tok in enumerate(seqs.tokens) for t in range(1, len(tok) - holdout)]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class _Catalog:
    """The catalog as the favourites' simulation needs it: codes and service ids by index."""

    index: dict[str, int]
    tokens: np.ndarray  # (N, L) code token ids
    service: np.ndarray  # (N,) context service ids

    @classmethod
    def of(cls, table: SemanticIdTable, vocab: ContextVocab) -> _Catalog:
        items = sorted(table.codes)
        return cls(
            {item: i for i, item in enumerate(items)},
            np.asarray([item_tokens(table.level_sizes, table.codes[i]) for i in items]),
            np.asarray([vocab.encode(str(table.services[i]))[0] for i in items]),
        )

    def favourites(
        self, items: Sequence[str], sigma: float, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Catalog indices a release at count noise ``sigma`` would carry, least frequent first.

        ``items`` holds one item id per occasion (``favourites.occasions``).
        """
        n = len(self.tokens)
        counts = np.bincount([self.index[i] for i in items if i in self.index], minlength=n)
        noisy = counts + sigma * rng.standard_normal(n) if sigma > 0 else counts.astype(float)
        return top_favourites(noisy, sigma, FavouritesConfig(k=k))

    def steps(self, fav: np.ndarray, request: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prompt steps of favourites (tokens, ctx) with the request's context row."""
        levels = self.tokens.shape[1]
        tok = np.concatenate([np.full((len(fav), 1), CTX), self.tokens[fav]], 1).reshape(-1)
        ctx = np.zeros((len(fav), 1 + levels, len(request)), dtype=np.int64)
        ctx[:, 0] = request
        ctx[:, 0, 0] = self.service[fav]
        return tok, ctx.reshape(-1, len(request))


@dataclass
class _PrivateBatch:
    """One rank's share of a step's private rows (see the module docstring)."""

    tok: Tensor
    ctx: Tensor
    codes: Tensor
    ages: Tensor
    mask: Tensor
    z: Tensor  # (n,) noise multipliers (0: exact profile)
    noise: Tensor  # (n, release_dim) standard normal draws
    absent: Tensor  # (n,) bool: no prefix at all

    def to(self, dev: torch.device) -> _PrivateBatch:
        return _PrivateBatch(*(getattr(self, f.name).to(dev) for f in fields(self)))


def _private_batch(
    seqs: UserSequences,
    pairs: np.ndarray,
    cfg: PretrainConfig,
    step: int,
    batch: int,
    release_dim: int,
    max_items: int,
    catalog: _Catalog | None,
    part: slice,
) -> _PrivateBatch:
    """The ``part`` of a step's ``batch`` private rows with noisy, exact or absent profiles.

    Every draw is a function of ``(seed, step)`` over the whole batch (a row's
    favourites of ``(seed, step, row)``), so a data-parallel rank's part is
    exactly its rows of what one process would draw.
    """
    rng = np.random.default_rng([cfg.seed, step, 7])
    pick_all = pairs[rng.integers(0, len(pairs), batch)]
    lo, hi = cfg.profile_noise
    z_all = np.exp(rng.uniform(math.log(lo), math.log(hi), batch))
    z_all[rng.uniform(size=batch) < cfg.profile_exact] = 0.0
    absent_all = rng.uniform(size=batch) < cfg.profile_absent
    noise_all = rng.standard_normal((batch, release_dim)).astype(np.float32)
    rows = np.arange(batch)[part]
    pick = [(int(u), int(t)) for u, t in pick_all[rows]]
    z, absent = z_all[rows], absent_all[rows]
    before = None
    if catalog is not None and cfg.favourites:
        before = [
            None
            if absent[i]
            else catalog.steps(
                catalog.favourites(
                    occasions(seqs.items[u][:t], (seqs.times[u][:t] // 86_400_000).tolist()),
                    float(z[i]),
                    cfg.favourites,
                    np.random.default_rng([cfg.seed, step, 7, int(r)]),
                ),
                seqs.ctx[u][t],
            )
            for i, (r, (u, t)) in enumerate(zip(rows, pick, strict=True))
        ]
    tok, ctx = private_rows(seqs, pick, before, max_items)
    codes, ages, mask = profile_inputs(seqs, pick)
    return _PrivateBatch(
        tok,
        ctx,
        codes,
        ages,
        mask,
        torch.from_numpy(z).float(),
        torch.from_numpy(noise_all[rows]),
        torch.from_numpy(absent),
    )


class _StepLoss(nn.Module):
    """One step's loss as a module's forward, so that DistributedDataParallel can wrap it.

    Each part is a sum over this rank's code positions divided by the global
    batch's count (``n_main``, ``n_private``), times the world size: with
    DistributedDataParallel's gradient averaging, every rank's gradient is
    exactly that of one process's mean over the global batch.
    """

    def __init__(
        self,
        model: Recommender,
        world: int,
        label_smoothing: float = 0.0,
        teacher: Teacher | None = None,
        distill: float = 0.0,
        temperature: float = 1.0,
        distill_codes: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.world = world
        self.smoothing = label_smoothing
        self.teacher = teacher  # not a submodule: frozen, and never in the checkpoint
        self.distill = distill
        self.temperature = temperature
        self.distill_codes = distill_codes
        self.acfg = AdapterConfig(
            n_prefix=model.cfg.profile_prefix, film=False, n_modes=0, targets=()
        )

    def forward(
        self,
        tok: Tensor,
        ctx: Tensor,
        n_main: Tensor,
        priv: _PrivateBatch | None,
        n_private: Tensor | None,
    ) -> Tensor:
        """The scaled loss of this rank's rows."""
        if tok.shape[0] == 0:  # an empty share of a short batch: zero, with zero gradients
            return torch.stack([p.sum() for p in self.model.parameters()]).sum() * 0.0
        soft = None
        if self.teacher is not None and self.distill > 0:
            soft = self.teacher.probs(*self.model.item_starts(tok), self.temperature)
        loss = self.model.loss(
            tok,
            ctx,
            reduction="sum",
            label_smoothing=self.smoothing,
            teacher=soft,
            distill=self.distill,
            distill_codes=self.distill_codes,
        )
        loss = loss / n_main.clamp(min=1)
        if priv is not None and n_private is not None:
            enc = self.model.profile
            assert enc is not None
            stats = enc.stats(priv.codes, priv.ages, priv.mask)
            prefix = enc(stats + priv.z[:, None] * priv.noise, priv.z)
            rows = RowAdapters(self.acfg, ~priv.absent, {"prefix": prefix})
            part = self.model.loss(
                priv.tok,
                priv.ctx,
                rows,
                reduction="sum",
                last_item_only=True,
                label_smoothing=self.smoothing,
            )
            loss = loss + part / n_private.clamp(min=1)
        return loss * self.world


@dataclass(frozen=True)
class EpochReport:
    """What one finished epoch shows: the rate, the losses, the speed."""

    epoch: int
    lr: float  # at the epoch's last step
    train_loss: float  # mean over the epoch's steps
    valid_loss: float | None  # None without validation users
    seq_per_s: float  # training sequences per second over the epoch (all ranks)
    best: bool  # the best validation epoch so far by ``select`` (its weights are kept)
    valid_ranks: dict[str, float] | None = None  # beam R@10 and N@10 (select="ndcg" only)


@dataclass(frozen=True)
class _Dist:
    """This process's place in a data-parallel run (``torchrun`` sets the environment)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False  # this run started the process group (and ends it)

    @classmethod
    def from_env(cls, device: str | None = None) -> _Dist:
        """One process (on ``device``, default the CPU), or the rank ``torchrun`` started.

        Under torchrun the backend decides the device (gloo: the CPU; NCCL:
        the rank's GPU), so ``device`` is refused there, before any process
        group starts.

        Raises:
            ToolsError: ``device`` under torchrun, or a device this process cannot use.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            if device is None:
                return cls()
            dev = _parse_device(device)
            if dev.type == "cuda":
                if device == "cuda":  # no index: the current GPU, by its index
                    dev = torch.device("cuda", torch.cuda.current_device())
                torch.cuda.set_device(dev)  # anything implicit lands on it too
            return cls(device=dev)
        if device is not None:
            raise ToolsError(
                "`device` is for a one-process run: under torchrun each rank's device "
                "follows the backend (NCCL: its GPU, LOCAL_RANK; gloo: the CPU)"
            )
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        backend = os.environ.get("USERLAYER_DIST_BACKEND") or ("nccl" if cuda else "gloo")
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group(backend)
        dev = torch.device("cpu")
        if backend == "nccl":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        return cls(dist.get_rank(), dist.get_world_size(), dev, owned)

    def total(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over the ranks (``t`` itself in one process)."""
        if self.world > 1:
            import torch.distributed as dist

            t = t.clone()
            dist.all_reduce(t)
        return t

    def agree(self, value: int) -> bool:
        """Whether every rank holds the same ``value`` (True in one process)."""
        if self.world == 1:
            return True
        t = torch.tensor([value, -value], dtype=torch.long, device=self.device)
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]) == value and int(t[1]) == -value

    def barrier(self) -> None:
        """Wait for every rank (rank 0 writes checkpoints; the others must not run ahead)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """End the process group if this run started it."""
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _parse_device(name: str) -> torch.device:
    """``name`` as a torch device: the CPU, or a CUDA GPU that this process can see.

    Raises:
        ToolsError: if ``name`` is no such device.
    """
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ToolsError(f"`device` should be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ToolsError(f"`device` should be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ToolsError(f"`device` {name!r}: no CUDA GPU is visible to this process")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ToolsError(
                f"`device` {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible"
            )
    return dev


def pretrain(
    data_dir: str | Path,
    out: str | Path,
    cfg: PretrainConfig | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> PretrainResult:
    """Train the base model on a dataset with Semantic IDs; resume if ``out`` has a checkpoint.

    Under ``torchrun`` every rank takes its share of each global batch of
    ``batch_size`` rows (DistributedDataParallel; gloo on CPU, NCCL on GPUs),
    and the run follows the loss curve one process would (the loss is weighted
    by the global batch's target count; dropout draws differ per rank). Rank
    0 writes the checkpoints and the model; every rank resumes from them.

    Args:
        data_dir: dataset directory with ``sids.json``.
        out: model directory to write.
        cfg: settings.
        on_step: progress callback ``(step, total, loss, examples_per_s)`` (rank 0).
        on_epoch: an :class:`EpochReport` after each epoch (rank 0).

    Raises:
        ToolsError: if the dataset has no Semantic IDs or no training data.
    """
    settings = cfg or PretrainConfig()
    dist = _Dist.from_env(settings.device)
    try:
        return _pretrain(data_dir, out, settings, dist, on_step, on_epoch)
    finally:
        dist.close()


def _pretrain(
    data_dir: str | Path,
    out: str | Path,
    cfg: PretrainConfig,
    dist: _Dist,
    on_step: Callable[[int, int, float, float], None] | None,
    on_epoch: Callable[[EpochReport], None] | None,
) -> PretrainResult:
    lead = dist.rank == 0
    if not lead:
        on_step = on_epoch = None
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data_dir, out = Path(data_dir), Path(out)
    sids_path = data_dir / "sids.json"
    if not sids_path.exists():
        raise ToolsError(f"{data_dir} has no sids.json: run `userlayer sids build` first")
    table = SemanticIdTable.load(sids_path)
    ds = Dataset.load(data_dir)
    head: dict[str, Any] = {"n_items": len(table)} if cfg.item_head else {}
    feats = None
    if cfg.item_features:
        emb = load_item_embedding(
            data_dir / EMBEDDING_FILE, list(table.codes), codes_digest(table.codes)
        )
        feats = torch.from_numpy(emb)
        head["item_features"] = emb.shape[1]
    mcfg = ModelConfig(level_sizes=table.level_sizes, **{"profile_dim": 32, **cfg.model, **head})
    seqs = UserSequences.from_dataset(ds, table, mcfg.geo_buckets)
    tokens, ctx = training_windows(seqs, mcfg.max_items)
    if len(tokens) == 0:
        raise ToolsError("no training sequences: users need at least 4 events")
    torch.manual_seed(cfg.seed)
    model = Recommender(mcfg)
    teacher = None
    if mcfg.n_items:
        codes = torch.tensor([table.codes[i] for i in table.codes], dtype=torch.long)
        perm = model.set_items(codes, feats)
        if cfg.distill > 0 and cfg.teacher is not None:
            teacher = load_teacher(cfg.teacher)
            teacher.check_data(seqs, data_dir)
            if teacher.model.cfg.max_len < mcfg.max_items - 1:
                raise ToolsError(
                    f"the teacher reads histories of {teacher.model.cfg.max_len} items, "
                    f"windows hold up to {mcfg.max_items - 1} before an item: train it "
                    "with a longer --max-len"
                )
            ids = list(table.codes)
            teacher.to_head([ids[int(j)] for j in perm])
            teacher.to(dist.device)
    model = model.to(dist.device)
    if lead:
        logger.info("training on %s (%d process(es))", dist.device, dist.world)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    lengths = (tokens != PAD).sum(1).numpy()
    per_epoch = len(epoch_batches(lengths, cfg.batch_size, cfg.seed, 0))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    total = per_epoch * epochs
    pairs = _private_targets(seqs) if model.profile is not None else None
    catalog = _Catalog.of(table, ContextVocab(mcfg.geo_buckets)) if cfg.favourites else None
    step, losses, valid, ranks = 0, list[float](), list[float](), list[dict[str, float]]()
    valid_prompts = (  # rank 0's: the loss after each epoch, and the head's ranking at the end
        _validation_prompts(seqs, cfg.valid_users, cfg.seed, min(20, mcfg.max_items - 1))
        if lead
        else []
    )
    valid_rows = pack_scored(valid_prompts, table) if valid_prompts else None
    trie = table.trie() if valid_prompts and cfg.select == "ndcg" else None
    ckpt = out / _CKPT
    if (ckpt / "trainer.json").exists():
        step, losses, valid, ranks = _load_checkpoint(ckpt, model, opt)
        was = "ndcg" if ranks else "loss"
        if valid and was != cfg.select:  # every rank reads the same checkpoint: all refuse
            raise ToolsError(
                f"{out} was started with select={was!r}, so its epochs' figures cannot pick "
                f"by {cfg.select!r}: resume with select={was!r} (--select {was}) or a new --out"
            )
        logger.info("resuming from step %d", step)
    if not dist.agree(step):
        raise ToolsError(
            f"rank {dist.rank} would resume at step {step} but another rank elsewhere: every "
            f"rank must read the same checkpoint, so {out} must be on a filesystem they share"
        )
    step_loss: nn.Module = _StepLoss(
        model,
        dist.world,
        cfg.label_smoothing,
        teacher,
        cfg.distill,
        cfg.distill_temperature,
        cfg.distill_codes,
    )
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # a rank may skip the profile encoder in a step (its share of a short batch is
        # empty, or no row can be private): parameters unused on some ranks are allowed
        step_loss = DistributedDataParallel(step_loss, find_unused_parameters=True)
    model.train()
    t0 = t_epoch = time.perf_counter()
    done = done_epoch = 0
    part = slice(dist.rank, None, dist.world)
    batches: list[np.ndarray] = []
    dev = dist.device
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if offset == 0 or not batches:
            batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        rows = batches[offset]
        mine = rows[part]  # this rank's share of the global batch
        idx = torch.from_numpy(mine)
        width = max(1, int(lengths[mine].max(initial=1)))  # left padding: trim shared pads
        lr = _lr(cfg, step, total)
        for g in opt.param_groups:
            g["lr"] = lr
        # dropout: a function of (seed, step, rank), so a resumed run draws what it would have
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + dist.rank)
        tok, c = tokens[idx, -width:].to(dev), ctx[idx, -width:].to(dev)
        n_main = dist.total(model.n_targets(tok))
        priv, n_priv = None, None
        if pairs is not None and len(pairs) and model.profile is not None:
            # a rank whose share of a short batch is empty still joins the count's all-reduce
            n_priv = torch.zeros((), dtype=torch.long, device=dev)
        if n_priv is not None and len(mine) and model.profile is not None and pairs is not None:
            priv = _private_batch(
                seqs,
                pairs,
                cfg,
                step,
                len(rows),
                model.profile.release_dim,
                mcfg.max_items - 1,
                catalog,
                part,
            ).to(dev)
            n_priv = model.n_targets(priv.tok, last_item_only=True)
        if n_priv is not None:
            n_priv = dist.total(n_priv)
        loss = step_loss(tok, c, n_main, priv, n_priv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        done += len(rows)
        done_epoch += len(rows)
        value = float(dist.total(loss.detach())) / dist.world  # the global batch's loss
        losses.append(round(value, 5))
        if on_step is not None:
            on_step(step, total, value, done / max(time.perf_counter() - t0, 1e-9))
        end_of_epoch = step % per_epoch == 0
        best = False
        if end_of_epoch and valid_rows is not None:
            valid.append(validation_loss(model, valid_rows))
            logger.info("epoch %d: validation loss %.4f", step // per_epoch, valid[-1])
            best = valid[-1] < min(valid[:-1], default=math.inf)  # the first of ties, as argmin
            if trie is not None:
                ranks.append(validation_ranks(model, trie, valid_prompts))
                logger.info("epoch %d: validation %s", step // per_epoch, ranks[-1])
                ndcg = [r["N@10"] for r in ranks]
                best = ndcg[-1] > max(ndcg[:-1], default=-math.inf)  # the first of ties
        if end_of_epoch and on_epoch is not None:
            n = per_epoch
            on_epoch(
                EpochReport(
                    step // per_epoch,
                    lr,
                    float(np.mean(losses[-n:])),
                    valid[-1] if valid_rows is not None else None,
                    done_epoch / max(time.perf_counter() - t_epoch, 1e-9),
                    best,
                    ranks[-1] if trie is not None else None,
                )
            )
        if end_of_epoch:
            t_epoch, done_epoch = time.perf_counter(), 0
        stop = cfg.max_steps is not None and step >= cfg.max_steps and step < total
        if step % cfg.checkpoint_every == 0 or end_of_epoch or stop:
            if lead:  # the best epoch's weights go into the same atomic switch
                _save_checkpoint(ckpt, model, opt, step, losses, valid, best, ranks)
            dist.barrier()  # no rank leaves (or stops) before the checkpoint is whole
        if stop:
            seconds = time.perf_counter() - t0
            return PretrainResult(out, "", step, losses, seconds, False, valid, ranks)
    model.eval()
    best_epoch = int(np.argmin(valid)) + 1 if valid else epochs
    if ranks:
        best_epoch = int(np.argmax([r["N@10"] for r in ranks])) + 1  # the first of ties
    if valid and (ckpt / _BEST).exists():  # keep the best validation epoch's weights
        model.load_state_dict(load_file(str(ckpt / _BEST), device=str(dev)))
    meta = {
        "pretrain": {
            **asdict(cfg),
            "threads": None,
            "device": None,
            "steps": step,
            "epochs_run": epochs,
            "best_epoch": best_epoch,
            "world_size": dist.world,
            "examples": len(tokens),
            "final_loss": losses[-1] if losses else None,
            "valid_losses": valid,
            "valid_ranks": ranks,
        },
        "data": str(data_dir),
    }
    fp = ""
    if lead and mcfg.n_items and valid_prompts:  # which ranking serves this head best
        meta[RANKING_KEY] = choose_ranking(model.cpu(), table, valid_prompts)
        logger.info("ranking by validation NDCG@10: %s", meta[RANKING_KEY])
    if lead:
        fp = save_model(model.cpu(), out, meta)
        table.save(out / "sids.json")
        attrs = ds.attributes()  # public catalog data, for critiques' hard constraints
        doc = catalog_document({i: attrs[i] for i in table.codes if i in attrs})
        (out / CATALOG_FILE).write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    dist.barrier()
    return PretrainResult(
        out, fp, step, losses, time.perf_counter() - t0, True, valid, ranks, best_epoch
    )
