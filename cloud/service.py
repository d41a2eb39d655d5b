"""Serving: the registry's adapters in the engine's slots, one batch at a time.

For each row of a batch the user's newest adapter comes from the registry
(the RAM tier, else the store: decrypted and verified) and goes into an
engine slot unless it is there already. Slots are keyed by (service, user,
package SHA-256), so a user deleted and back with a new adapter under a
reused version number never hits the old slot. A row is served by the base
model, and says so, when the user has no adapter, when theirs does not
verify, or when the store is unreachable; never with another user's adapter
(a lock keeps deletions from freeing a slot that a running batch still
reads, and a batch never holds more distinct users than the engine has
slots).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from userlayer.cloud.engine.engine import Engine, EngineRequest
from userlayer.cloud.metrics import Metrics
from userlayer.cloud.registry import (
    AdapterRegistry,
    LoadedAdapter,
    RegistryError,
    StoreUnavailableError,
)
from userlayer.sdk.api import (
    CritiqueResult,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
)
from userlayer.sdk.critique import Verdict, parse_critique

logger = logging.getLogger(__name__)

__all__ = ["Metrics", "Serving"]

NO_ADAPTER = "no adapter"
UNVERIFIED = "adapter failed verification"
UNAVAILABLE = "adapter store unavailable"
LEARNED_STEER = "learned steer"  # CritiqueResult.steer: the text read by the trained steer


@dataclass(frozen=True)
class _Row:
    slot: int
    version: int | None
    reason: str | None
    favourites: tuple[str, ...] = ()


class Serving:
    """Resolves adapters and runs batches on the engine."""

    def __init__(
        self,
        engine: Engine,
        registry: AdapterRegistry,
        metrics: Metrics,
        store_deadline_s: float = 0.5,
    ) -> None:
        if engine.slab.size < 1:
            raise RegistryError("the engine needs adapter slots")
        if registry.fingerprint != engine.fingerprint:
            raise RegistryError(
                f"registry expects base {registry.fingerprint}, engine runs {engine.fingerprint}"
            )
        if not store_deadline_s > 0:
            raise RegistryError(f"`store_deadline_s` should be positive, got {store_deadline_s}")
        self.engine = engine
        self.registry = registry
        self.metrics = metrics
        self.store_deadline_s = store_deadline_s
        self._io = ThreadPoolExecutor(4, thread_name_prefix="userlayer-registry")
        self._lock = threading.Lock()
        self._deletions: dict[tuple[str, str], int] = {}  # deletions seen, per user
        registry.on_delete(self.evict)

    def evict(self, service: str, user_id: str) -> None:
        """Drop the user's engine slot and cached adapter (after a deletion).

        Waits for a running batch that may read the slot. Where the deletion
        ran in this process's registry its cache is clear already; where it
        ran in another (an API worker), this clears this process's copy.
        """
        self.registry.forget_cached(service, user_id)
        with self._lock:
            self.engine.slab.evict((service, user_id))
            self._deletions[(service, user_id)] = self._deletions.get((service, user_id), 0) + 1

    def _fetch(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], LoadedAdapter | str]:
        """Each user's newest adapter (or why none), within the store deadline.

        The registry is read in a worker thread: a store that hangs (a dropped
        network, a frozen database) costs a batch at most ``store_deadline_s``,
        the timeout counts against the store's circuit breaker, and once the
        breaker is open no batch waits at all.
        """
        if self.registry.sql.breaker_open:
            return dict.fromkeys(keys, UNAVAILABLE)

        def read() -> dict[tuple[str, str], LoadedAdapter | str]:
            out: dict[tuple[str, str], LoadedAdapter | str] = {}
            for key in keys:
                try:
                    loaded = self.registry.get(*key)
                except StoreUnavailableError:
                    out[key] = UNAVAILABLE
                except RegistryError:
                    out[key] = UNVERIFIED
                else:
                    out[key] = NO_ADAPTER if loaded is None else loaded
            return out

        future = self._io.submit(read)
        try:
            return future.result(timeout=self.store_deadline_s)
        except FutureTimeout:
            self.registry.sql.note_timeout()
            return dict.fromkeys(keys, UNAVAILABLE)

    def _slot(self, key: tuple[str, str], got: LoadedAdapter | str) -> _Row:
        if isinstance(got, str):
            return _Row(-1, None, got)
        skey = (*key, got.info.sha256)
        slot = self.engine.slab.lookup(skey)
        if slot < 0:
            slot = self.engine.slab.load(skey, got.tensors)
            self.metrics.slot_loads.inc()
        return _Row(slot, got.info.version, None, got.favourites)

    def _critique(self, r: RecommendRequest) -> tuple[CritiqueResult, Verdict] | None:
        """A request's critique, understood and turned into masks (None: it has none).

        A critique that cannot be applied for a reason of ours (a defect) answers
        this row with no item and a flag, never items that might break it, and
        never fails the other rows of the batch.
        """
        if r.critique is None or not r.critique.strip():
            return None
        try:
            c = parse_critique(r.critique)
            catalog = self.engine.catalog
            if catalog is None:
                flags = list(c.flags)
                if c.understood:
                    flags.append("the model has no catalog attributes (catalog.json): ignored")
                v = Verdict(None, (), tuple(flags))
            else:
                v = catalog.apply(c, r.session)
            steer = list(c.steer) if v.steer is not None else []
            if steer and self.engine.cfg.search != "tensor":
                v = Verdict(v.allowed, v.applied, (*v.flags, "soft steer: not applied by the "
                            "reference search"), None)  # fmt: skip
                steer = []
        except Exception:  # a defect of ours: this row only, and safely
            logger.exception("a critique could not be applied")
            n = len(self.engine.tensor_trie.items)
            v = Verdict(np.zeros(n, dtype=bool), (), ("critique could not be applied: no item",))
            c_lang = "unknown"
            steer = []
        else:
            c_lang = c.language
            # the learned steer reads the text itself, but only a critique the parser
            # understood: it was trained on those kinds, and free text moves it anywhere
            if c_lang in ("ru", "en") and c.understood:
                if self.engine.steer is not None:
                    steer.append(LEARNED_STEER)
                elif self.engine.steer_reason:
                    v = Verdict(v.allowed, v.applied, (*v.flags, self.engine.steer_reason), v.steer)
        outcome = "applied" if v.applied or v.steer is not None or steer else "ignored"
        self.metrics.critiques.labels(outcome).inc()
        result = CritiqueResult(
            language=c_lang, applied=list(v.applied), steer=steer, flags=list(v.flags)
        )
        return result, v

    def run_batch(self, reqs: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        """Recommend for a batch of requests (one engine call)."""
        t0 = time.perf_counter()
        keys = list(dict.fromkeys((r.service.value, r.user_id) for r in reqs))
        if len(keys) > self.engine.slab.size:  # else a later row's load could evict an earlier's
            raise RegistryError(
                f"a batch of {len(keys)} distinct users needs as many adapter slots; the engine "
                f"has {self.engine.slab.size} (raise slots or lower max_batch)"
            )
        seen = {key: self._deletions.get(key, 0) for key in keys}
        fetched = self._fetch(keys)  # one resolution per user per batch
        with self._lock:
            for key in keys:  # deleted through this replica while being fetched: not served
                if self._deletions.get(key, 0) != seen[key]:
                    fetched[key] = NO_ADAPTER
            rows = {key: self._slot(key, fetched[key]) for key in keys}
            verdicts = [self._critique(r) for r in reqs]
            ers = [
                EngineRequest(
                    service=r.service,
                    context=r.context,
                    session=tuple(r.session),
                    k=r.k,
                    exclude=tuple(r.exclude),
                    slot=rows[(r.service.value, r.user_id)].slot,
                    favourites=rows[(r.service.value, r.user_id)].favourites,
                    allowed=None if v is None else v[1].allowed,
                    bonus=None if v is None else v[1].steer,
                    critique=r.critique if v is not None and LEARNED_STEER in v[0].steer else None,
                )
                for r, v in zip(reqs, verdicts, strict=True)
            ]
            results = self.engine.recommend(ers)
        ms = (time.perf_counter() - t0) * 1000
        out = []
        known = self.engine.table.codes
        for r, items, v in zip(reqs, results, verdicts, strict=True):
            row = rows[(r.service.value, r.user_id)]
            if row.reason:
                self.metrics.fallbacks.labels(row.reason).inc()
            out.append(
                RecommendResponse(
                    user_id=r.user_id,
                    service=r.service,
                    items=[RecommendedItem(item_id=x.item_id, score=x.score) for x in items],
                    personalized=row.reason is None,
                    reason=row.reason,
                    adapter_version=row.version,
                    model_fingerprint=self.engine.fingerprint,
                    backend=self.engine.backend.name,
                    latency_ms=round(ms, 2),
                    ignored_items=[i for i in r.session if i not in known],
                    critique=None if v is None else v[0],
                )
            )
        st = self.registry.stats
        self.metrics.cache.labels("entries").set(self.registry.cached())
        self.metrics.cache.labels("hits").set(st["hits"])
        self.metrics.cache.labels("misses").set(st["misses"])
        return out
