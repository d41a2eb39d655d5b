"""Pretraining of the base model: next-item (Semantic ID) training on all users.

AdamW with a linear warm-up and cosine decay, gradient clipping, fixed seeds,
and a checkpoint every ``checkpoint_every`` steps and at every epoch end.
Checkpoints are safetensors plus JSON (weights, AdamW moments, the RNG state
used for dropout, the step), never pickles. A run restarted on the same
output directory resumes from the last checkpoint; the batch order is a pure
function of ``(seed, epoch)``, so an interrupted and resumed run ends with the
same weights as an uninterrupted one.

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
training loss falls).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from userlayer.sdk.model.config import AdapterConfig, ModelConfig
from userlayer.sdk.model.io import save_model
from userlayer.sdk.model.tokens import CTX, PAD, ContextVocab, item_tokens
from userlayer.sdk.model.transformer import Recommender, RowAdapters
from userlayer.sdk.privacy.favourites import FavouritesConfig, occasions, top_favourites
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import (
    UserSequences,
    build_prompts,
    epoch_batches,
    pack_scored,
    private_rows,
    profile_inputs,
    training_windows,
)

__all__ = ["PretrainConfig", "PretrainResult", "pretrain", "validation_loss"]

logger = logging.getLogger(__name__)
_CKPT = "checkpoint"


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
    min_steps: int = 0  # raise the epochs until the run takes at least this many steps
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    profile_absent: float = 0.15  # share of private rows without a prefix
    profile_exact: float = 0.2  # share of private rows with an exact (noise-free) profile
    profile_noise: tuple[float, float] = (0.3, 8.0)  # noise multipliers of the others
    favourites: int = 10  # favourites simulated in private rows with a prefix (0: none)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ToolsError(f"`{name}` should be positive, got {getattr(self, name)}")
        if self.valid_users < 0:
            raise ToolsError(f"`valid_users` should be >= 0, got {self.valid_users}")
        if not 0 < self.lr < 1:
            raise ToolsError(f"`lr` should be in (0, 1), got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ToolsError("`warmup_steps`, `weight_decay` should be >= 0 and `grad_clip` > 0")
        if self.min_steps < 0:
            raise ToolsError(f"`min_steps` should be >= 0, got {self.min_steps}")
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


def _lr(cfg: PretrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _validation_rows(
    seqs: UserSequences, table: SemanticIdTable, users: int, seed: int, max_history: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    prompts = build_prompts(seqs, "valid", "full", max_history=max_history)
    if users == 0 or not prompts:
        return None
    pick = np.random.default_rng([seed, 1]).permutation(len(prompts))[:users]
    return pack_scored([prompts[i] for i in sorted(pick)], table)


@torch.no_grad()
def validation_loss(model: Recommender, rows: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean target loss of rows from :func:`pack_scored`.

    Runs in eval mode (no dropout, so no RNG draw) and restores the model's mode.
    """
    was_training = model.training
    model.eval()
    tok, ctx = rows
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
) -> None:
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                n = names[id(p)]
                tensors[f"opt.{n}.exp_avg"] = st["exp_avg"].contiguous()
                tensors[f"opt.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                tensors[f"opt.{n}.step"] = st["step"].reshape(1).float()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "trainer.json").write_text(
        json.dumps({"step": step, "losses": losses, "valid_losses": valid}), "utf-8"
    )
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)  # atomic switch: a crash leaves the old or the new checkpoint


