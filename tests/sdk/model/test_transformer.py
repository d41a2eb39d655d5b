from __future__ import annotations

import pytest
import torch

from userlayer.sdk.model import (
    AdapterConfig,
    BeamCache,
    ModelConfig,
    ModelError,
    Recommender,
    RowAdapters,
    adapter_shapes,
    new_adapter,
)
from userlayer.sdk.model.tokens import CTX, FIRST_CODE

CFG = ModelConfig(
    level_sizes=(8, 8, 3),
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=64,
    dropout=0.0,
    max_items=6,
)
ACFG = AdapterConfig(rank=2, targets=("q", "k", "v", "o", "gate", "up", "down"))


def _batch(b: int = 4, steps: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(steps):
        rows.append(torch.full((b, 1), CTX))
        for off, size in ((0, 8), (8, 8), (16, 3)):
            rows.append(FIRST_CODE + off + torch.randint(0, size, (b, 1), generator=g))
    rows.append(torch.full((b, 1), CTX))
    tok = torch.cat(rows, 1)
    tok[0, :4] = 0  # left padding on one row
    ctx = torch.randint(0, 3, (*tok.shape, 7), generator=g) * (tok == CTX)[..., None]
    return tok, ctx


def _slab(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.stack([v + 0.2 * torch.randn(v.shape, generator=g) for _ in range(n)])
        for k, v in new_adapter(CFG, ACFG, g).items()
    }


@pytest.fixture(scope="module")
def model() -> Recommender:
    torch.manual_seed(0)
    return Recommender(CFG).eval()


def test_row_without_adapter_equals_base_bit_for_bit(model: Recommender) -> None:
    tok, ctx = _batch()
    ad = RowAdapters.gather(
        ACFG,
        _slab(3),
        torch.tensor([0, -1, 2, -1]),
        torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]),
    )
    with torch.no_grad():
        base, _ = model(tok, ctx)
        mixed, _ = model(tok, ctx, ad)
    assert torch.equal(mixed[1], base[1])
    assert torch.equal(mixed[3], base[3])
    assert (mixed[0] - base[0]).abs().max() > 1e-3  # the adapters do something
    assert (mixed[2] - base[2]).abs().max() > 1e-3


def test_mixed_batch_equals_rows_one_by_one(model: Recommender) -> None:
    tok, ctx = _batch(6)
    idx = torch.tensor([2, 0, -1, 1, 2, -1])
    w = torch.eye(3)[torch.tensor([0, 1, 2, 0, 2, 1])]
    slab = _slab(3)
    with torch.no_grad():
        mixed, _ = model(tok, ctx, RowAdapters.gather(ACFG, slab, idx, w))
        for r in range(6):
            one, _ = model(
                tok[r : r + 1],
                ctx[r : r + 1],
                RowAdapters.gather(ACFG, slab, idx[r : r + 1], w[r : r + 1]),
            )
            assert torch.allclose(one[0], mixed[r], atol=1e-5), r


def test_mode_component_is_selected_by_mode(model: Recommender) -> None:
    tok, ctx = _batch(2)
    slab = _slab(1)
    idx = torch.tensor([0, 0])
    with torch.no_grad():
        a, _ = model(tok, ctx, RowAdapters.gather(ACFG, slab, idx, torch.eye(3)[[0, 0]]))
        b, _ = model(tok, ctx, RowAdapters.gather(ACFG, slab, idx, torch.eye(3)[[0, 1]]))
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_incremental_decoding_matches_full_forward(model: Recommender) -> None:
    tok, ctx = _batch()
    ad = RowAdapters.gather(ACFG, _slab(2), torch.tensor([0, -1, 1, 0]), torch.eye(3)[[0, 1, 2, 0]])
    with torch.no_grad():
        full, _ = model(tok, ctx, ad)
        a, cache = model(tok[:, :7], ctx[:, :7], ad, return_cache=True)
        b, cache = model(tok[:, 7:9], ctx[:, 7:9], ad, cache=cache, return_cache=True)
        c, _ = model(tok[:, 9:], ctx[:, 9:], ad, cache=cache)
    assert torch.allclose(torch.cat([a, b, c], 1), full, atol=1e-5)


def test_only_adapter_tensors_get_gradients(model: Recommender) -> None:
    tok, ctx = _batch()
    slab = {k: v.clone().requires_grad_(True) for k, v in _slab(2).items()}
    for p in model.parameters():
        p.requires_grad_(False)
    loss = model.loss(
        tok,
        ctx,
        RowAdapters.gather(ACFG, slab, torch.tensor([0, 1, 0, -1]), torch.eye(3)[[0, 1, 2, 0]]),
    )
    loss.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in slab.values())
    assert slab["lora_b.q"].grad.abs().sum() > 0
    for p in model.parameters():
        p.requires_grad_(True)


