r"""Merge the beam's list with the dense head's own list (research script, not the product).

The beam and the strong SASRec hit different users, and most of SASRec's
extra hits never reach the beam's final list (``experiments/beam_limits.py``).
The base's dense item head scores every item, so its own top items can bring
targets the beam pruned. LIGER merges generative retrieval with dense
retrieval's candidates; this script measures two merges of the two top-20
lists (both history excluded, the protocol's service restriction):

- ``splice n``: the beam's first ``n`` items, then the dense list's items not
  already taken, to 10 (``n`` 10 is the beam alone, 0 the dense head alone);
- ``rrf c w``: reciprocal-rank fusion, ``1 / (c + beam rank) + w / (c + dense
  rank)`` (an item missing from a list gets nothing from it;
  :func:`~userlayer.sdk.model.dense_search.fuse_lists`, the engine's ``fused``
  ranking).

Each merge's parameters are chosen on the validation split (by N@10, then
R@10) and read on the test split, and the recall of the union of the two
lists (the ceiling of any merge's R@20) is printed::

    python experiments/list_union.py --data beauty_cf --model cf_nofree10 --json list_union.json

With ``--second TEACHER`` (a ``userlayer teacher`` directory: the strong
SASRec) the second list is that SASRec's top items instead of the head's
(the same histories, capped at 20 items, the history excluded): what the
beam would gain from a dense ranker as good as SASRec beside it, the upper
side of a hybrid base with a per-item dense tower::

    python experiments/list_union.py --data beauty_cf --model gpu_s0 \
        --second teacher_sas --json union_sasrec.json
"""

from __future__ import annotations

import json
import time

import torch
from _run import base_parser, load_run

from userlayer.sdk.model.decoding import Recommendation
from userlayer.sdk.model.dense_search import fuse_lists
from userlayer.sdk.model.trie_search import TensorTrie
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.eval.dense import dense_lists
from userlayer.tools.eval.evaluate import EvalConfig, generative_lists
from userlayer.tools.eval.metrics import Accumulator
from userlayer.tools.eval.sasrec import item_indices, rank_sasrec
from userlayer.tools.train.examples import Prompt, UserSequences, build_prompts
from userlayer.tools.train.teacher import Teacher, load_teacher

K = 10
RRF = [(c, w) for c in (1, 10, 60) for w in (0.25, 0.5, 1.0, 2.0)]


def splice(beam: list[str], dense: list[str], n: int) -> list[str]:
    """The beam's first ``n`` items, then the dense list's new items, to ``K``."""
    out = beam[:n]
    taken = set(out)
    for i in dense:
        if len(out) >= K:
            break
        if i not in taken:
            out.append(i)
            taken.add(i)
    return out[:K]


def load_second(directory: str, data: str, table: SemanticIdTable, seqs: UserSequences) -> Teacher:
    """The ``--second`` teacher, refused unless it was trained on this data's training part.

    Its list ranks every item it knows, so the catalog must have one service
    (the beam's and the head's lists keep the protocol's service restriction).
    """
    if len(set(table.services.values())) > 1:
        raise SystemExit("--second ranks one service's items: the catalog has several services")
    teacher = load_teacher(directory)
    teacher.check_data(seqs, data)
    if set(teacher.item_ids) != set(table.codes):
        raise SystemExit(f"{directory} knows other items than {data}'s Semantic IDs")
    return teacher


def teacher_lists(teacher: Teacher, prompts: list[Prompt], k: int) -> list[list[Recommendation]]:
    """A teacher's (SASRec's) top ``k`` per prompt, the history excluded; scores are minus ranks."""
    index = item_indices(teacher.item_ids)
    hist = [[index[i] for i in p.history] for p in prompts]
    top = rank_sasrec(teacher.model, hist, k, exclude=hist)
    return [
        [Recommendation(teacher.item_ids[j - 1], -float(r)) for r, j in enumerate(row)]
        for row in top
    ]


