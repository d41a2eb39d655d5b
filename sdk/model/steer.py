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

import hashlib
import hmac
import json
import os
import threading
import unicodedata
from collections import OrderedDict
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
        on = (text.abs().sum(-1) > 0).to(v.dtype)[:, None, None]
        # a zero row must stay exactly zero: zeros switch the positions off in the base
        return v * on


def save_steer(
    steer: CritiqueSteer, directory: str | Path, base: str, extra: dict[str, Any]
) -> None:
    """Write the steer beside the base ``base`` (its fingerprint)."""
    d = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in steer.state_dict().items()}
    save_file(state, str(d / STEER_WEIGHTS))
    doc = {"format": STEER_FORMAT, "base": base, "steer": asdict(steer.cfg), **extra}
    (d / STEER_META).write_text(json.dumps(doc, indent=2), "utf-8")


def load_steer(directory: str | Path, base: str) -> tuple[CritiqueSteer, dict[str, Any]] | None:
    """The steer saved beside the base ``base`` (None: the directory has none).

    Raises:
        ModelError: a steer of another base or format, or tensors that do not fit.
    """
    d = Path(directory)
    if not (d / STEER_META).exists():
        return None
    try:
        doc = json.loads((d / STEER_META).read_text("utf-8"))
        if doc.get("format") != STEER_FORMAT:
            raise ModelError(f"{d / STEER_META} has format {doc.get('format')!r}")
        if doc.get("base") != base:
            raise ModelError(
                f"the steer in {d} was trained for base {doc.get('base')}, not {base}: "
                "train it again (`userlayer train-steer`)"
            )
        steer = CritiqueSteer(SteerConfig(**doc["steer"]))
        steer.load_state_dict(load_file(str(d / STEER_WEIGHTS)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ModelError(f"cannot load the steer in {d}: {e}") from e
    return steer.eval(), doc


class SteerEncoder:
    """Critique texts -> prefix vectors: navec (loaded once), then the trained MLP."""

    CACHE = 4096  # distinct critique texts kept (critiques repeat: "подешевле", "без мяса")

    def __init__(self, steer: CritiqueSteer, navec_path: Path | None = None) -> None:
        from userlayer.sdk.navec import Navec  # needs navec: userlayer[critique-text]

        self.steer = steer.eval()
        # keyed by an HMAC of the text under a per-process random key: the text is not kept
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._key = os.urandom(32)
        self._lock = threading.Lock()
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
        """(B, n_vectors, d_model) float32 prefix vectors (each distinct text computed once)."""
        norm = [unicodedata.normalize("NFC", t).strip().lower() for t in texts]
        keys = [hmac.new(self._key, t.encode(), hashlib.sha256).digest() for t in norm]
        with self._lock:
            known = {k: self._cache[k] for k in set(keys) if k in self._cache}
            for k in known:
                self._cache.move_to_end(k)
        todo = {k: t for k, t in zip(keys, norm, strict=True) if k not in known}
        if todo:
            new = list(todo)
            v = torch.from_numpy(self.text_vectors([todo[k] for k in new]))
            out = self.steer(v).numpy()
            with self._lock:
                for k, row in zip(new, out, strict=True):
                    row.setflags(write=False)
                    known[k] = self._cache[k] = row
                while len(self._cache) > self.CACHE:
                    self._cache.popitem(last=False)
        return np.stack([known[k] for k in keys])
