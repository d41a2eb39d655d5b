"""The examples a user's adapter trains on: (context [+ current session]) -> next item.

The adapter's job is to bring the long-term profile to requests that carry
only the current session (the private regime). Each example has a weight from
the profile's time decay (against the training's clock, never another event)
and mode weights (the stated mode one-hot, or the detector's distribution).

Privacy unit: the event. Two ways to cut prompts, with what one event can
change (:attr:`ExampleConfig.group`, charged by the ledger):

- ``prompt="event"`` (default): the prompt is the event's own context only,
  so each event is in exactly one example (its own, as the target): adding or
  removing an event adds or removes one example. ``group = 1``.
- ``prompt="session"``: the prompt is the current session before the target
  (the events of the last ``session_hours``, at most ``session_items``), and
  mode detection looks at the last :data:`MODE_WINDOW` events of the service.
  One event is then the target of its example and inside up to
  ``max(session_items, MODE_WINDOW)`` later examples, each of which changes
  (a removal and an addition): ``group = 1 + 2 * max(session_items, MODE_WINDOW)``.

Measured under the same per-event epsilon (docs/edge.md), the event prompts
win: the session prompts' group makes the noise several times larger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
from torch import Tensor

from userlayer.edge.exceptions import TrainingError
from userlayer.edge.profile import MODES, ModeDetector, Profile
from userlayer.sdk.model.tokens import CTX, ContextVocab, item_tokens
from userlayer.sdk.schemas import Event
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = [
    "MODE_WINDOW",
    "PROMPTS",
    "ExampleConfig",
    "UserExamples",
    "encode_prompt",
    "mode_weights",
    "session_before",
    "user_examples",
]


PROMPTS = ("event", "session")
MODE_WINDOW = 5  # earlier events of the service that mode detection looks at


@dataclass(frozen=True)
class ExampleConfig:
    """How prompts are cut (see the module docstring); validated on creation."""

    session_hours: float = 3.0
    session_items: int = 5
    holdout: int = 0  # last events kept out (leave-one-out evaluation uses 2)
    prompt: str = "event"

    def __post_init__(self) -> None:
        if self.session_hours <= 0 or self.session_items < 0 or self.holdout < 0:
            raise TrainingError("`session_hours` should be > 0, `session_items` and `holdout` >= 0")
        if self.prompt not in PROMPTS:
            raise TrainingError(f"`prompt` should be one of {PROMPTS}, got {self.prompt!r}")

    @property
    def group(self) -> int:
        """How many examples one event can change (add/remove counts one, a change two)."""
        if self.prompt == "event":
            return 1
        return 1 + 2 * max(self.session_items, MODE_WINDOW)


@dataclass
class UserExamples:
    """Left-padded example tensors of one user."""

    tokens: Tensor  # (N, T) prompt + target codes
    ctx: Tensor  # (N, T, 7)
    weights: Tensor  # (N,) time-decay weights in (0, 1]
    mode_weights: Tensor  # (N, n_modes)
    targets: list[str]
    group: int = 1  # examples one event can change (ExampleConfig.group)
    unit: str = "event"

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def encode_prompt(
    history: Sequence[Event],
    target_ctx: Event,
    table: SemanticIdTable,
    vocab: ContextVocab,
    target: str | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Tokens and context rows of ``[CTX codes]* CTX [target codes]`` (known items only)."""
    toks: list[int] = []
    ctx: list[list[int]] = []
    zero = [0] * len(vocab.sizes)
    for e in [*history, target_ctx]:
        toks.append(CTX)
        ctx.append(list(vocab.encode_context(e.service, e.context)))
        if e is target_ctx and target is None:
            break
        item = target if e is target_ctx and target else e.item_id
        codes = item_tokens(table.level_sizes, table.codes[item])
        toks.extend(codes)
        ctx.extend([zero] * len(codes))
    return toks, ctx


def session_before(events: Sequence[Event], i: int, cfg: ExampleConfig) -> list[Event]:
    """The current session before event ``i``: last ``session_hours``, at most ``session_items``."""
    horizon = events[i].timestamp - timedelta(hours=cfg.session_hours)
    begin = i
    while begin > 0 and events[begin - 1].timestamp >= horizon and i - begin < cfg.session_items:
        begin -= 1
    return list(events[begin:i])


def user_examples(
    profile: Profile,
    table: SemanticIdTable,
    vocab: ContextVocab,
    cfg: ExampleConfig | None = None,
    detector: ModeDetector | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
    allow_empty: bool = False,
) -> UserExamples:
    """One example per event of the profile (but the held-out ones).

    With session prompts the first event has no example (no session before it).

    Events of items missing from the Semantic ID table are skipped as targets
    and as history.

    ``allow_empty`` returns zero examples instead of raising (DP training then
    takes noise-only steps: whether a user gets an adapter must not depend on
    their events).

    Raises:
        TrainingError: if no example can be made (and not ``allow_empty``).
    """
    cfg = cfg or ExampleConfig()
    evs = [e for e in profile.events if e.item_id in table.codes]
    last = len(evs) - cfg.holdout
    rows_t, rows_c, weights, modes, targets = [], [], [], [], []
    session = cfg.prompt == "session"
    for i in range(1 if session else 0, last):
        e = evs[i]
        before = session_before(evs, i, cfg) if session else []
        toks, ctx = encode_prompt(before, e, table, vocab, e.item_id)
        rows_t.append(toks)
        rows_c.append(ctx)
        weights.append(profile.weight(e))
        modes.append(mode_weights(e, evs[:i] if session else [], detector, categories))
        targets.append(e.item_id)
    if not rows_t and allow_empty:
        return UserExamples(
            torch.zeros((0, 1), dtype=torch.long),
            torch.zeros((0, 1, len(vocab.sizes)), dtype=torch.long),
            torch.zeros(0),
            torch.zeros((0, len(MODES))),
            [],
            cfg.group,
        )
    if not rows_t:
        raise TrainingError(
            f"user {profile.user_id!r} has no training example ({len(evs)} usable events)"
        )
    t_len = max(len(t) for t in rows_t)
    tok = np.zeros((len(rows_t), t_len), dtype=np.int64)
    ctx_a = np.zeros((len(rows_t), t_len, len(vocab.sizes)), dtype=np.int64)
    for r, (t, c) in enumerate(zip(rows_t, rows_c, strict=True)):
        tok[r, t_len - len(t) :] = t
        ctx_a[r, t_len - len(t) :] = c
    return UserExamples(
        torch.from_numpy(tok),
        torch.from_numpy(ctx_a),
        torch.tensor(weights, dtype=torch.float32),
        torch.tensor(modes, dtype=torch.float32),
        targets,
        cfg.group,
    )


def mode_weights(
    e: Event,
    upto: Sequence[Event],
    detector: ModeDetector | None,
    categories: Mapping[str, Sequence[str]] | None,
) -> list[float]:
    """Mode-component weights for a prompt: the stated mode one-hot, else detected."""
    if e.context.mode in MODES:
        return [float(e.context.mode is m) for m in MODES]
    if detector is None or categories is None:
        return [0.0] * len(MODES)
    recent = [x for x in upto[-MODE_WINDOW:] if x.service is e.service]
    feats = detector.features(
        e.service,
        e.timestamp,
        e.context.weather.value,
        (categories.get(x.item_id, ()) for x in recent),
    )
    p = detector.predict_proba(feats)
    return [p[m] for m in MODES]
