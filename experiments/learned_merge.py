r"""A learned merge of the beam's list and the dense head's list (research script, not the product).

The union of the beam's top 20 and the head's top 20 holds 24% more test
targets than the beam's list, and reciprocal-rank fusion (the ``fused``
ranking) turns little of that into the top 10 (``experiments/list_union.py``).
Here a small scorer ranks the union's candidates from their features:

- the beam's log-probability and reciprocal rank (an item the beam did not
  return: rank 0 and the list's lowest log-probability, with a flag);
- the head's log-probability (every item has one) and reciprocal rank in
  the head's top list;
- the item's log training count (the training part: every user's events
  but the last two).

It is fitted on the validation split with a listwise softmax (each prompt's
target against the prompt's other candidates; prompts whose target is in
neither list are left out), on 80% of the validation users, its kind
(linear, or one hidden layer of 16) chosen on the other 20%, and read on
the test split against the beam and the ``fused`` ranking in the same run::

    python experiments/learned_merge.py --data beauty_cf --model cf_nofree10 \
        --json learned_merge.json
"""

from __future__ import annotations

import json
import math
import time

import torch
from _run import base_parser, load_run, training_counts
from torch import Tensor, nn

from userlayer.sdk.model.decoding import Recommendation, TorchDecoder
from userlayer.sdk.model.dense_search import fuse_lists, head_order
from userlayer.sdk.model.trie_search import TensorTrie, item_mask, trie_beam_search
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.train.examples import Prompt, build_prompts, pack_prompts

K = 10
N_FEATURES = 6


def candidates(
    model: torch.nn.Module,
    trie: TensorTrie,
    order: Tensor,
    prompts: list[Prompt],
    width: int,
    log_count: Tensor,
) -> tuple[list[list[str]], Tensor, Tensor, list[list[str]], list[list[str]]]:
    """Each prompt's union of the two lists, its features (P, C, F), a mask, and both lists."""
    ids: list[list[str]] = []
    feats: list[Tensor] = []
    beams_out: list[list[str]] = []
    heads_out: list[list[str]] = []
    for s in range(0, len(prompts), 256):
        chunk = prompts[s : s + 256]
        tok, ctx = pack_prompts(chunk)
        services = [p.service for p in chunk]
        exclude = [p.history for p in chunk]
        dec = TorchDecoder(model)  # type: ignore[arg-type]
        with torch.no_grad():
            beams = trie_beam_search(dec, trie, tok, ctx, width, width, services, exclude)
            scores = dec.items()
        assert scores is not None
        lp = scores[:, order].float().log_softmax(-1)
        lp = lp.masked_fill(~item_mask(trie, len(chunk), services, exclude), float("-inf"))
        top = lp.topk(width, dim=-1).indices
        for r, recs in enumerate(beams):
            beam = [x.item_id for x in recs]
            head = [trie.items[int(j)] for j in top[r]]
            beams_out.append(beam)
            heads_out.append(head)
            union = list(dict.fromkeys(beam + head))
            b_lp = {x.item_id: x.score for x in recs}
            low = min(b_lp.values(), default=0.0) - 1.0
            b_rank = {i: n for n, i in enumerate(beam)}
            h_rank = {i: n for n, i in enumerate(head)}
            rows = []
            for i in union:
                j = trie.index[i]
                rows.append(
                    [
                        b_lp.get(i, low),
                        float(i not in b_lp),
                        1.0 / (1 + b_rank[i]) if i in b_rank else 0.0,
                        float(lp[r, j]),
                        1.0 / (1 + h_rank[i]) if i in h_rank else 0.0,
                        float(log_count[j]),
                    ]
                )
            ids.append(union)
            feats.append(torch.tensor(rows, dtype=torch.float32))
    width_c = max(len(f) for f in feats)
    x = torch.zeros(len(feats), width_c, N_FEATURES)
    mask = torch.zeros(len(feats), width_c, dtype=torch.bool)
    for n, f in enumerate(feats):
        x[n, : len(f)] = f
        mask[n, : len(f)] = True
    return ids, x, mask, beams_out, heads_out


