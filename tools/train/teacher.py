"""A SASRec teacher for the base's pretraining: trained, saved, loaded, and asked.

Knowledge distillation (``PretrainConfig.distill``) pulls the generative
base's item and code distributions towards a stronger sequential model's:
at each item start of a training window, the teacher's softmax over every
item given the window's items before it. The teacher is the strong SASRec
of :mod:`userlayer.tools.eval.sasrec`, trained on the same training part as
the base (each user's items but the last two) and stopped early on the
validation item, as the eval's baseline is.

A teacher directory holds ``teacher.safetensors`` (weights, no pickle) and
``teacher.json`` (its :class:`SASRecConfig`, its item ids in index order, the
data directory it was trained on, a digest of that training part, and its
best epoch).

Each item start gets its own history, read as the teacher ranks one at
inference (its last item at the last position): about ``span`` times the
tokens of one causal pass over the window, and faithful to the teacher's
ranking rather than to its training positions. A teacher trained with the
sampled softmax (the CLI's default, the strong SASRec's) is calibrated only
roughly over the full catalog; ``PretrainConfig.distill_temperature``
softens or sharpens it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.sasrec import (
    SASRec,
    SASRecConfig,
    item_indices,
    split_histories,
    train_sasrec,
)
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.train.examples import UserSequences

__all__ = ["TEACHER_FORMAT", "Teacher", "load_teacher", "train_teacher", "training_digest"]

logger = logging.getLogger(__name__)

TEACHER_FORMAT = "userlayer-teacher/1"
_WEIGHTS, _DOC = "teacher.safetensors", "teacher.json"


def training_digest(seqs: UserSequences) -> str:
    """A digest of what pretraining reads: each user's items but the last two, in order.

    A teacher records it, and pretraining refuses a teacher whose digest is not
    its own data's: one trained on other data, or on the held-out items, would
    leak them into the base.
    """
    h = hashlib.sha256()
    for user, items in zip(seqs.users, seqs.items, strict=True):
        h.update(json.dumps([str(user), list(items[:-2])]).encode("utf-8"))
    return h.hexdigest()


def train_teacher(data_dir: str | Path, out: str | Path, cfg: SASRecConfig) -> dict[str, Any]:
    """Train a SASRec on the data's training part and write it to ``out``; returns its doc.

    The training part is what pretraining reads (each user's items but the
    last two); early stopping reads the validation item (the second to last),
    never the test item.

    Raises:
        ToolsError: if the data has no Semantic IDs or too few events.
    """
    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / "sids.json").exists():
        raise ToolsError(f"{data_dir} has no sids.json: run `userlayer sids build` first")
    table = SemanticIdTable.load(data_dir / "sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(data_dir), table)
    item_ids = sorted(table.codes)
    train, valid = split_histories(seqs.items, item_ids, 1)  # pretraining's training part
    if not any(len(t) >= 2 for t in train):
        raise ToolsError("no training sequences: users need at least 4 events")
    model = train_sasrec(
        train,
        len(item_ids),
        cfg,
        lambda ep, loss: logger.info("teacher epoch %d: loss %.4f", ep, loss),
        valid,
        lambda ep, n: logger.info("teacher epoch %d: validation NDCG@10 %.4f", ep, n),
    )
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / _WEIGHTS))
    doc = {
        "format": TEACHER_FORMAT,
        "sasrec": asdict(cfg),
        "items": item_ids,
        "best_epoch": model.best_epoch,
        "data": str(data_dir),
        "training_digest": training_digest(seqs),
    }
    (out / _DOC).write_text(json.dumps(doc, indent=2), "utf-8")
    return doc


class Teacher:
    """A loaded teacher, asked for item probabilities at a base's item starts."""

    def __init__(self, model: SASRec, item_ids: list[str], digest: str = "") -> None:
        self.model = model.eval()
        self.item_ids = item_ids
        self.digest = digest  # training_digest of the data it was trained on
        self.columns: Tensor | None = None  # the head's items as teacher indices (1..n)

    def to_head(self, head_items: list[str]) -> None:
        """Map the teacher's items to a head's order (``head_items``: each head index's id).

        Raises:
            ToolsError: if the head has an item the teacher does not know.
        """
        index = item_indices(self.item_ids)
        missing = [i for i in head_items if i not in index]
        if missing:
            raise ToolsError(
                f"the teacher does not know {len(missing)} of the head's items "
                f"(first: {missing[0]!r}): train it on the same data and Semantic IDs"
            )
        self.columns = torch.tensor([index[i] for i in head_items], dtype=torch.long)

    def check_data(self, seqs: UserSequences, data_dir: str | Path) -> None:
        """Refuse data whose training part is not the one this teacher was trained on.

        Raises:
            ToolsError: if the training part's digest differs (another dataset,
                other Semantic IDs, or a teacher that could have read held-out items).
        """
        if self.digest != training_digest(seqs):
            raise ToolsError(
                f"the teacher was trained on other data than {data_dir}'s training part "
                f"(its digest differs): train it with `userlayer teacher --data {data_dir}`"
            )

    def to(self, dev: torch.device) -> Teacher:
        """Move the teacher (and its column map) to ``dev``."""
        self.model = self.model.to(dev)
        if self.columns is not None:
            self.columns = self.columns.to(dev)
        return self

    @torch.no_grad()
    def probs(self, start: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
        """The teacher's item probabilities (N, n_items) at each item start, head order.

        ``start`` and ``index`` are the base's
        :meth:`~userlayer.sdk.model.transformer.Recommender.item_starts`; row
        r of the result belongs to the r-th true ``start`` in row-major order.
        The teacher reads the row's items before that start (the window's
        history) as it ranks a history at inference, one history per start;
        the first item of a row gets a zero row (nothing to read).
        """
        if self.columns is None:
            raise ToolsError("map the teacher to the head's items first (`to_head`)")
        n_items = len(self.columns)
        rows, cols = start.nonzero(as_tuple=True)
        out = torch.zeros(len(rows), n_items, device=start.device)
        count = start.sum(1)  # items per row
        width = int(count.max()) if len(count) else 0
        if width < 2:
            return out
        if width > self.model.cfg.max_len + 1:
            raise ToolsError(
                f"windows of {width} items are longer than the teacher's history "
                f"({self.model.cfg.max_len}): train it with a longer --max-len"
            )
        k = start.long().cumsum(1)[rows, cols] - 1  # each start's item number in its row
        # the rows' items as teacher indices, left-padded to the longest row
        seq = torch.zeros(len(count), width, dtype=torch.long, device=start.device)
        seq[rows, width - count[rows] + k] = self.columns[index[rows, cols]]
        # each start's history (its row's items before it), right-aligned as the teacher
        # ranks a history: its last item at the last position
        has = k >= 1
        b, kk = rows[has], k[has]
        span = int(kk.max())
        src = (width - count[b] + kk)[:, None] - span + torch.arange(span, device=start.device)
        hist = seq[b[:, None], src.clamp(min=0)] * (src >= 0)
        logits = self.model(hist)[:, -1] @ self.model.item.weight[self.columns].T
        out[has] = (logits / temperature).softmax(-1)
        return out


def load_teacher(directory: str | Path) -> Teacher:
    """Load a teacher directory written by :func:`train_teacher` (eval mode, CPU).

    Raises:
        ToolsError: missing or corrupt files, another format, or weights that
            do not fit the recorded configuration.
    """
    d = Path(directory)
    try:
        doc = json.loads((d / _DOC).read_text("utf-8"))
        state = load_file(str(d / _WEIGHTS))
    except (OSError, ValueError) as e:
        raise ToolsError(f"cannot load a teacher from {d}: {e}") from e
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ToolsError(f"cannot read the teacher's weights in {d}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != TEACHER_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise ToolsError(f"{d / _DOC} is not a teacher ({TEACHER_FORMAT!r}), format {got!r}")
    items, known = doc.get("items"), {f.name for f in fields(SASRecConfig)}
    raw = doc.get("sasrec")
    if not (isinstance(items, list) and all(isinstance(i, str) for i in items) and items):
        raise ToolsError(f"{d / _DOC}: `items` should be a non-empty list of item ids")
    if len(set(items)) != len(items):
        raise ToolsError(f"{d / _DOC}: `items` lists an item id more than once")
    digest = doc.get("training_digest")
    if not isinstance(digest, str) or not digest:
        raise ToolsError(f"{d / _DOC}: no `training_digest` (which data it was trained on)")
    if not isinstance(raw, dict) or set(raw) - known:
        raise ToolsError(f"{d / _DOC}: `sasrec` should be a SASRecConfig's fields")
    try:
        cfg = SASRecConfig(**raw)
        model = SASRec(len(items), cfg)
        model.load_state_dict(state)
        model.best_epoch = int(doc.get("best_epoch", 0))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ToolsError(f"the teacher in {d} does not fit its configuration: {e}") from e
    return Teacher(model, items, digest)
