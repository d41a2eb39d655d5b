"""Serving prompts: session items, the request's context and a layer's favourites."""

from __future__ import annotations

from userlayer.sdk.model.prompt import encode_request
from userlayer.sdk.model.tokens import CTX, ContextVocab, item_tokens
from userlayer.sdk.schemas import Context, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

ITEMS = {f"i{k}": (k // 4, k % 4) for k in range(16)}
TABLE = SemanticIdTable(
    codes=ITEMS,
    services={i: Service.KUPER if k % 2 else Service.SAMOKAT for k, i in enumerate(ITEMS)},
    level_sizes=(4, 4),
)
VOCAB = ContextVocab()


def _step(item: str) -> list[int]:
    return [CTX, *item_tokens(TABLE.level_sizes, TABLE.codes[item])]


def test_favourites_come_first_then_the_last_session_items() -> None:
    ctx = Context(daypart="evening")
    p = encode_request(
        "samokat", ctx, ["i1", "zz", "i2", "i3"], TABLE, VOCAB, 5, favourites=["i9", "gone", "i4"]
    )
    assert p.tokens == [*_step("i9"), *_step("i4"), *_step("i1"), *_step("i2"), *_step("i3"), CTX]
    assert p.unknown_items == ("zz",)  # favourites a newer catalog dropped are not reported
    # each item step carries the request's context and the item's own service
    assert p.ctx[0] == list(VOCAB.encode_context(Service.KUPER, ctx))
    assert p.ctx[-1] == list(VOCAB.encode_context("samokat", ctx))
    # at most max_items in all: the session's last items first, then the most frequent favourites
    p = encode_request("samokat", ctx, ["i1", "i2", "i3"], TABLE, VOCAB, 4, ["i9", "i5", "i4"])
    assert p.tokens == [*_step("i4"), *_step("i1"), *_step("i2"), *_step("i3"), CTX]
    assert encode_request("samokat", ctx, ["i2"], TABLE, VOCAB, 1, ["i4"]).tokens == [
        *_step("i2"),
        CTX,
    ]
    assert encode_request("samokat", ctx, [], TABLE, VOCAB, None, ["i4"]).tokens == [
        *_step("i4"),
        CTX,
    ]
