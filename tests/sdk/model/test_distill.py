"""Knowledge distillation into the base: the KL from a teacher's item distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.tokens import CTX, FIRST_CODE, item_tokens
from userlayer.sdk.model.transformer import Recommender

SIZES = (4, 4, 2)
CODES = torch.tensor(list(itertools.product(*(range(s) for s in SIZES)))[:24])


def _model() -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(
        level_sizes=SIZES, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
        max_items=6, n_items=24, dropout=0.0,
    )  # fmt: skip
    m = Recommender(cfg)
    m.set_items(CODES[torch.randperm(24, generator=torch.Generator().manual_seed(1))])
    return m.eval()


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    """6 rows of 2-5 whole items (left padding), walking the catalog in different steps."""
    rows = []
    for r in range(6):
        n = 2 + r % 4
        rows.append(
            [
                t
                for j in range(n)
                for t in [CTX, *item_tokens(SIZES, CODES[(r * 5 + 3 * j) % 24].tolist())]
            ]
        )
    width = max(map(len, rows))
    tok = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    return tok, torch.zeros(*tok.shape, 7, dtype=torch.long)


def _brute_ce(
    m: Recommender, tok: torch.Tensor, ctx: torch.Tensor, codes_too: bool = True
) -> torch.Tensor:
    """Each item start's head cross-entropy plus its codes' cross-entropies, the long way."""
    start, index = m.item_starts(tok)
    h, logits, _ = m.run(tok, ctx)
    offs = m.code_offsets.tolist()
    total = torch.zeros(())
    for b, t in start.nonzero().tolist():
        idx = int(index[b, t])
        total = total - m.item_scores(h[b, t]).log_softmax(-1)[idx]
        for lvl, size in enumerate(SIZES if codes_too else ()):
            code = int(m.item_codes[idx, lvl])
            row = logits[b, t + lvl, offs[lvl] : offs[lvl] + size].log_softmax(-1)
            total = total - row[code]
    return total


def test_a_one_hot_teacher_on_the_target_adds_exactly_the_item_and_code_cross_entropies() -> None:
    m = _model()
    tok, ctx = _rows()
    start, index = m.item_starts(tok)
    assert int(start.sum()) == sum(2 + r % 4 for r in range(6))  # every whole item counted
    hot = torch.nn.functional.one_hot(index[start], 24).float()
    with torch.no_grad():
        plain = m.loss(tok, ctx, reduction="sum")
        taught = m.loss(tok, ctx, reduction="sum", teacher=hot, distill=0.5)
        want = _brute_ce(m, tok, ctx)
    assert float(taught - plain) == pytest.approx(0.5 * float(want), rel=1e-5)


def test_without_the_codes_a_one_hot_teacher_adds_exactly_the_heads_cross_entropy() -> None:
    m = _model()
    tok, ctx = _rows()
    start, index = m.item_starts(tok)
    hot = torch.nn.functional.one_hot(index[start], 24).float()
    with torch.no_grad():
        plain = m.loss(tok, ctx, reduction="sum")
        taught = m.loss(tok, ctx, reduction="sum", teacher=hot, distill=2.0, distill_codes=False)
        head = _brute_ce(m, tok, ctx, codes_too=False)
        both = _brute_ce(m, tok, ctx)
    assert float(both) > float(head) > 0.0
    assert float(taught - plain) == pytest.approx(2.0 * float(head), rel=1e-5)


def test_the_distillation_pulls_towards_the_teacher_and_a_zero_row_adds_nothing() -> None:
    m = _model()
    tok, ctx = _rows()
    start, _ = m.item_starts(tok)
    n = int(start.sum())
    soft = torch.rand(n, 24, generator=torch.Generator().manual_seed(2)).softmax(-1)
    with torch.no_grad():
        plain = m.loss(tok, ctx, reduction="sum")
        assert float(
            m.loss(tok, ctx, reduction="sum", teacher=torch.zeros(n, 24), distill=1.0)
        ) == (pytest.approx(float(plain)))
        half = soft.clone()
        half[::2] = 0.0
        some = m.loss(tok, ctx, reduction="sum", teacher=half, distill=1.0)
        every = m.loss(tok, ctx, reduction="sum", teacher=soft, distill=1.0)
    assert plain < some < every  # a KL is positive; fewer rows, less of it
    # a few steps on the KL alone lower it: its gradient reaches the head and the codes
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    before = None
    for _ in range(5):
        kl = m.loss(tok, ctx, reduction="sum", teacher=soft, distill=1.0) - m.loss(
            tok, ctx, reduction="sum"
        )
        before = float(kl.detach()) if before is None else before
        opt.zero_grad()
        kl.backward()
        opt.step()
    assert float(kl.detach()) < 0.9 * before


def test_a_teacher_that_does_not_fit_is_refused_by_name() -> None:
    m = _model()
    tok, ctx = _rows()
    n = int(m.item_starts(tok)[0].sum())
    with pytest.raises(ModelError, match=rf"\({n}, 24\)"):
        m.loss(tok, ctx, teacher=torch.ones(n + 1, 24), distill=1.0)
    with pytest.raises(ModelError, match="last_item_only"):
        m.loss(tok, ctx, teacher=torch.ones(n, 24), distill=1.0, last_item_only=True)
    with pytest.raises(ModelError, match="`distill` should be >= 0"):
        m.loss(tok, ctx, teacher=torch.ones(n, 24), distill=-1.0)
    plain = Recommender(ModelConfig(level_sizes=SIZES, d_model=32, n_heads=2, n_kv_heads=1))
    with pytest.raises(ModelError, match="no dense item head"):
        plain.item_starts(tok)


def test_a_soft_teachers_kl_is_the_heads_plus_each_levels_conditional_on_the_targets_prefix() -> (
    None
):
    m = _model()
    tok, ctx = _rows()
    start, index = m.item_starts(tok)
    n = int(start.sum())
    soft = torch.rand(n, 24, generator=torch.Generator().manual_seed(4)) ** 4
    soft[0] = 0.0  # a start without a teacher row
    with torch.no_grad():
        got = m.loss(tok, ctx, reduction="sum", teacher=soft, distill=1.0) - m.loss(
            tok, ctx, reduction="sum"
        )
        h, logits, _ = m.run(tok, ctx)
    offs = m.code_offsets.tolist()
    all_codes = m.item_codes.tolist()  # head order
    want = 0.0
    for r, (b, t) in enumerate(start.nonzero().tolist()):
        q = soft[r] / soft[r].sum() if soft[r].sum() > 0 else None
        if q is None:
            continue
        lp = m.item_scores(h[b, t]).log_softmax(-1)
        want += sum(float(q[i] * (q[i].log() - lp[i])) for i in range(24))
        prefix: list[int] = []
        for lvl, size in enumerate(SIZES):
            # the target's code, read from the tokens themselves
            code = int(tok[b, t + lvl + 1]) - FIRST_CODE - offs[lvl]
            mass = [0.0] * size
            for i, cs in enumerate(all_codes):
                if cs[:lvl] == prefix:
                    mass[cs[lvl]] += float(q[i])
            total = sum(mass)
            row = logits[b, t + lvl, offs[lvl] : offs[lvl] + size].log_softmax(-1)
            want += sum(
                (p / total) * (math.log(p / total) - float(row[c]))
                for c, p in enumerate(mass)
                if p > 0
            )
            prefix.append(code)
        assert index[b, t] >= 0
    assert float(got) == pytest.approx(want, rel=1e-4)
