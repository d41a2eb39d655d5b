"""The SASRec baseline: it learns, stops early on validation, keeps its best weights."""

from __future__ import annotations

import pytest

from userlayer.tools.eval.sasrec import SASRecConfig, rank_sasrec, train_sasrec

N = 12


def _cycles(users: int = 60, length: int = 9) -> list[list[int]]:
    """Each user walks 1..N in order from their own start: the next item is certain."""
    return [[(u + j) % N + 1 for j in range(length)] for u in range(users)]


def test_it_learns_a_certain_next_item_and_stops_once_validation_stops_rising() -> None:
    seqs = _cycles()
    train = [s[:-1] for s in seqs]
    valid = ([s[:-1] for s in seqs], [s[-1] for s in seqs])
    cfg = SASRecConfig(d=16, dropout=0.0, epochs=200, patience=2, eval_every=1, lr=1e-2)
    epochs: list[int] = []
    scores: list[float] = []
    model = train_sasrec(
        train, N, cfg, lambda e, _: epochs.append(e), valid, lambda e, n: scores.append(n)
    )
    assert max(scores) > 0.8  # the next item ranked near the top
    assert len(epochs) < cfg.epochs  # stopped early: two validations without a gain
    assert model.best_epoch == scores.index(max(scores)) + 1  # ... and kept that epoch
    ranked = rank_sasrec(model, [s[:-1] for s in seqs], 10)
    hits = [s[-1] in r for r, s in zip(ranked, seqs, strict=True)]
    assert sum(hits) / len(hits) > 0.9  # the kept weights are the good ones


def test_the_sampled_softmax_learns_the_certain_next_item_too() -> None:
    seqs = _cycles()
    valid = ([s[:-1] for s in seqs], [s[-1] for s in seqs])
    cfg = SASRecConfig(
        d=16, dropout=0.0, epochs=60, patience=0, lr=1e-2, loss="sampled", negatives=4
    )
    model = train_sasrec([s[:-1] for s in seqs], N, cfg, valid=valid)
    ranked = rank_sasrec(model, valid[0], 3)
    hits = [t in r for r, t in zip(ranked, valid[1], strict=True)]
    assert sum(hits) / len(hits) > 0.9


def test_excluded_items_are_never_ranked() -> None:
    model = train_sasrec(_cycles(users=10), N, SASRecConfig(d=8, epochs=1))
    hist = [[1, 2, 3], [7, 8]]
    ranked = rank_sasrec(model, hist, N - 3, exclude=hist)
    assert not set(ranked[0]) & {1, 2, 3} and not set(ranked[1]) & {7, 8}
    assert len(set(ranked[0])) == N - 3  # every other item still ranked


def test_scores_do_not_depend_on_the_width_of_the_padding() -> None:
    """Padding is masked out of attention: a short history scores the same in any batch."""
    import torch

    from userlayer.tools.eval.sasrec import SASRec, pad_left

    model = SASRec(N, SASRecConfig(d=16, heads=2)).eval()
    hist = [[3, 4, 5]]
    with torch.no_grad():
        narrow = model.scores(pad_left(hist, 3))
        wide = model.scores(pad_left(hist, 50))
    torch.testing.assert_close(narrow, wide, atol=1e-5, rtol=1e-5)


def test_without_validation_or_patience_every_epoch_runs() -> None:
    seqs = _cycles(users=10)
    epochs: list[int] = []
    valid = ([s[:-1] for s in seqs], [s[-1] for s in seqs])
    cfg = SASRecConfig(d=8, epochs=3, patience=0)
    model = train_sasrec(seqs, N, cfg, lambda e, _: epochs.append(e), valid)
    assert epochs == [1, 2, 3] and model.best_epoch == 3
    train_sasrec(seqs, N, SASRecConfig(d=8, epochs=2), lambda e, _: epochs.append(e))
    assert epochs[-2:] == [1, 2]


def test_the_seed_makes_a_run_repeatable_and_another_seed_a_different_run() -> None:
    import torch

    seqs = _cycles(users=10)

    def weights(seed: int) -> list[torch.Tensor]:
        cfg = SASRecConfig(d=8, epochs=2, loss="sampled", negatives=4, seed=seed)
        return [p.detach().clone() for p in train_sasrec(seqs, N, cfg).parameters()]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"patience": -1}, "patience"),
        ({"dropout": 1.0}, "dropout"),
        ({"loss": "bpr"}, "loss"),
        ({"negatives": 0}, "negatives"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SASRecConfig(**kwargs)  # type: ignore[arg-type]


def test_split_histories_holds_out_the_last_items_and_validates_on_the_one_before() -> None:
    from userlayer.tools.eval.sasrec import split_histories

    ids = ["a", "b", "c", "d", "e"]
    seqs = [["a", "b", "c", "d", "e"], ["b", "c"], ["e", "d", "c"], []]
    train, valid = split_histories(seqs, ids, 1)  # the test split: valid and test held out
    assert train == [[1, 2, 3], [], [5], []]
    assert valid == ([[1, 2, 3], [5]], [4, 4])  # never the last item
    train, valid = split_histories(seqs, ids, 0)  # the validation split
    assert train == [[1, 2, 3, 4], [2], [5, 4], []]
    assert valid == ([[1, 2, 3, 4], [2], [5, 4]], [5, 3, 3])
    assert split_histories([["a", "b"]], ids, 1) == ([[]], None)