def test_rows_sharing_an_adapter_in_groups_equal_repeated_adapters(model: Recommender) -> None:
    tok, ctx = _batch()  # 4 rows: two requests with two rows each
    slab = _slab(2)
    grouped = RowAdapters.gather(ACFG, slab, torch.tensor([1, -1]), torch.eye(3)[[2, 0]])
    repeated = grouped.select(torch.tensor([0, 0, 1, 1]))
    a, _ = model(tok, ctx, grouped)
    b, _ = model(tok, ctx, repeated)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    base, _ = model(tok, ctx)
    assert torch.equal(a[2:], base[2:])  # the group without an adapter is the base, exactly


def test_shape_errors_name_the_tensor(model: Recommender) -> None:
    tok, ctx = _batch()
    with pytest.raises(ModelError, match=r"`tokens` should be \(B, T\)"):
        model(tok[0], ctx)
    with pytest.raises(ModelError, match=r"`ctx` has shape \(4, 13, 3\)"):
        model(tok, ctx[..., :3])
    slab = _slab(2)
    slab["lora_a.q"] = slab["lora_a.q"][:, :, :1]
    ad = RowAdapters.gather(ACFG, slab, torch.tensor([0, 1, 0, -1]))
    with pytest.raises(
        ModelError,
        match=r"adapter tensor 'lora_a.q' has shape \(4, 2, 1, 32\), "
        r"expected \(4, 2, 2, 32\)",
    ):
        model(tok, ctx, ad)
    ad = RowAdapters.gather(ACFG, _slab(2), torch.tensor([0, 1, 0]))
    with pytest.raises(
        ModelError, match=r"`active` has shape \(3,\): expected \(A,\) with A dividing the 4"
    ):
        model(tok, ctx, ad)
    s = _slab(2)
    del s["prefix"]
    with pytest.raises(ModelError, match=r"missing \['prefix'\]"):
        model(tok, ctx, RowAdapters.gather(ACFG, s, torch.tensor([0, 1, 0, 1])))
    ad = RowAdapters.gather(ACFG, _slab(2), torch.tensor([0, 1, 0, 1]), torch.zeros(4, 2))
    with pytest.raises(ModelError, match=r"`mode_weights` has shape \(4, 2\)"):
        model(tok, ctx, ad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level_sizes": ()}, "`level_sizes`"),
        ({"d_model": 30, "n_heads": 4}, "divisible by `n_heads`"),
        ({"n_heads": 4, "n_kv_heads": 3}, "multiple of `n_kv_heads`"),
        ({"d_model": 12, "n_heads": 4}, "should be even for RoPE"),
        ({"dropout": 1.0}, "`dropout`"),
        ({"n_layers": 0}, "`n_layers` should be positive"),
    ],
)
def test_model_config_validation(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"level_sizes": (4, 4), **kwargs}
    with pytest.raises(ModelError, match=match):
        ModelConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "`rank`"),
        ({"alpha": 0}, "`alpha`"),
        ({"targets": ("x",)}, "`targets`"),
        ({"targets": ("q", "q")}, "`targets`"),
        ({"n_prefix": -1}, "should be >= 0"),
    ],
)
def test_adapter_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        AdapterConfig(**kwargs)  # type: ignore[arg-type]


def test_adapter_shapes() -> None:
    shapes = adapter_shapes(CFG, ACFG)
    assert shapes["lora_a.k"] == (2, 2, 32)
    assert shapes["lora_b.k"] == (2, 16, 2)  # 2 kv heads x 8
    assert shapes["lora_a.down"] == (2, 2, 64)
    assert shapes["film_scale"] == (5, 32)
    assert shapes["mode_prefix"] == (3, 1, 32)
    assert AdapterConfig.from_dict(ACFG.to_dict()) == ACFG
    assert ModelConfig.from_dict(CFG.to_dict()) == CFG


@pytest.mark.parametrize("adapters", ["mixed", "none"])
def test_beam_decode_through_the_shared_prompt_equals_gathered_caches(
    model: Recommender, adapters: str
) -> None:
    """Beams reading their request's prompt cache through the group view get the same logits
    as the full cache gathered to every beam (the old path), over two reordering steps."""
    tok, ctx = _batch()  # 4 prompts
    ad = (
        RowAdapters.gather(ACFG, _slab(2), torch.tensor([0, -1, 1, 0]), torch.eye(3)[[0, 1, 2, 0]])
        if adapters == "mixed"
        else None
    )
    g = torch.Generator().manual_seed(3)
    w = 3
    with torch.no_grad():
        _, prompt = model(tok, ctx, ad, return_cache=True)
        assert prompt is not None
        beams = BeamCache.start(prompt)
        full = prompt
        origin = torch.arange(4).repeat_interleave(w)  # step 1: each prompt to w beams
        for _ in range(2):
            codes = torch.randint(FIRST_CODE, FIRST_CODE + 16, (4 * w, 1), generator=g)
            got, beams = model.decode(codes, prompt, beams, origin, ad)
            zero = torch.zeros(4 * w, 1, 7, dtype=torch.long)
            want, full = model(codes, zero, ad, full.select(origin), return_cache=True)
            assert full is not None
            torch.testing.assert_close(got, want[:, -1], atol=1e-5, rtol=1e-5)
            # step 2: beams reorder within their request
            perm = torch.randint(0, w, (4, w), generator=g)
            origin = (torch.arange(4)[:, None] * w + perm).reshape(-1)
    assert beams.k.shape[3] == 2  # only the two new positions are kept per beam