def fit(
    kind: str, x: Tensor, mask: Tensor, target: Tensor, seed: int = 0, steps: int = 300
) -> nn.Module:
    """A scorer of candidates fitted by listwise softmax (full batch, Adam)."""
    torch.manual_seed(seed)
    if kind == "linear":
        net: nn.Module = nn.Linear(N_FEATURES, 1)
    else:
        net = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.03, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        logits = net(x)[..., 0].masked_fill(~mask, float("-inf"))
        loss = nn.functional.cross_entropy(logits, target)
        loss.backward()
        opt.step()
    return net


def rank(net: nn.Module, ids: list[list[str]], x: Tensor, mask: Tensor) -> list[list[str]]:
    """Each prompt's top ``K`` by the scorer."""
    with torch.no_grad():
        s = net(x)[..., 0].masked_fill(~mask, float("-inf"))
    top = s.topk(min(K, s.shape[1]), dim=-1).indices.tolist()
    return [[ids[n][j] for j in top[n] if j < len(ids[n])] for n in range(len(ids))]


def _metrics(lists: list[list[str]], prompts: list[Prompt]) -> dict[str, float]:
    acc = Accumulator()
    for ranked, p in zip(lists, prompts, strict=True):
        acc.add(ranked[:K], p.target)
    return {m: round(v, 4) for m, v in acc.result()["all"].items()}


def main() -> None:
    """Build both splits' candidates, fit on valid, read on test, print (and write ``--json``)."""
    ap = base_parser(__doc__)
    a = ap.parse_args()
    t0 = time.time()
    model, table, seqs = load_run(a.data, a.model)
    trie = TensorTrie(table)
    order = head_order(model, trie)
    count = training_counts(seqs)
    log_count = torch.tensor([math.log(count[i] + 1) for i in trie.items])
    data = {}
    for split in ("valid", "test"):
        prompts = build_prompts(seqs, split, "full")
        if a.users:
            prompts = prompts[: a.users]
        data[split] = (prompts, *candidates(model, trie, order, prompts, a.beam, log_count))
    # fit on valid (80%: users whose target is among their candidates), choose on the rest
    prompts, ids, x, mask, _, _ = data["valid"]
    target = torch.tensor(
        [u.index(p.target) if p.target in u else -1 for p, u in zip(prompts, ids, strict=True)]
    )
    mean = x[mask].mean(0)
    std = x[mask].std(0).clamp(min=1e-6)
    norms = {s: (d[2] - mean) / std * d[3][..., None] for s, d in data.items()}  # valid's stats
    norm = norms["valid"]
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(prompts), generator=gen)
    cut = int(0.8 * len(prompts))
    fit_rows, hold_rows = perm[:cut], perm[cut:]
    has = target >= 0
    chosen: dict[str, dict[str, float]] = {}
    nets: dict[str, nn.Module] = {}
    for kind in ("linear", "mlp16"):
        rows = fit_rows[has[fit_rows]]
        nets[kind] = fit(kind, norm[rows], mask[rows], target[rows])
        hold = hold_rows.tolist()
        lists = rank(nets[kind], [ids[i] for i in hold], norm[hold_rows], mask[hold_rows])
        chosen[kind] = _metrics(lists, [prompts[i] for i in hold])
    best = max(chosen, key=lambda k: (chosen[k]["N@10"], chosen[k]["R@10"]))
    out: dict[str, object] = {"held-out valid (20%)": chosen, "chosen": best}
    for split in ("valid", "test"):
        prompts, ids, _, mask, beams, heads = data[split]
        norm = norms[split]
        fused = [
            [
                r.item_id
                for r in fuse_lists(
                    [Recommendation(i, 0.0) for i in b], [Recommendation(i, 0.0) for i in h], K
                )
            ]
            for b, h in zip(beams, heads, strict=True)
        ]
        out[split] = {
            "beam": _metrics(beams, prompts),
            "fused": _metrics(fused, prompts),
            f"learned ({best})": _metrics(rank(nets[best], ids, norm, mask), prompts),
            "union R@40 ceiling": round(
                sum(p.target in set(u) for p, u in zip(prompts, ids, strict=True)) / len(prompts), 4
            ),
        }
    lin = nets["linear"]
    assert isinstance(lin, nn.Linear)
    names = ["beam lp", "not in beam", "beam 1/rank", "head lp", "head 1/rank", "log count"]
    out["linear weights (standardized features)"] = dict(
        zip(names, [round(w, 3) for w in lin.weight[0].tolist()], strict=True)
    )
    out["seconds"] = round(time.time() - t0)
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
