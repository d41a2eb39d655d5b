"""The learned critique steer: a critique's text as prefix vectors the frozen base attends to.

A critique ("полезнее", "без мяса", "another brand") is encoded by an
offline text encoder (navec's Russian word vectors, inside the ``natasha``
wheel: :mod:`userlayer.sdk.navec`; a word navec lacks, an English one among
them, gets a fixed vector from its text) into one vector; a small MLP turns
that vector into ``n_vectors`` prefix vectors of the base's width. The base
reads them as extra positions of its prefix stream
(:attr:`~userlayer.sdk.model.transformer.RowAdapters.steer`); a row with no
critique holds zeros there, and zeros switch those positions off, so it
equals the base.

The steer is trained with the base frozen (``userlayer train-steer``, on
critique episodes drawn from the training sequences): the base, its
fingerprint and every user's layer stay valid. It is saved beside the base
as ``steer.safetensors`` and ``steer.json``, bound to the base's fingerprint
and to the text encoder's pinned digest. Nothing is unpickled.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from userlayer.sdk.model.config import AdapterConfig, ModelError

__all__ = [
    "STEER_FORMAT",
    "STEER_ONLY",
    "CritiqueSteer",
    "SteerConfig",
    "SteerEncoder",
    "load_steer",
    "save_steer",
]

STEER_FORMAT = "userlayer.steer/1"
STEER_WEIGHTS = "steer.safetensors"
STEER_META = "steer.json"
# adapter rows that carry nothing but the steer (no LoRA, FiLM, prefix or modes)
STEER_ONLY = AdapterConfig(targets=(), n_prefix=0, film=False, n_modes=0)


@dataclass(frozen=True)
class SteerConfig:
    """The steer's shape; validated on creation."""

    d_model: int
    text_dim: int = 300
    n_vectors: int = 2
    hidden: int = 256
    encoder: str = "navec"  # the text encoder (its digest is recorded beside)

    def __post_init__(self) -> None:
        for name in ("d_model", "text_dim", "n_vectors", "hidden"):
            if getattr(self, name) < 1:
                raise ModelError(f"steer `{name}` should be positive, got {getattr(self, name)}")
        if self.encoder != "navec":
            raise ModelError(f"steer `encoder` should be 'navec', got {self.encoder!r}")


class CritiqueSteer(nn.Module):
    """Text vectors (B, text_dim) -> prefix vectors (B, n_vectors, d_model)."""

    def __init__(self, cfg: SteerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mlp = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, cfg.n_vectors * cfg.d_model),
        )
        out = self.mlp[2]
        assert isinstance(out, nn.Linear)
        nn.init.normal_(out.weight, std=0.02)
        nn.init.zeros_(out.bias)

    def forward(self, text: Tensor) -> Tensor:
        """The prefix vectors; a zero text vector (no critique) gives zeros."""
        b = text.shape[0]
        v: Tensor = self.mlp(text).view(b, self.cfg.n_vectors, self.cfg.d_model)
        on = (text.abs().sum(-1) > 0)[:, None, None]
        # a zero row must stay exactly zero (zeros switch the positions off in the base),
        # whatever the weights hold: where, not a product (0 * inf is NaN)
        return torch.where(on, v, torch.zeros_like(v))


def save_steer(
    steer: CritiqueSteer, directory: str | Path, base: str, extra: dict[str, Any]
) -> None:
    """Write the steer beside the base ``base`` (its fingerprint)."""
    d = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in steer.state_dict().items()}
    save_file(state, str(d / STEER_WEIGHTS))
    doc = {"format": STEER_FORMAT, "base": base, "steer": asdict(steer.cfg), **extra}
    (d / STEER_META).write_text(json.dumps(doc, indent=2), "utf-8")


MAX_WIDTH = 8192  # no steer field above this (a malformed file must not allocate gigabytes)


def load_steer(
    directory: str | Path, base: str, d_model: int | None = None
) -> tuple[CritiqueSteer, dict[str, Any]] | None:
    """The steer saved beside the base ``base`` (None: the directory has none).

    Raises:
        ModelError: a steer of another base, width or format, fields out of
            bounds, non-finite weights, or tensors that do not fit.
    """
    d = Path(directory)
    if not (d / STEER_META).exists():
        return None
    try:
        doc = json.loads((d / STEER_META).read_text("utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("steer"), dict):
            raise ModelError(f"{d / STEER_META} is not a steer description")
        if doc.get("format") != STEER_FORMAT:
            raise ModelError(f"{d / STEER_META} has format {doc.get('format')!r}")
        if doc.get("base") != base:
            raise ModelError(
                f"the steer in {d} was trained for base {doc.get('base')}, not {base}: "
                "train it again (`userlayer train-steer`)"
            )
        cfg = SteerConfig(**doc["steer"])
        if max(cfg.d_model, cfg.text_dim, cfg.hidden, cfg.n_vectors) > MAX_WIDTH:
            raise ModelError(f"steer fields above {MAX_WIDTH}: {doc['steer']}")
        if d_model is not None and cfg.d_model != d_model:
            raise ModelError(f"the steer's width {cfg.d_model} is not the base's {d_model}")
        steer = CritiqueSteer(cfg)
        state = load_file(str(d / STEER_WEIGHTS))
        if not all(bool(torch.isfinite(t).all()) for t in state.values()):
            raise ModelError(f"{d / STEER_WEIGHTS} holds non-finite weights")
        steer.load_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ModelError(f"cannot load the steer in {d}: {e}") from e
    return steer.eval(), doc


class SteerEncoder:
    """Critique texts -> prefix vectors: navec (loaded once), then the trained MLP.

    Nothing is kept between calls: a cache shared by requests would answer a
    text that someone sent recently faster than a new one, telling a caller
    what other tenants' users wrote. Within one call (one batch) each
    distinct text is encoded once.
    """

    def __init__(self, steer: CritiqueSteer, navec_path: Path | None = None) -> None:
        from userlayer.sdk.navec import Navec  # needs navec: userlayer[critique-text]

        self.steer = steer.eval()
        self.navec = Navec(navec_path)
        if self.navec.dim != steer.cfg.text_dim:
            raise ModelError(
                f"the text encoder gives {self.navec.dim} dimensions, the steer reads "
                f"{steer.cfg.text_dim}"
            )

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """(B, text_dim) float32; a blank text gives zeros."""
        return self.navec.encode(texts).vectors

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        """(B, n_vectors, d_model) float32 prefix vectors (each distinct text encoded once).

        Each text goes through the MLP alone, so its vectors do not depend on
        what else is in the batch (a batched product may round differently).
        """
        norm = [unicodedata.normalize("NFC", t).strip().lower() for t in texts]
        distinct = sorted(set(norm))
        vecs = torch.from_numpy(self.text_vectors(distinct))
        out = {t: self.steer(vecs[i : i + 1])[0].numpy() for i, t in enumerate(distinct)}
        return np.stack([out[t] for t in norm])