MOE = ModelConfig(**{**CFG.to_dict(), "n_experts": 3, "expert_ff": 32})


def _services(tok: torch.Tensor, ctx: torch.Tensor, seed: int = 5) -> torch.Tensor:
    """The batch with each step's service drawn from the three services (ids 2-4)."""
    g = torch.Generator().manual_seed(seed)
    ctx = ctx.clone()
    ctx[..., 0] = torch.randint(2, 5, tok.shape, generator=g) * (tok == CTX)
    return ctx


def test_experts_route_each_position_by_its_steps_service() -> None:
    torch.manual_seed(0)
    model = Recommender(MOE).eval()
    tok, ctx = _batch()
    ctx = _services(tok, ctx)
    svc = model.step_service(tok, ctx)
    for r in range(tok.shape[0]):
        current = 0
        for t in range(tok.shape[1]):
            if tok[r, t] == CTX:
                current = int(ctx[r, t, 0])
            assert int(svc[r, t]) == (current if tok[r, t] != 0 else svc[r, t])
    # a step's service changes the positions of that step and after, never before
    ctx2 = ctx.clone()
    last_ctx = int((tok[1] == CTX).nonzero()[-2])  # the second-to-last step of row 1
    ctx2[1, last_ctx, 0] = 2 + (int(ctx[1, last_ctx, 0]) - 1) % 3
    with torch.no_grad():
        a, _ = model(tok, ctx)
        b, _ = model(tok, ctx2)
    assert torch.equal(a[1, :last_ctx], b[1, :last_ctx])
    assert not torch.allclose(a[1, last_ctx + 1 :], b[1, last_ctx + 1 :])
    assert torch.equal(a[[0, 2, 3]], b[[0, 2, 3]])


def test_experts_decode_incrementally_and_through_the_shared_prompt() -> None:
    torch.manual_seed(0)
    model = Recommender(MOE).eval()
    tok, ctx = _batch()
    ctx = _services(tok, ctx)
    ad = RowAdapters.gather(ACFG, _slab(2), torch.tensor([0, -1, 1, 0]), torch.eye(3)[[0, 1, 2, 0]])
    tok, ctx = tok[:, :-1], ctx[:, :-1]  # rows end with a whole step [CTX c1 c2 c3]
    with torch.no_grad():
        full, _ = model(tok, ctx, ad)
        a, cache = model(tok[:, :-2], ctx[:, :-2], ad, return_cache=True)
        assert cache is not None and cache.service is not None
        # c2 and c3 come without context ids: the cached step's service routes them
        b, _ = model(tok[:, -2:], torch.zeros_like(ctx[:, -2:]), ad, cache=cache)
        torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)
        origin = torch.arange(4).repeat_interleave(2)
        codes = tok[origin, -2:-1]
        got, _ = model.decode(codes, cache, BeamCache.start(cache), origin, ad)
        zero = torch.zeros(8, 1, 7, dtype=torch.long)
        want, _ = model(codes, zero, ad, cache.select(origin))
    torch.testing.assert_close(got, want[:, -1], atol=1e-5, rtol=1e-5)


def test_expert_config_is_validated_and_a_dense_fingerprint_is_unchanged() -> None:
    with pytest.raises(ModelError, match="n_experts"):
        ModelConfig(level_sizes=(4,), n_experts=2)
    assert "n_experts" not in CFG.to_dict() and MOE.to_dict()["n_experts"] == 3
    assert ModelConfig.from_dict(MOE.to_dict()) == MOE


def test_label_smoothing_spreads_over_the_targets_level_only(model: Recommender) -> None:
    """Smoothed loss = (1 - e) CE + e * mean of -log p over the level's codes, by hand."""
    tok, ctx = _batch(seed=5)
    eps = 0.2
    with torch.no_grad():
        logits, _ = model(tok, ctx)
        got = model.loss(tok, ctx, reduction="sum", label_smoothing=eps)
        plain = model.loss(tok, ctx, reduction="sum")
    levels = ((0, 8), (8, 8), (16, 3))
    want = torch.zeros(())
    want_plain = torch.zeros(())
    for r in range(tok.shape[0]):
        for t in range(tok.shape[1] - 1):
            nxt = int(tok[r, t + 1]) - FIRST_CODE
            if nxt < 0 or int(tok[r, t]) == 0:
                continue
            off, size = next((o, s) for o, s in levels if o <= nxt < o + s)
            logp = logits[r, t, off : off + size].log_softmax(-1)
            want = want - (1 - eps) * logp[nxt - off] - eps * logp.mean()
            want_plain = want_plain - logp[nxt - off]
    torch.testing.assert_close(plain, want_plain)
    torch.testing.assert_close(got, want)
    with pytest.raises(ModelError, match="label_smoothing"):
        model.loss(tok, ctx, label_smoothing=1.0)
