"""From a dataset and its Semantic IDs to model token tensors.

Each user's sequence is their events in time order (``view``,
``add_to_cart``, ``purchase`` by default; ``rate`` repeats an earlier
purchase and is left out). Leave-one-out split: the last event is the test
target, the one before it the validation target, everything before that is
training data; training never sees the last item.

A step is ``[CTX c1 .. cL]`` (see :mod:`userlayer.sdk.model.tokens`); a
prompt is up to ``max_history`` history steps followed by the target's
context position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from userlayer.sdk.model.tokens import CTX, FIRST_CODE, ContextVocab, item_tokens
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset

__all__ = [
    "Prompt",
    "UserSequences",
    "build_prompts",
    "favourite_prompt",
    "pack_prompts",
    "pack_scored",
    "private_rows",
    "profile_inputs",
    "session_begin",
    "target_offset",
    "training_windows",
]

Regime = Literal["full", "private"]
DEFAULT_ACTIONS = ("view", "add_to_cart", "purchase")


@dataclass
class UserSequences:
    """Per-user arrays: item ids, code token rows, context id rows, times, services."""

    users: list[str]
    items: list[list[str]]
    tokens: list[np.ndarray]  # (n, L) code token ids (see tokens.item_tokens)
    ctx: list[np.ndarray]  # (n, 7)
    times: list[np.ndarray]  # (n,) epoch ms
    services: list[list[str]]
    timestamps_real: bool = True
    n_levels: int = field(default=0)

    @classmethod
    def from_dataset(
        cls,
        ds: Dataset,
        table: SemanticIdTable,
        geo_buckets: int = 64,
        actions: Sequence[str] = DEFAULT_ACTIONS,
    ) -> UserSequences:
        """Group the events by user (already sorted by time) and encode them."""
        ev = ds.events
        keep = np.isin(np.asarray(ev.column("action").cast(pa.string()).to_pylist()), list(actions))
        ev = ev.filter(pa.array(keep))
        vocab = ContextVocab(geo_buckets)
        col = {
            n: ev.column(n).cast(pa.string()).to_pylist()
            for n in ("user_id", "item_id", "service", "mode", "daypart", "season", "weather")
        }
        weekday = ev.column("weekday").to_pylist()
        geo = ev.column("geo_cell").to_pylist()
        times = ev.column("timestamp").cast(pa.int64()).to_numpy()
        code_of = {i: np.array(item_tokens(table.level_sizes, c)) for i, c in table.codes.items()}
        out = cls(
            [], [], [], [], [], [], ds.meta.get("timestamps", "real") == "real", table.n_levels
        )
        start = 0
        users = col["user_id"]
        n = len(users)
        for end in range(1, n + 1):
            if end < n and users[end] == users[start]:
                continue
            sl = range(start, end)
            out.users.append(users[start])
            out.items.append([col["item_id"][i] for i in sl])
            out.tokens.append(np.stack([code_of[col["item_id"][i]] for i in sl]))
            out.ctx.append(
                np.array(
                    [
                        vocab.encode(
                            col["service"][i],
                            col["mode"][i],
                            col["daypart"][i],
                            weekday[i],
                            col["season"][i],
                            col["weather"][i],
                            geo[i],
                        )
                        for i in sl
                    ],
                    dtype=np.int64,
                )
            )
            out.times.append(times[start:end])
            out.services.append([col["service"][i] for i in sl])
            start = end
        return out


def _steps(tokens: np.ndarray, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interleave steps: tokens (n*(1+L),) and ctx (n*(1+L), 7)."""
    n, levels = tokens.shape
    tok = np.empty((n, 1 + levels), dtype=np.int64)
    tok[:, 0] = CTX
    tok[:, 1:] = tokens
    c = np.zeros((n, 1 + levels, ctx.shape[1]), dtype=np.int64)
    c[:, 0] = ctx
    return tok.reshape(-1), c.reshape(-1, ctx.shape[1])


