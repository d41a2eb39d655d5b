"""The multi-adapter engine: one base model, every row of a batch with its own user's adapter.

Adapters live in a fixed *slab* of engine slots (one array per adapter
tensor, shape (slots, *shape)), like S-LoRA's unified adapter memory: loading
an adapter copies it into a slot (the least recently used one is reused), a
batch gathers its rows' slots, and a row with slot -1 runs the base model
alone. :meth:`Engine.recommend` encodes the requests' prompts, gathers the
adapters and runs constrained beam search on the configured backend, or, for
a base with a dense item head, ranks by the head
(:mod:`userlayer.sdk.model.dense_search`: every item, or the beam reranked).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from userlayer.cloud.engine.backends import (
    Backend,
    EngineError,
    OnnxBackend,
    TorchBackend,
    tensorrt_available,
)
from userlayer.sdk.critique import load_catalog
from userlayer.sdk.exceptions import TextEncoderError
from userlayer.sdk.model import AdapterConfig, adapter_shapes
from userlayer.sdk.model.config import ModelConfig, ModelError
from userlayer.sdk.model.decoding import Recommendation, beam_search
from userlayer.sdk.model.dense_search import MERGED, RANKINGS, dense_search, head_order
from userlayer.sdk.model.io import fingerprint, load_model, preferred_ranking
from userlayer.sdk.model.prompt import encode_request, mode_one_hot, pack_prompts
from userlayer.sdk.model.steer import SteerEncoder, load_steer
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.model.trie_search import TensorTrie, trie_beam_search
from userlayer.sdk.navec import NAVEC_SHA256
from userlayer.sdk.schemas import Context, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["BACKENDS", "Engine", "EngineConfig", "EngineRequest", "Slab"]

BACKENDS = ("onnxruntime", "torch", "tensorrt")
SEARCHES = ("tensor", "reference")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Which backend, how wide the beam, how many adapter slots."""

    backend: str = "onnxruntime"
    onnx_dir: str | None = None  # default: <model_dir>/onnx
    beam: int = 20
    slots: int = 256
    threads: int | None = None
    device: str = "cpu"  # the torch backend: cpu | cuda
    # ONNX Runtime execution providers, best first (default: CPU); for example
    # ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    providers: tuple[str, ...] = ()
    max_session_items: int = 20
    # constrained decoding: "tensor" (the trie as tensors, userlayer.sdk.model.trie_search)
    # or "reference" (userlayer.sdk.model.decoding.beam_search); both return the same
    search: str = "tensor"
    # how items are ranked: "beam" (constrained beam search), "dense" (every item by the
    # base's dense item head), "beam+dense" (the beam's candidates reranked by the head),
    # "fused" (the beam's list and the head's merged by reciprocal-rank fusion);
    # "auto": for a base with a head, the one its pretraining validated best (else dense);
    # else "beam"
    ranking: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise EngineError(f"`backend` should be one of {BACKENDS}, got {self.backend!r}")
        if self.ranking not in ("auto", *RANKINGS):
            raise EngineError(
                f"`ranking` should be one of {('auto', *RANKINGS)}, got {self.ranking!r}"
            )
        if self.search not in SEARCHES:
            raise EngineError(f"`search` should be one of {SEARCHES}, got {self.search!r}")
        for name in ("beam", "slots", "max_session_items"):
            if getattr(self, name) < 1:
                raise EngineError(f"`{name}` should be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EngineRequest:
    """One row of a batch: the request and the slot of its user's adapter (-1: none)."""

    service: Service
    context: Context = field(default_factory=Context)
    session: tuple[str, ...] = ()
    k: int = 10
    exclude: tuple[str, ...] = ()
    slot: int = -1
    favourites: tuple[str, ...] = ()  # the user layer's released favourites (prompt steps)
    # a critique's hard constraints and soft steer (userlayer.sdk.critique.Verdict), over
    # the engine's catalog order (``Engine.catalog.items``, the tensor trie's)
    allowed: np.ndarray | None = None
    bonus: np.ndarray | None = None
    # the critique's text, for the learned steer (Engine.steer); None or blank: no steer
    critique: str | None = None


class Slab:
    """Fixed engine slots for adapters, reused least-recently-used first (thread-safe)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], slots: int) -> None:
        self.shapes = dict(shapes)
        self.size = slots
        self.arrays = {n: np.zeros((slots, *s), dtype=np.float32) for n, s in shapes.items()}
        self._keys: OrderedDict[Hashable, int] = OrderedDict()  # key -> slot, LRU first
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    def lookup(self, key: Hashable) -> int:
        """The slot holding ``key`` (marks it recently used), or -1."""
        with self._lock:
            slot = self._keys.get(key, -1)
            if slot >= 0:
                self._keys.move_to_end(key)
            return slot

    def load(self, key: Hashable, tensors: Mapping[str, np.ndarray]) -> int:
        """Copy an adapter into a slot (reusing the LRU one when full); returns the slot.

        Raises:
            EngineError: if a tensor is missing or has the wrong shape.
        """
        for n, s in self.shapes.items():
            t = tensors.get(n)
            if t is None or tuple(t.shape) != s:
                got = None if t is None else tuple(t.shape)
                raise EngineError(f"adapter tensor {n!r} has shape {got}, expected {s}")
        with self._lock:
            slot = self._keys.pop(key, -1)
            if slot < 0:
                slot = self._free.pop() if self._free else self._keys.popitem(last=False)[1]
            for n in self.shapes:
                self.arrays[n][slot] = tensors[n]
            self._keys[key] = slot
            return slot

    def evict(self, match: object) -> int:
        """Free every slot whose key equals ``match`` or is a tuple starting with it."""
        with self._lock:
            gone = [
                k
                for k in self._keys
                if k == match or (isinstance(k, tuple) and k[: _len(match)] == match)
            ]
            for k in gone:
                slot = self._keys.pop(k)
                self._free.append(slot)
            return len(gone)

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``active`` (B,) and every tensor (B, ...) of these slots.

        Slot -1 marks a row without adapter: ``active`` is false and its
        tensors are zeros, which the model applies as exact no-ops.
        """
        active = slots >= 0
        idx = np.where(active, slots, 0)
        out = {n: a[idx] for n, a in self.arrays.items()}  # fancy indexing: copies
        if not active.all():
            for t in out.values():
                t[~active] = 0.0  # the model applies zeros as no-ops (RowAdapters)
        return active, out

    def __len__(self) -> int:
        return len(self._keys)


def _load_steer(
    d: Path, base: str, d_model: int, backend: Backend
) -> tuple[SteerEncoder | None, str | None]:
    """The critique steer beside the model, ready to encode texts; else None and why.

    A steer of another base (the base retrained in place), of another text
    encoder, or one that does not load is switched off with the reason, which
    requests with a critique get in their flags; serving goes on.
    """
    try:
        got = load_steer(d, base, d_model)
    except ModelError as e:  # a stale or broken steer: serve without it, and say why
        logger.warning("the learned critique steer is off: %s", e)
        return None, f"learned steer unavailable: {e}"
    if got is None:  # none trained: nothing to report
        return None, None
    if got[1].get("encoder_sha256") != NAVEC_SHA256:
        return None, "learned steer unavailable: trained with another text encoder"
    if isinstance(backend, OnnxBackend) and backend.steer != got[0].cfg.n_vectors:
        return None, "the ONNX export predates the learned steer: export it again"
    try:
        return SteerEncoder(got[0]), None
    except (TextEncoderError, ModelError) as e:  # navec is optional: userlayer[critique-text]
        logger.warning("the learned critique steer is off: %s", e)
        return None, f"learned steer unavailable: {e}"


def _ranking(
    ranking: str,
    model: Recommender,
    trie: TensorTrie,
    backend: Backend,
    preferred: str | None = None,
) -> tuple[str, Tensor | None, str | None]:
    """The ranking to serve, the head's order of the trie's items (or None), and a note.

    ``auto`` ranks as ``preferred`` (what pretraining validated best for a
    base with a dense head; ``dense`` where it recorded none), or by the beam
    for a base without a head. Where the head cannot serve (trained on
    another table, an ONNX export without its scores) ``auto`` serves the
    beam and the note says why.

    Raises:
        EngineError: ``dense``, ``beam+dense`` or ``fused`` asked for a base without a
            usable head.
    """
    asked = ranking
    if ranking == "auto":
        if not model.cfg.n_items:
            return "beam", None, None
        ranking = preferred if preferred in RANKINGS else "dense"
    if ranking == "beam":
        return ranking, None, None
    try:
        order = head_order(model, trie)
        if isinstance(backend, OnnxBackend) and backend.items != model.cfg.n_items:
            raise ModelError("the ONNX export has no dense item scores: export it again")
    except ModelError as e:
        if asked == "auto":
            logger.warning("ranking by the beam, not the dense item head: %s", e)
            return "beam", None, f"the dense item head is not used: {e}"
        raise EngineError(f"ranking {ranking!r}: {e}") from e
    return ranking, order, None


def _len(x: object) -> int:
    return len(x) if isinstance(x, tuple) else 1


class Engine:
    """The base model on one backend, serving batches of rows with per-row adapters."""

    def __init__(
        self,
        model_dir: str | Path,
        cfg: EngineConfig | None = None,
        adapter: AdapterConfig | None = None,
    ) -> None:
        self.cfg = cfg = cfg or EngineConfig()
        d = Path(model_dir)
        model = load_model(d)
        self.fingerprint = fingerprint(model)
        self.model_cfg: ModelConfig = model.cfg
        self.table = SemanticIdTable.load(d / "sids.json")
        self.trie = self.table.trie()
        self.tensor_trie = TensorTrie(self.table)
        self.catalog = load_catalog(d, self.tensor_trie.items)
        # items in a prompt (favourites and session): never past the model's trained window
        self.max_items = min(cfg.max_session_items, model.cfg.max_items - 1)
        self.vocab = model.ctx_vocab
        backend: Backend
        if cfg.backend == "onnxruntime":
            ob = OnnxBackend(
                cfg.onnx_dir or d / "onnx",
                self.fingerprint,
                cfg.threads,
                list(cfg.providers) or None,
            )
            if adapter is not None and adapter != ob.acfg:
                raise EngineError(
                    f"the export was made for adapter {ob.acfg.to_dict()}, not {adapter.to_dict()}"
                )
            adapter, backend = ob.acfg, ob
        elif cfg.backend == "torch":
            adapter = adapter or AdapterConfig()
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            backend = TorchBackend(model, adapter, cfg.device)
        else:
            why = tensorrt_available()
            if why:
                raise EngineError(f"backend tensorrt: {why}")
            raise EngineError("backend tensorrt: engine building is not implemented yet")
        self.acfg = adapter
        self.backend = backend
        self.ranking, self.head_order, self.ranking_reason = _ranking(
            cfg.ranking, model, self.tensor_trie, backend, preferred_ranking(d)
        )
        self.steer, self.steer_reason = _load_steer(d, self.fingerprint, model.cfg.d_model, backend)
        self.shapes = adapter_shapes(self.model_cfg, adapter)
        self.slab = Slab(self.shapes, cfg.slots)
        torch.set_flush_denormal(True)

    def recommend(self, reqs: Sequence[EngineRequest]) -> list[list[Recommendation]]:
        """Top-k items for each request, in one batched forward and beam search.

        Raises:
            EngineError: an empty batch, or a slot out of range.
        """
        if not reqs:
            raise EngineError("an empty batch")
        bad = [r.slot for r in reqs if not -1 <= r.slot < self.slab.size]
        if bad:
            raise EngineError(f"slots {bad} out of range [-1, {self.slab.size})")
        prompts = [
            encode_request(
                r.service,
                r.context,
                r.session,
                self.table,
                self.vocab,
                self.max_items,
                r.favourites if r.slot >= 0 else (),
            )
            for r in reqs
        ]
        tok, ctx = pack_prompts([(p.tokens, p.ctx) for p in prompts], len(self.vocab.sizes))
        active, tensors = self.slab.gather(np.array([r.slot for r in reqs], dtype=np.int64))
        n_modes = self.acfg.n_modes
        mw = np.array(
            [
                mode_one_hot(r.context.mode, n_modes) if r.slot >= 0 else [0.0] * n_modes
                for r in reqs
            ],
            dtype=np.float32,
        ).reshape(len(reqs), n_modes)
        k = max(r.k for r in reqs)
        texts = [r.critique or "" for r in reqs]
        steer = (
            self.steer(texts) if self.steer is not None and any(t.strip() for t in texts) else None
        )
        # the beam never reads the head's item scores: a backend need not make them
        dec = self.backend.decoder(active, tensors, mw, steer, items=self.head_order is not None)
        services = [r.service for r in reqs]
        exclude = [r.exclude for r in reqs]
        beam = max(self.cfg.beam, k)
        n_items = len(self.tensor_trie.items)
        allowed = bonus = None
        if any(r.allowed is not None for r in reqs):
            allowed = torch.from_numpy(
                np.stack([np.ones(n_items, bool) if r.allowed is None else r.allowed for r in reqs])
            )
        if any(r.bonus is not None for r in reqs):
            bonus = torch.from_numpy(
                np.stack([np.zeros(n_items) if r.bonus is None else r.bonus for r in reqs]).astype(
                    np.float32
                )
            )
        if self.head_order is not None:
            rerank = beam if self.ranking in MERGED else 0
            out = dense_search(
                dec,
                self.tensor_trie,
                self.head_order,
                tok,
                ctx,
                k,
                rerank,
                services,
                exclude,
                None,
                allowed,
                bonus,
                fuse=self.ranking == "fused",
            )
        elif self.cfg.search == "tensor":
            out = trie_beam_search(
                dec, self.tensor_trie, tok, ctx, k, beam, services, exclude, None, allowed, bonus
            )
        else:  # the reference search: constraints as exclusions, no soft steer
            if allowed is not None:
                items = self.tensor_trie.items
                exclude = [
                    (*e, *(items[i] for i in np.flatnonzero(~a.numpy())))
                    for e, a in zip(exclude, allowed, strict=True)
                ]
            out = beam_search(dec, self.trie, tok, ctx, k, beam, services, exclude)
        return [o[: r.k] for o, r in zip(out, reqs, strict=True)]
