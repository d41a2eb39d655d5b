"""SASRec (Kang & McAuley, 2018), implemented from the paper as a baseline.

Item embeddings plus learned positions, a stack of causal self-attention
blocks (pre-norm, as in the authors' code), the output scored against the
shared item embedding. Trained on the same leave-one-out training part as the
generative model, with full-softmax cross-entropy on every position (a
stronger and common variant of the paper's sampled binary loss; what the
strong reproductions use) or a sampled softmax over uniform negatives (as
eSASRec trains), early stopping on the next item's NDCG@10, and ranking every
item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from userlayer.tools.train.examples import epoch_batches

__all__ = [
    "SASRec",
    "SASRecConfig",
    "item_indices",
    "pad_left",
    "split_histories",
    "train_sasrec",
]


@dataclass(frozen=True)
class SASRecConfig:
    """Architecture as the paper's Beauty setting (2 blocks, 1 head, history 50).

    Trained as the strong reproductions do: full-softmax cross-entropy on every
    position, batches of random composition, dropout 0.2 (the paper's 0.5
    peaks at validation NDCG@10 0.0366 on Beauty, 0.2 at 0.0422:
    ``experiments/sasrec_sweep.py``), up to ``epochs`` epochs with early
    stopping on the validation item's NDCG@10 (every ``eval_every`` epochs;
    stop after ``patience`` validations without a gain; the best epoch's
    weights are kept). ``patience`` 0 turns early stopping off.
    """

    d: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    epochs: int = 200
    patience: int = 5
    eval_every: int = 2
    val_users: int = 5_000  # validation users scored (a fixed random subset past this)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decoupled decay (0: plain Adam, the paper's)
    length_grouped: bool = False  # batches of similar length (less padding) or fully random
    # "full": softmax over every item; "sampled": softmax over the target and `negatives`
    # items drawn uniformly per sequence (shared by its positions; a draw may hit the target)
    loss: str = "full"
    negatives: int = 256
    exclude_seen: bool = False  # validation ranks no item of the history (eSASRec's protocol)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d", "blocks", "heads", "max_len", "epochs", "eval_every", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} should be at least 1")
        if self.loss not in ("full", "sampled") or self.negatives < 1:
            raise ValueError(
                f"SASRecConfig.loss should be 'full' or 'sampled' and negatives >= 1, "
                f"got {self.loss!r}, {self.negatives}"
            )
        if self.patience < 0 or self.val_users < 1:
            raise ValueError("SASRecConfig.patience should be >= 0 and val_users >= 1")
        if not 0 <= self.dropout < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                "SASRecConfig.dropout should be in [0, 1), lr positive, weight_decay >= 0"
            )
        if self.seed < 0:
            raise ValueError(f"SASRecConfig.seed should be >= 0, got {self.seed}")


class SASRec(nn.Module):
    """Self-attentive sequential recommender; item 0 is padding."""

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.best_epoch = 0  # which training epoch's weights these are (train_sasrec)
        self.item = nn.Embedding(n_items + 1, cfg.d, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, cfg.d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.d, cfg.heads, cfg.d, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d)
        # as the reference implementations: Xavier-normal embeddings (the default N(0, 1)
        # makes the tied output logits tens of units large and the first epochs wasted)
        nn.init.xavier_normal_(self.item.weight)
        nn.init.xavier_normal_(self.pos.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: Tensor) -> Tensor:
        """Hidden state at every position: (B, T, d)."""
        t = seq.shape[1]  # left padding: positions count back from max_len, so a
        # batch trimmed to its longest row sees exactly what the full width does
        pos = torch.arange(self.cfg.max_len - t, self.cfg.max_len, device=seq.device)
        x = self.item(seq) * math.sqrt(self.cfg.d) + self.pos(pos)[None]
        real = seq > 0
        x = self.drop(x) * real[..., None]
        # causal, and no position attends to padding (each may attend to itself, so a
        # padding row is never fully masked): the padding's width changes nothing
        blocked = torch.triu(torch.ones(t, t, dtype=torch.bool, device=seq.device), 1)
        blocked = blocked[None] | ~real[:, None, :]
        blocked &= ~torch.eye(t, dtype=torch.bool, device=seq.device)[None]
        mask = blocked.repeat_interleave(self.cfg.heads, 0)  # (B * heads, T, T)
        h = self.encoder(x, mask=mask)
        return self.norm(h)  # type: ignore[no-any-return]

    def scores(self, seq: Tensor) -> Tensor:
        """Scores of every item (column 0 is padding) after the last position: (B, n+1)."""
        out: Tensor = self(seq)[:, -1] @ self.item.weight.T
        return out


def item_indices(item_ids: Sequence[str]) -> dict[str, int]:
    """Each item id's SASRec index: its position in ``item_ids`` plus one (0 is padding)."""
    return {i: n + 1 for n, i in enumerate(item_ids)}


def pad_left(rows: Sequence[Sequence[int]], t: int) -> Tensor:
    """Item-index rows (B, t): each row's last ``t`` items, left-padded with 0."""
    out = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        r = list(r)[-t:]
        if r:
            out[i, t - len(r) :] = r
    return torch.from_numpy(out)


def _ndcg10(
    model: SASRec,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    exclude_seen: bool = False,
) -> float:
    ranked = rank_sasrec(model, histories, 10, exclude=histories if exclude_seen else None)
    gain = 0.0
    for rk, t in zip(ranked, targets, strict=True):
        if t in rk:
            gain += 1.0 / math.log2(rk.index(t) + 2)
    return gain / max(len(targets), 1)


