"""``userlayer train-steer``: teach a critique steer to the frozen base.

Episodes come from the training sequences, as ``eval-critiques`` derives them
from held-out events (:func:`userlayer.tools.eval.critiques.make_episode`):
at every training position of a user (the events the base is pretrained on:
views, carts, purchases; never the last two, the validation and test
targets), the session before it is the request, its last
item the one the user reacts to, and a critique that the next item satisfies
against it is drawn: cheaper, another brand, without meat, healthier... The
critique's text is written in Russian or English, in one of several phrasings
(:data:`PHRASES`), so the steer reads the words rather than one fixed string.

The base is frozen; only the steer's MLP (:class:`~userlayer.sdk.model.steer.CritiqueSteer`)
learns, by the next item's code cross-entropy with the steer's prefix
vectors in the prompt. A tenth of the users are held out: their episodes'
loss with and without the steer is reported each epoch, and the best epoch's
steer is kept. The base's fingerprint does not change, so exports and every
user's layer stay valid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userlayer.edge.examples import ExampleConfig, session_before
from userlayer.sdk.critique import CatalogIndex, load_catalog
from userlayer.sdk.model import RowAdapters, load_model
from userlayer.sdk.model.io import fingerprint
from userlayer.sdk.model.prompt import encode_request, pack_prompts
from userlayer.sdk.model.steer import STEER_ONLY, CritiqueSteer, SteerConfig, save_steer
from userlayer.sdk.model.tokens import ContextVocab, item_tokens
from userlayer.sdk.navec import NAVEC_SHA256, Navec
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.critiques import make_episode
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import DEFAULT_ACTIONS

__all__ = [
    "PHRASES",
    "SteerExample",
    "SteerTrainConfig",
    "steer_examples",
    "train_steer",
]


# more ways to say each critique kind; make_episode's own text is always one of them
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "ru": {
        "cheaper": ("подешевле", "дешевле", "слишком дорого", "что-нибудь бюджетнее"),
        "pricier": ("подороже", "что-нибудь получше", "премиум"),
        "brand": ("другой бренд", "другую марку", "не этот бренд"),
        "bigger": ("побольше упаковку", "упаковку побольше", "большую упаковку"),
        "smaller": ("поменьше упаковку", "упаковку поменьше", "маленькую упаковку"),
        "healthier": ("полезнее", "что-нибудь полезное", "здоровое питание"),
        "kids": ("для ребёнка", "детское", "для малыша"),
    },
    "en": {
        "cheaper": ("cheaper", "too expensive", "something cheaper", "budget"),
        "pricier": ("more expensive", "premium", "something better"),
        "brand": ("another brand", "different brand", "not this brand"),
        "bigger": ("bigger pack", "larger pack", "family size"),
        "smaller": ("smaller pack", "small pack", "less"),
        "healthier": ("healthier", "something healthy", "healthy food"),
        "kids": ("for a kid", "for children", "for a baby"),
    },
}


@dataclass(frozen=True)
class SteerTrainConfig:
    """How to train the steer; validated on creation."""

    episodes: int = 20_000  # at most, over all users
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    n_vectors: int = 2
    hidden: int = 256
    valid_share: float = 0.1  # users held out for the steer's validation
    max_items: int = 20
    # only positions whose reference and target share a category: the user wants another
    # item of the same kind, as after a rejected recommendation (off where no item has one)
    same_category: bool = True
    seed: int = 0  # episode drawing and initialization (no privacy mechanism here)
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("episodes", "epochs", "batch_size", "n_vectors", "hidden", "max_items"):
            if getattr(self, name) < 1:
                raise ToolsError(f"`{name}` should be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.valid_share < 1.0 or not self.lr > 0:
            raise ToolsError("`valid_share` should be in (0, 1) and `lr` positive")


@dataclass(frozen=True)
class SteerExample:
    """One training episode: the prompt with the target's codes, the critique said."""

    tokens: list[int]
    ctx: list[list[int]]
    text: str
    kind: str
    reference: str  # the item reacted to (the session's last)
    target: str


def _phrase(kind: str, text: str, language: str, rng: np.random.Generator) -> str:
    """Another phrasing of ``text`` (kind "without X" keeps its concept word)."""
    options = PHRASES[language].get(kind)
    if options is None:  # without X: "без мяса" / "no meat" and their other forms
        word = text.split(maxsplit=1)[1]
        options = (
            (f"без {word}", f"не хочу {word}")
            if language == "ru"
            else (f"no {word}", f"without {word}", f"{word}-free")
        )
    return options[int(rng.integers(len(options)))]


