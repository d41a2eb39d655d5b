"""Typed configs of the base model and of the user layer (the adapter)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from userlayer.sdk.exceptions import UserLayerError
from userlayer.sdk.schemas import Service

__all__ = ["LORA_TARGETS", "AdapterConfig", "ModelConfig", "ModelError"]

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
N_SERVICES = len(Service)


class ModelError(UserLayerError, ValueError):
    """A model or adapter config, tensor or checkpoint is invalid."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the decoder-only base model.

    ``level_sizes`` is the Semantic ID vocabulary (codes per level); the
    context vocabularies are fixed by :mod:`userlayer.sdk.model.tokens`.
    """

    level_sizes: tuple[int, ...]
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 352
    max_items: int = 21  # history items + the one being generated
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    dropout: float = 0.1
    attn_bias: bool = False  # Qwen2 has q/k/v biases
    geo_buckets: int = 64
    # the profile encoder (userlayer.sdk.model.encoder); profile_dim 0: none
    profile_dim: int = 0
    profile_half_lives: tuple[float, ...] = (0.0, 30.0)  # days; 0: no decay
    profile_prefix: int = 2  # prefix vectors it outputs (the adapter's n_prefix)
    profile_hidden: int = 256
    profile_histogram: bool = True  # release a histogram of the top-level codes too
    # domain experts: one expert FFN per service beside the shared FFN, each position routed
    # by its step's service (fixed routing: no router to learn); 0: a dense FFN only
    n_experts: int = 0
    expert_ff: int = 0  # width of each expert's FFN (0: d_ff)
    # a dense item head (generative retrieval + dense scoring, as LIGER): every catalog item
    # scored from the hidden state where an item's first code is predicted; 0: none
    n_items: int = 0
    item_loss: float = 1.0  # weight of the items' cross-entropy beside the codes'
    item_free: bool = True  # a free vector per item (False: its codes' embeddings only)
    # a free input vector per item (needs the head's catalog), added where a history item's
    # last code is read; during training each is dropped with probability item_input_drop
    item_input: bool = False
    item_input_drop: float = 0.5
    item_input_dim: int = 0  # width of each item's vector, mapped up to d_model (0: d_model)
    # the input vector is the head's free vector (one embedding read at input and scored at
    # output, as SASRec's item embedding): needs item_free and item_input, item_input_dim 0
    item_tied: bool = False
    # width of a fixed feature vector per item (needs the head's catalog; 0: none), e.g.
    # the embedding its Semantic ID was built from: one learned map adds it where a history
    # item's last code is read, another to the head's output vector of the item
    item_features: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_sizes", tuple(int(s) for s in self.level_sizes))
        object.__setattr__(
            self, "profile_half_lives", tuple(float(h) for h in self.profile_half_lives)
        )
        if self.profile_dim < 0:
            raise ModelError(f"`profile_dim` should be >= 0, got {self.profile_dim}")
        if self.profile_dim and (
            not self.profile_half_lives
            or any(not (h >= 0 and h < float("inf")) for h in self.profile_half_lives)
            or self.profile_prefix < 1
            or self.profile_hidden < 1
        ):
            raise ModelError(
                "a profile encoder needs finite `profile_half_lives` >= 0 (at least one) and "
                f"positive `profile_prefix` and `profile_hidden`, got "
                f"{list(self.profile_half_lives)}, {self.profile_prefix}, {self.profile_hidden}"
            )
        if not self.level_sizes or any(s < 1 for s in self.level_sizes):
            raise ModelError(f"`level_sizes` should be positive, got {list(self.level_sizes)}")
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_items"):
            if getattr(self, name) < 1:
                raise ModelError(f"`{name}` should be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ModelError(
                f"`d_model` ({self.d_model}) should be divisible by `n_heads` ({self.n_heads})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ModelError(
                f"`n_heads` ({self.n_heads}) should be a multiple of `n_kv_heads` "
                f"({self.n_kv_heads})"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ModelError(f"head size {self.d_model // self.n_heads} should be even for RoPE")
        if self.n_experts not in (0, N_SERVICES) or self.expert_ff < 0:
            raise ModelError(
                f"`n_experts` should be 0 (dense) or {N_SERVICES} (one per service) and "
                f"`expert_ff` >= 0, got {self.n_experts}, {self.expert_ff}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"`dropout` should be in [0, 1), got {self.dropout}")
        if self.n_items < 0 or not 0.0 <= self.item_loss < float("inf"):
            raise ModelError(
                f"`n_items` should be >= 0 and `item_loss` finite and >= 0, "
                f"got {self.n_items}, {self.item_loss}"
            )
        if self.item_input and not self.n_items:
            raise ModelError("`item_input` needs the dense item head's catalog (`n_items` > 0)")
        if not 0.0 <= self.item_input_drop < 1.0:
            raise ModelError(f"`item_input_drop` should be in [0, 1), got {self.item_input_drop}")
        if self.item_features < 0 or (self.item_features and not self.n_items):
            raise ModelError(
                f"`item_features` should be >= 0, and set only with the dense item head's "
                f"catalog (`n_items` > 0), got {self.item_features}"
            )
        if self.item_tied and not (self.item_free and self.item_input and not self.item_input_dim):
            raise ModelError(
                "`item_tied` reads the head's free vectors as inputs: it needs `item_free` and "
                f"`item_input`, and `item_input_dim` 0, got {self.item_free}, "
                f"{self.item_input}, {self.item_input_dim}"
            )
        if self.item_input_dim < 0 or (self.item_input_dim and not self.item_input):
            raise ModelError(
                f"`item_input_dim` should be >= 0, and set only with `item_input`, "
                f"got {self.item_input_dim}"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.n_heads

    @property
    def n_levels(self) -> int:
        """Tokens per item."""
        return len(self.level_sizes)

    @property
    def n_codes(self) -> int:
        """Size of the item-code output vocabulary (all levels)."""
        return sum(self.level_sizes)

    @property
    def max_len(self) -> int:
        """Longest token sequence: one context position plus the item's codes, per item."""
        return self.max_items * (1 + self.n_levels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["level_sizes"] = list(self.level_sizes)
        d["profile_half_lives"] = list(self.profile_half_lives)
        # fields added later are left out at their old meaning, so the fingerprints
        # (which hash this dict) of models saved before them stay valid
        if not self.profile_dim:
            for k in [k for k in d if k.startswith("profile_")]:
                del d[k]
        elif not self.profile_histogram:
            del d["profile_histogram"]
        if not self.n_experts:
            del d["n_experts"], d["expert_ff"]
        if not self.n_items:
            del d["n_items"], d["item_loss"], d["item_free"]
        elif self.item_free:
            del d["item_free"]
        if not self.item_input:
            del d["item_input"], d["item_input_drop"]
        if not self.item_input_dim:
            del d["item_input_dim"]
        if not self.item_tied:
            del d["item_tied"]
        if not self.item_features:
            del d["item_features"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output.

        Raises:
            ModelError: on unknown or invalid fields.
        """
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelError(f"unknown model config field(s) {sorted(unknown)}")
        if d.get("profile_dim") and "profile_histogram" not in d:
            d = {**d, "profile_histogram": False}  # encoders saved before the histogram
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelError(f"invalid model config: {e}") from e


@dataclass(frozen=True)
class AdapterConfig:
    """Shape of the user layer that every row of a batch may carry.

    Attributes:
        rank: LoRA rank ``r``.
        alpha: LoRA scaling numerator (the delta is scaled by ``alpha / rank``).
        targets: which projections get LoRA deltas (of :data:`LORA_TARGETS`).
        n_prefix: user prefix vectors prepended to the sequence (profile embedding).
        film: FiLM scale and shift on every norm (conditional normalization).
        n_modes: mode components (hungry, shopping, health).
        n_mode_prefix: prefix vectors per mode component.
    """

    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q", "v", "up", "down")
    n_prefix: int = 2
    film: bool = True
    n_modes: int = 3
    n_mode_prefix: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise ModelError(f"`rank` should be positive, got {self.rank}")
        if self.alpha <= 0:
            raise ModelError(f"`alpha` should be positive, got {self.alpha}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or len(set(self.targets)) != len(self.targets):
            raise ModelError(
                f"`targets` should be distinct names of {LORA_TARGETS}, got {list(self.targets)}"
            )
        if self.n_prefix < 0 or self.n_modes < 0 or self.n_mode_prefix < 0:
            raise ModelError("`n_prefix`, `n_modes` and `n_mode_prefix` should be >= 0")

    @property
    def scale(self) -> float:
        """LoRA scaling ``alpha / rank``."""
        return self.alpha / self.rank

    @property
    def n_prefix_total(self) -> int:
        """Prefix positions per row: user prefix plus the mode component's."""
        return self.n_prefix + (self.n_mode_prefix if self.n_modes else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "n_prefix": self.n_prefix,
            "film": self.film,
            "n_modes": self.n_modes,
            "n_mode_prefix": self.n_mode_prefix,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterConfig:
        """Build from :meth:`to_dict` output.

        Raises:
            ModelError: on unknown or invalid fields.
        """
        unknown = set(d) - {
            "rank",
            "alpha",
            "targets",
            "n_prefix",
            "film",
            "n_modes",
            "n_mode_prefix",
        }
        if unknown:
            raise ModelError(f"unknown adapter config field(s) {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelError(f"invalid adapter config: {e}") from e