def main() -> None:
    """Rank both splits by both lists, merge, choose on valid, print (and write ``--json``)."""
    ap = base_parser(__doc__)
    ap.add_argument("--second", default="", help="a teacher directory: its list, not the head's")
    a = ap.parse_args()
    t0 = time.time()
    model, table, seqs = load_run(a.data, a.model)
    trie, tensor_trie = table.trie(), TensorTrie(table)
    second = load_second(a.second, a.data, table, seqs) if a.second else None
    rows = {f"splice {n}": ("splice", n) for n in range(K + 1)}
    rows.update({f"rrf {c} {w}": ("rrf", (c, w)) for c, w in RRF})
    out: dict[str, dict[str, dict[str, float]]] = {}
    ceiling: dict[str, dict[str, float]] = {}
    only: dict[str, dict[str, list[int]]] = {}
    for split in ("valid", "test"):
        prompts = build_prompts(seqs, split, "full")
        if a.users:
            prompts = prompts[: a.users]
        wide = EvalConfig(k=a.beam, beam=a.beam, exclude_seen=True)
        with torch.no_grad():
            beams = generative_lists(model, trie, prompts, wide)
            if second is not None:
                denses = teacher_lists(second, prompts, a.beam)
            else:
                denses = dense_lists(model, tensor_trie, prompts, "dense", a.beam, 0, 256, True)
        accs = {name: Accumulator() for name in rows}
        union = beam_cap = dense_cap = 0
        for p, rb, rd in zip(prompts, beams, denses, strict=True):
            b, d = [x.item_id for x in rb], [x.item_id for x in rd]
            in_b, in_d = p.target in b, p.target in d
            beam_cap, dense_cap, union = beam_cap + in_b, dense_cap + in_d, union + (in_b or in_d)
            hit_beam = p.target in b[:K]
            for name, (kind, arg) in rows.items():
                if kind == "splice":
                    ranked = splice(b, d, arg)  # type: ignore[arg-type]
                else:
                    ranked = [x.item_id for x in fuse_lists(rb, rd, K, *arg)]  # type: ignore[misc]
                accs[name].add(ranked, p.target)
                hit = p.target in ranked
                if hit != hit_beam:  # users hit @10 by this row only, by the beam only
                    split_only = only.setdefault(split, {}).setdefault(name, [0, 0])
                    split_only[0 if hit else 1] += 1
        out[split] = {
            name: {m: round(v, 4) for m, v in acc.result()["all"].items()}
            for name, acc in accs.items()
        }
        n = len(prompts)
        ceiling[split] = {
            f"beam R@{a.beam}": round(beam_cap / n, 4),
            f"dense R@{a.beam}": round(dense_cap / n, 4),
            "union": round(union / n, 4),
        }
    chosen = {}
    for kind in ("splice", "rrf"):
        names = [n for n in rows if n.startswith(kind)]
        best = max(names, key=lambda n: (out["valid"][n]["N@10"], out["valid"][n]["R@10"]))
        a_only, b_only = only.get("test", {}).get(best, [0, 0])
        chosen[kind] = {
            "row": best,
            "valid": out["valid"][best],
            "test": out["test"][best],
            # paired against the beam on test: users hit @10 by one of the two only, and
            # McNemar's z ((a - b) / sqrt(a + b); |z| > 1.96: p < 0.05)
            "test: hit only by this row, only by the beam": [a_only, b_only],
            "test: McNemar z": round((a_only - b_only) / max(1, a_only + b_only) ** 0.5, 2),
        }
    res = {
        "second list": a.second or "the dense head",
        "beam": a.beam,
        "users": len(prompts),
        "ceiling": ceiling,
        "chosen on valid": chosen,
        "results": out,
        "seconds": round(time.time() - t0),
    }
    print(json.dumps({k: v for k, v in res.items() if k != "results"}, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