def training_windows(
    seqs: UserSequences, max_items: int, holdout: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training sequences: windows of ``max_items`` steps over each user's training part.

    The last ``holdout`` events of every user are never included (leave-one-out:
    2 keeps both validation and test out). Windows end at the last training
    event and every ``max_items - 1`` steps before it, so each training event
    is a target once. Returns left-padded tokens (N, T) and ctx (N, T, 7).
    """
    levels = seqs.n_levels
    t_len = max_items * (1 + levels)
    rows_t, rows_c = [], []
    for tok, ctx in zip(seqs.tokens, seqs.ctx, strict=True):
        n = len(tok) - holdout
        end = n
        while end >= 2:
            begin = max(0, end - max_items)
            t, c = _steps(tok[begin:end], ctx[begin:end])
            pad = t_len - len(t)
            rows_t.append(np.pad(t, (pad, 0)))
            rows_c.append(np.pad(c, ((pad, 0), (0, 0))))
            end -= max_items - 1
    if not rows_t:
        return torch.zeros(0, t_len, dtype=torch.long), torch.zeros(0, t_len, 7, dtype=torch.long)
    return torch.from_numpy(np.stack(rows_t)), torch.from_numpy(np.stack(rows_c))


@dataclass
class Prompt:
    """One request: history steps plus the target's context, and the truth."""

    user: str
    tokens: np.ndarray  # (T,)
    ctx: np.ndarray  # (T, 7)
    service: str
    target: str
    history: list[str]  # the history items, oldest first

    @property
    def n_history(self) -> int:
        """Number of history items in the prompt."""
        return len(self.history)


def target_offset(split: Literal["valid", "test"] | str) -> int:
    """Position of the held-out target from the end of a user's sequence (1 = last)."""
    return 1 if split == "test" else 2


def build_prompts(
    seqs: UserSequences,
    split: Literal["valid", "test"],
    regime: Regime,
    max_history: int = 20,
    session_hours: float = 3.0,
    session_items: int = 5,
    order_session_items: int = 3,
) -> list[Prompt]:
    """Leave-one-out prompts for every user with enough events.

    ``full``: the last ``max_history`` events before the target. ``private``:
    only the current session, the events of the last ``session_hours`` before
    the target (at most ``session_items``); with order-only timestamps the
    session is the last ``order_session_items`` events.
    """
    target_back = target_offset(split)
    out = []
    for u, items, tok, ctx, times, svc in zip(
        seqs.users, seqs.items, seqs.tokens, seqs.ctx, seqs.times, seqs.services, strict=True
    ):
        ti = len(items) - target_back
        if ti < 1:
            continue
        if regime == "full":
            begin = max(0, ti - max_history)
        else:
            begin = session_begin(
                times, ti, seqs.timestamps_real, session_hours, session_items, order_session_items
            )
        t, c = _steps(tok[begin:ti], ctx[begin:ti])
        t = np.concatenate([t, [CTX]])
        c = np.concatenate([c, ctx[ti][None]])
        out.append(Prompt(u, t, c, svc[ti], items[ti], items[begin:ti]))
    return out


def favourite_prompt(
    table: SemanticIdTable,
    vocab: ContextVocab,
    favourites: Sequence[str],
    prompt: Prompt,
    max_items: int | None = None,
) -> Prompt:
    """``prompt`` with the released favourites as history steps before it.

    Each favourite is a step of its codes whose context position carries the
    request's context (the prompt's last row) and the item's own service, as
    a session item of a serving request does. With ``max_items``, only the
    most frequent favourites that fit beside the prompt's items are kept (as
    the cloud's :func:`userlayer.sdk.model.prompt.encode_request` does).
    """
    request = prompt.ctx[-1]
    if max_items is not None:
        room = max(0, max_items - prompt.n_history)
        favourites = favourites[len(favourites) - room :] if room else []
    toks, ctxs = [], []
    for item in favourites:
        codes = item_tokens(table.level_sizes, table.codes[item])
        c = np.zeros((1 + len(codes), len(request)), dtype=np.int64)
        c[0] = request
        c[0, 0] = vocab.encode(str(table.services[item]))[0]
        toks.append(np.asarray([CTX, *codes], dtype=np.int64))
        ctxs.append(c)
    return Prompt(
        prompt.user,
        np.concatenate([*toks, prompt.tokens]),
        np.concatenate([*ctxs, prompt.ctx]),
        prompt.service,
        prompt.target,
        [*favourites, *prompt.history],
    )


def session_begin(
    times: np.ndarray,
    ti: int,
    timestamps_real: bool,
    session_hours: float = 3.0,
    session_items: int = 5,
    order_session_items: int = 3,
) -> int:
    """First index of the current session before event ``ti`` (the private regime's prompt).

    The events of the last ``session_hours`` (at most ``session_items``); with
    order-only timestamps the last ``order_session_items`` events.
    """
    if not timestamps_real:
        return max(0, ti - order_session_items)
    horizon = times[ti] - int(session_hours * 3_600_000)
    begin = ti
    while begin > 0 and times[begin - 1] >= horizon and ti - begin < session_items:
        begin -= 1
    return begin


def private_rows(
    seqs: UserSequences,
    pairs: Sequence[tuple[int, int]],
    before: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    max_items: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Private-regime rows ``session + target context + target codes`` for (user, target) pairs.

    ``before[i]``, when given, are (tokens, ctx) steps put before row ``i``'s
    session (a user layer's favourites, least frequent first), the last of
    them only when ``max_items`` limits the items before the target. Left-padded
    tokens (B, T) and ctx (B, T, 7); score them with ``last_item_only=True``.
    """
    rows_t, rows_c = [], []
    step = 1 + seqs.n_levels
    for i, (u, ti) in enumerate(pairs):
        tok, ctx = seqs.tokens[u], seqs.ctx[u]
        begin = session_begin(seqs.times[u], ti, seqs.timestamps_real)
        t, c = _steps(tok[begin : ti + 1], ctx[begin : ti + 1])
        extra = None if before is None else before[i]
        if extra is not None:
            room = len(extra[0]) if max_items is None else max(0, max_items - (ti - begin))
            keep = min(len(extra[0]), room * step)
            t = np.concatenate([extra[0][len(extra[0]) - keep :], t])
            c = np.concatenate([extra[1][len(extra[1]) - keep :], c])
        rows_t.append(t)
        rows_c.append(c)
    t_len = max(len(t) for t in rows_t)
    out_t = np.zeros((len(pairs), t_len), dtype=np.int64)
    out_c = np.zeros((len(pairs), t_len, 7), dtype=np.int64)
    for i, (t, c) in enumerate(zip(rows_t, rows_c, strict=True)):
        out_t[i, t_len - len(t) :] = t
        out_c[i, t_len - len(t) :] = c
    return torch.from_numpy(out_t), torch.from_numpy(out_c)


def profile_inputs(
    seqs: UserSequences, pairs: Sequence[tuple[int, int]], horizon_days: float = 365.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The profile encoder's inputs for (user, cutoff) pairs: every event before the cutoff.

    Each row's events are those strictly before index ``cutoff`` and within
    ``horizon_days`` of the cutoff event's time (the release clock). Returns
    flat codes (B, M, L), ages in days (B, M) and the valid mask (B, M).
    """
    levels = seqs.n_levels
    spans = []
    for u, ti in pairs:
        times = seqs.times[u]
        now = times[ti] if ti < len(times) else times[-1]
        first = int(np.searchsorted(times[:ti], now - int(horizon_days * 86_400_000), "left"))
        spans.append((u, first, ti, now))
    m = max(1, max(ti - first for _, first, ti, _ in spans))
    codes = np.zeros((len(pairs), m, levels), dtype=np.int64)
    ages = np.zeros((len(pairs), m), dtype=np.float32)
    mask = np.zeros((len(pairs), m), dtype=bool)
    for i, (u, first, ti, now) in enumerate(spans):
        n = ti - first
        if n <= 0:
            continue
        codes[i, :n] = seqs.tokens[u][first:ti] - FIRST_CODE
        ages[i, :n] = (now - seqs.times[u][first:ti]) / 86_400_000.0
        mask[i, :n] = True
    return torch.from_numpy(codes), torch.from_numpy(ages), torch.from_numpy(mask)


def pack_prompts(prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts into (B, T) tokens and (B, T, 7) ctx."""
    t_len = max(len(p.tokens) for p in prompts)
    tok = np.zeros((len(prompts), t_len), dtype=np.int64)
    ctx = np.zeros((len(prompts), t_len, 7), dtype=np.int64)
    for i, p in enumerate(prompts):
        tok[i, t_len - len(p.tokens) :] = p.tokens
        ctx[i, t_len - len(p.tokens) :] = p.ctx
    return torch.from_numpy(tok), torch.from_numpy(ctx)


def pack_scored(
    prompts: Sequence[Prompt], table: SemanticIdTable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts followed by their targets' codes, left-padded.

    ``Recommender.loss(tok, ctx, reduction="none", last_item_only=True)`` on
    these gives each target's mean code cross-entropy (teacher-forced).
    """
    rows = []
    for p in prompts:
        codes = item_tokens(table.level_sizes, table.codes[p.target])
        rows.append(
            Prompt(
                p.user,
                np.concatenate([p.tokens, codes]),
                np.concatenate([p.ctx, np.zeros((len(codes), p.ctx.shape[1]), dtype=np.int64)]),
                p.service,
                p.target,
                p.history,
            )
        )
    return pack_prompts(rows)


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, pool: int = 64
) -> list[np.ndarray]:
    """One epoch's batches: a pure function of ``(seed, epoch)``, so a resumed run sees the same.

    Windows are shuffled, then sorted by length inside pools of ``pool`` batches
    and cut into batches whose order is shuffled again: each batch holds windows
    of similar length, so little compute goes to padding (Beauty's windows are
    70% padding at a fixed width), while the batch composition stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    span = batch_size * pool
    out: list[np.ndarray] = []
    for begin in range(0, len(order), span):
        chunk = order[begin : begin + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]