def split_histories(
    item_seqs: Sequence[Sequence[str]], item_ids: Sequence[str], back: int
) -> tuple[list[list[int]], tuple[list[list[int]], list[int]] | None]:
    """SASRec's training part and validation of users' item sequences, as item indices.

    Each user trains on the items before the last ``back + 1`` (index of
    ``item_ids`` plus one; 0 is padding); the item just before those is its
    validation target, read by early stopping only, with the training part as
    its history. ``back`` 1 holds out the validation and test items (the test
    split's protocol, and pretraining's training part). Returns the training
    sequences and ``(histories, targets)``, or None without a validation target.
    """
    index = item_indices(item_ids)
    train, val_h, val_t = [], [], []
    for items in item_seqs:
        cut = len(items) - back - 1
        ids = [index[i] for i in items[:cut]]
        train.append(ids)
        if ids and cut >= 0 and items[cut] in index:
            val_h.append(ids)
            val_t.append(index[items[cut]])
    return train, ((val_h, val_t) if val_t else None)


def train_sasrec(
    train_seqs: Sequence[Sequence[int]],
    n_items: int,
    cfg: SASRecConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    valid: tuple[Sequence[Sequence[int]], Sequence[int]] | None = None,
    on_valid: Callable[[int, float], None] | None = None,
) -> SASRec:
    """Train on each user's training sequence (item indices 1..n_items).

    ``valid`` (histories, next items) drives early stopping (see
    :class:`SASRecConfig`); without it every epoch runs. ``on_epoch(epoch,
    mean_loss)`` and ``on_valid(epoch, ndcg10)`` report progress. The model's
    ``best_epoch`` says which epoch's weights it holds.
    """
    torch.manual_seed(cfg.seed)
    model = SASRec(n_items, cfg)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    # windows of max_len + 1 items ending at the end and every max_len items before it
    usable = []
    for s in train_seqs:
        end = len(s)
        while end >= 2:
            usable.append(list(s[max(0, end - cfg.max_len - 1) : end]))
            end -= cfg.max_len
    inp = pad_left([s[:-1] for s in usable], cfg.max_len)
    tgt = pad_left([s[1:] for s in usable], cfg.max_len)
    lengths = (inp > 0).sum(1).numpy()
    if valid is not None and len(valid[1]) > cfg.val_users:
        pick = np.sort(
            np.random.default_rng(cfg.seed).choice(len(valid[1]), cfg.val_users, replace=False)
        )
        valid = ([valid[0][i] for i in pick], [valid[1][i] for i in pick])
    gen = torch.Generator().manual_seed(cfg.seed)  # the sampled loss's negatives
    best, best_state, since = -1.0, None, 0
    model.best_epoch = cfg.epochs
    model.train()
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        pool = 64 if cfg.length_grouped else 1  # a pool of one batch: random composition
        for b in epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, pool):
            idx = torch.from_numpy(b)
            width = max(1, int(lengths[b].max()))  # batches of similar length: trim padding
            y = tgt[idx, -width:]
            keep = y > 0
            h = model(inp[idx, -width:])
            if cfg.loss == "full":
                # score only the real (non-padding) positions: most of a window is padding
                logits = h[keep] @ model.item.weight.T  # (N, n+1)
                loss = nn.functional.cross_entropy(logits, y[keep])
            else:
                neg = torch.randint(1, n_items + 1, (len(b), cfg.negatives), generator=gen)
                pos = (h * model.item(y)).sum(-1, keepdim=True)  # (B, T, 1)
                negs = torch.einsum("btd,bnd->btn", h, model.item(neg))  # (B, T, negatives)
                logits = torch.cat([pos, negs], -1)[keep]
                zero = torch.zeros(len(logits), dtype=torch.long)
                loss = nn.functional.cross_entropy(logits, zero)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total, count = total + loss.item(), count + 1
        if on_epoch:
            on_epoch(epoch + 1, total / max(count, 1))
        last = epoch + 1 == cfg.epochs
        if valid is None or cfg.patience == 0 or ((epoch + 1) % cfg.eval_every and not last):
            continue
        model.eval()
        score = _ndcg10(model, *valid, exclude_seen=cfg.exclude_seen)
        model.train()
        if on_valid:
            on_valid(epoch + 1, score)
        if score > best:
            best, since = score, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
            model.best_epoch = epoch + 1
        else:
            since += 1
            if since >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def rank_sasrec(
    model: SASRec,
    histories: Sequence[Sequence[int]],
    k: int,
    allowed: Tensor | None = None,
    batch: int = 512,
    exclude: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Top-``k`` item indices for each history.

    ``allowed``: a (n+1,) bool mask or one per row; ``exclude``: per row, item
    indices never to return (the history, under eSASRec's protocol).
    """
    out: list[list[int]] = []
    for s in range(0, len(histories), batch):
        part = histories[s : s + batch]
        width = max(1, min(model.cfg.max_len, max((len(h) for h in part), default=1)))
        seq = pad_left(part, width)
        sc = model.scores(seq)
        sc[:, 0] = float("-inf")
        if allowed is not None:
            mask = allowed[s : s + batch] if allowed.dim() == 2 else allowed[None]
            sc = sc.masked_fill(~mask, float("-inf"))
        if exclude is not None:
            for r, seen in enumerate(exclude[s : s + batch]):
                sc[r, list(seen)] = float("-inf")
        out.extend(sc.topk(k, dim=-1).indices.tolist())
    return out