def _load_checkpoint(
    d: Path, model: Recommender, opt: torch.optim.AdamW
) -> tuple[int, list[float], list[float]]:
    tensors = load_file(str(d / "state.safetensors"))
    meta = json.loads((d / "trainer.json").read_text("utf-8"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for n, p in model.named_parameters():
        if f"opt.{n}.exp_avg" in tensors:
            opt.state[p] = {
                "exp_avg": tensors[f"opt.{n}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].clone(),
                "step": tensors[f"opt.{n}.step"].reshape(()).clone(),
            }
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), list(meta["losses"]), list(meta.get("valid_losses", []))


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


def _private_loss(
    model: Recommender,
    seqs: UserSequences,
    pairs: np.ndarray,
    cfg: PretrainConfig,
    step: int,
    batch: int,
    catalog: _Catalog | None = None,
) -> Tensor:
    """Loss of a batch of private rows with noisy, exact or absent profile prefixes."""
    enc = model.profile
    assert enc is not None
    rng = np.random.default_rng([cfg.seed, step, 7])
    pick = [(int(u), int(t)) for u, t in pairs[rng.integers(0, len(pairs), batch)]]
    codes, ages, mask = profile_inputs(seqs, pick)
    lo, hi = cfg.profile_noise
    z = np.exp(rng.uniform(math.log(lo), math.log(hi), batch))
    z[rng.uniform(size=batch) < cfg.profile_exact] = 0.0
    absent = rng.uniform(size=batch) < cfg.profile_absent
    before = None
    if catalog is not None and cfg.favourites:
        before = [
            None
            if absent[r]
            else catalog.steps(
                catalog.favourites(
                    occasions(seqs.items[u][:t], (seqs.times[u][:t] // 86_400_000).tolist()),
                    float(z[r]),
                    cfg.favourites,
                    rng,
                ),
                seqs.ctx[u][t],
            )
            for r, (u, t) in enumerate(pick)
        ]
    tok, ctx = private_rows(seqs, pick, before, model.cfg.max_items - 1)
    zt = torch.from_numpy(z).float()
    stats = enc.stats(codes, ages, mask)
    released = stats + zt[:, None] * torch.randn_like(stats)
    prefix = enc(released, zt)
    acfg = AdapterConfig(n_prefix=model.cfg.profile_prefix, film=False, n_modes=0, targets=())
    rows = RowAdapters(acfg, torch.from_numpy(~absent), {"prefix": prefix})
    return model.loss(tok, ctx, rows, last_item_only=True)


def pretrain(
    data_dir: str | Path,
    out: str | Path,
    cfg: PretrainConfig | None = None,
    on_step: Callable[[int, int, float, float], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Train the base model on a dataset with Semantic IDs; resume if ``out`` has a checkpoint.

    Args:
        data_dir: dataset directory with ``sids.json``.
        out: model directory to write.
        cfg: settings.
        on_step: progress callback ``(step, total, loss, examples_per_s)``.
        on_epoch: ``(epoch, validation_loss)`` after each epoch (with ``valid_users`` > 0).

    Raises:
        ToolsError: if the dataset has no Semantic IDs or no training data.
    """
    cfg = cfg or PretrainConfig()
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data_dir, out = Path(data_dir), Path(out)
    sids_path = data_dir / "sids.json"
    if not sids_path.exists():
        raise ToolsError(f"{data_dir} has no sids.json: run `userlayer sids build` first")
    table = SemanticIdTable.load(sids_path)
    ds = Dataset.load(data_dir)
    mcfg = ModelConfig(level_sizes=table.level_sizes, **{"profile_dim": 32, **cfg.model})
    seqs = UserSequences.from_dataset(ds, table, mcfg.geo_buckets)
    tokens, ctx = training_windows(seqs, mcfg.max_items)
    if len(tokens) == 0:
        raise ToolsError("no training sequences: users need at least 4 events")
    torch.manual_seed(cfg.seed)
    model = Recommender(mcfg)
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
    step, losses, valid = 0, list[float](), list[float]()
    valid_rows = _validation_rows(
        seqs, table, cfg.valid_users, cfg.seed, min(20, mcfg.max_items - 1)
    )
    ckpt = out / _CKPT
    if (ckpt / "trainer.json").exists():
        step, losses, valid = _load_checkpoint(ckpt, model, opt)
        logger.info("resuming from step %d", step)
    model.train()
    t0 = time.perf_counter()
    done = 0
    batches: list[np.ndarray] = []
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if offset == 0 or not batches:
            batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        idx = torch.from_numpy(batches[offset])
        width = int(lengths[batches[offset]].max())  # left padding: trim the shared pad columns
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step, total)
        loss = model.loss(tokens[idx, -width:], ctx[idx, -width:])
        if pairs is not None and len(pairs):
            loss = loss + _private_loss(model, seqs, pairs, cfg, step, len(idx), catalog)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        done += len(idx)
        value = loss.item()
        losses.append(round(value, 5))
        if on_step is not None:
            on_step(step, total, value, done / max(time.perf_counter() - t0, 1e-9))
        if step % per_epoch == 0 and valid_rows is not None:
            valid.append(validation_loss(model, valid_rows))
            logger.info("epoch %d: validation loss %.4f", step // per_epoch, valid[-1])
            if on_epoch is not None:
                on_epoch(step // per_epoch, valid[-1])
        stop = cfg.max_steps is not None and step >= cfg.max_steps and step < total
        if step % cfg.checkpoint_every == 0 or step % per_epoch == 0 or stop:
            _save_checkpoint(ckpt, model, opt, step, losses, valid)
        if stop:
            seconds = time.perf_counter() - t0
            return PretrainResult(out, "", step, losses, seconds, False, valid)
    model.eval()
    meta = {
        "pretrain": {
            **asdict(cfg),
            "threads": None,
            "steps": step,
            "epochs_run": epochs,
            "examples": len(tokens),
            "final_loss": losses[-1] if losses else None,
            "valid_losses": valid,
        },
        "data": str(data_dir),
    }
    fp = save_model(model, out, meta)
    table.save(out / "sids.json")
    return PretrainResult(out, fp, step, losses, time.perf_counter() - t0, True, valid)