def steer_examples(
    ds: Dataset,
    catalog: CatalogIndex,
    table: SemanticIdTable,
    vocab: ContextVocab,
    model_max: int,
    cfg: SteerTrainConfig,
    rng: np.random.Generator,
) -> tuple[list[SteerExample], list[SteerExample]]:
    """Training and held-out episodes (by user) from the training positions."""
    # the actions the base is pretrained on: positions then match its held-out targets
    by_user = ds.user_events(actions=DEFAULT_ACTIONS)
    users = sorted(by_user)
    held = set(np.asarray(users)[rng.random(len(users)) < cfg.valid_share].tolist())
    scfg = ExampleConfig()
    cands: list[tuple[str, int]] = [
        (u, i) for u in users for i in range(1, len(by_user[u]) - 2)
    ]  # positions 1 .. n-3: the last two events are validation and test targets
    order = rng.permutation(len(cands))
    train: list[SteerExample] = []
    valid: list[SteerExample] = []
    want_valid = int(cfg.episodes * cfg.valid_share)
    category = {i: a.category for i, a in catalog.attributes.items() if a.category}
    same = cfg.same_category and bool(category)
    for j in order:
        if len(train) >= cfg.episodes - want_valid and len(valid) >= want_valid:
            break
        u, i = cands[j]
        bucket = valid if u in held else train
        if bucket is valid and len(valid) >= want_valid:
            continue
        if bucket is train and len(train) >= cfg.episodes - want_valid:
            continue
        evs = by_user[u]
        target = evs[i]
        if target.item_id not in table.codes:
            continue
        sess = tuple(e.item_id for e in session_before(evs, i, scfg)) or (evs[i - 1].item_id,)
        if same and category.get(sess[-1]) != category.get(target.item_id):
            continue
        language = "ru" if rng.random() < 0.5 else "en"
        ep = make_episode(catalog, sess, target, language, rng)
        if ep is None:
            continue
        p = encode_request(
            target.service, target.context, sess, table, vocab, min(cfg.max_items, model_max)
        )
        codes = item_tokens(table.level_sizes, table.codes[target.item_id])
        zero = [0] * len(vocab.sizes)
        bucket.append(
            SteerExample(
                p.tokens + codes,
                p.ctx + [zero] * len(codes),
                _phrase(ep.kind, ep.text, language, rng),
                ep.kind,
                sess[-1],
                target.item_id,
            )
        )
    return train, valid


def _batch_loss(
    model: Any,
    steer: CritiqueSteer | None,
    batch: list[SteerExample],
    vectors: dict[str, np.ndarray],
    n_ctx: int,
) -> torch.Tensor:
    tok, ctx = pack_prompts([(e.tokens, e.ctx) for e in batch], n_ctx)
    rows = None
    if steer is not None:
        text = torch.from_numpy(np.stack([vectors[e.text] for e in batch]))
        b = len(batch)
        rows = RowAdapters(STEER_ONLY, torch.zeros(b, dtype=torch.bool), {}, None, steer(text))
    loss: torch.Tensor = model.loss(tok, ctx, rows, last_item_only=True)
    return loss


def train_steer(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: SteerTrainConfig | None = None,
    on_epoch: Callable[[int, float, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train the steer and save it beside the base; returns the report.

    Raises:
        ToolsError: no catalog attributes, or too few episodes.
    """
    cfg = cfg or SteerTrainConfig()
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_dir = Path(model_dir)
    model = load_model(model_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    base = fingerprint(model)
    table = SemanticIdTable.load(model_dir / "sids.json")
    ds = Dataset.load(data_dir)
    catalog = load_catalog(model_dir, list(table.codes))
    if catalog is None:
        catalog = CatalogIndex(list(table.codes), ds.attributes())
    rng = np.random.default_rng(cfg.seed)
    train, valid = steer_examples(
        ds, catalog, table, model.ctx_vocab, model.cfg.max_items - 1, cfg, rng
    )
    if len(train) < cfg.batch_size or not valid:
        raise ToolsError(
            f"{len(train)} training and {len(valid)} held-out critique episodes: too few "
            "(the data needs prices, brands or item text, and users with 4+ events)"
        )
    navec = Navec()
    texts = sorted({e.text for e in (*train, *valid)})
    vectors = dict(zip(texts, navec.encode(texts).vectors, strict=True))
    torch.manual_seed(cfg.seed)
    steer = CritiqueSteer(SteerConfig(model.cfg.d_model, navec.dim, cfg.n_vectors, cfg.hidden))
    opt = torch.optim.AdamW(steer.parameters(), lr=cfg.lr, weight_decay=0.01)
    n_ctx = len(model.ctx_vocab.sizes)

    def held_out(with_steer: bool) -> float:
        steer.eval()
        total = 0.0
        with torch.no_grad():
            for s in range(0, len(valid), 256):
                part = valid[s : s + 256]
                total += len(part) * float(
                    _batch_loss(model, steer if with_steer else None, part, vectors, n_ctx)
                )
        return total / len(valid)

    base_loss = held_out(False)
    best = (float("inf"), 0, {k: v.clone() for k, v in steer.state_dict().items()})
    curve = []
    for epoch in range(1, cfg.epochs + 1):
        steer.train()
        perm = rng.permutation(len(train))
        run = 0.0
        steps = 0
        for s in range(0, len(train), cfg.batch_size):
            part = [train[j] for j in perm[s : s + cfg.batch_size]]
            loss = _batch_loss(model, steer, part, vectors, n_ctx)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            run += float(loss.detach())
            steps += 1
        v = held_out(True)
        curve.append({"epoch": epoch, "train": run / steps, "valid": v})
        if on_epoch:
            on_epoch(epoch, run / steps, v, base_loss)
        if v < best[0]:
            best = (v, epoch, {k: t.clone() for k, t in steer.state_dict().items()})
    steer.load_state_dict(best[2])
    kinds: dict[str, int] = {}
    for e in train:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    report = {
        "episodes": {"train": len(train), "held_out": len(valid), "kinds": kinds},
        "held_out_loss": {"without_steer": base_loss, "with_steer": best[0]},
        "best_epoch": best[1],
        "curve": curve,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_steer(
        steer,
        model_dir,
        base,
        {"encoder_sha256": NAVEC_SHA256, "trained": report},
    )
    return report
