"""``userlayer bench adapters``: the registry tiers a request goes through, timed.

- cold load: an adapter read from the registry store (SQLite index lookup,
  AES-GCM decrypt, signature and shape verification, unpack) and copied into
  an engine slot, with the RAM tier empty; beside it the warm path (RAM tier
  hit plus slot lookup);
- freshness: from the start of an upload of a new version (``put``: verify,
  encrypt, store) to the first served request that carries it (the serving
  path a request takes: registry lookup, slot, engine call);
- memory per cached adapter: the heap (tracemalloc, which sees numpy's
  buffers) held by ``cache`` adapters in the RAM tier, beside their tensor bytes;
- index lookups with ``lookup_users`` registered users (small adapters,
  registered through the real enroll + verify + encrypt path): the newest
  version's primary-key lookup and the metadata read, p50/p99.

Every user is a real enrolled signer with a signed package; nothing is
inserted behind the registry's back.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.registry import AdapterRegistry, RegistryConfig
from userlayer.cloud.service import Metrics, Serving
from userlayer.sdk.adapter import seal_package
from userlayer.sdk.api import RecommendRequest
from userlayer.sdk.model import AdapterConfig, ModelConfig, adapter_shapes, new_adapter
from userlayer.sdk.schemas import Service
from userlayer.tools.bench.report import BenchReport
from userlayer.tools.exceptions import ToolsError

__all__ = ["AdaptersBenchConfig", "bench_adapters", "random_adapter", "register_users"]

_SVC = "megamarket"


@dataclass(frozen=True)
class AdaptersBenchConfig:
    """Size of the run."""

    users: int = 2_000  # registered with the model's own adapter shape
    samples: int = 500  # cold loads and freshness probes timed
    cache: int = 1_000  # adapters held in RAM for the memory figure
    lookup_users: tuple[int, ...] = (100_000, 1_000_000)
    lookups: int = 2_000
    backend: str = "torch"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.users, self.samples, self.cache, self.lookups) < 1:
            raise ToolsError("`users`, `samples`, `cache` and `lookups` should be positive")
        if self.samples > self.users or self.cache > self.users:
            raise ToolsError("`samples` and `cache` cannot exceed `users`")


def register_users(
    reg: AdapterRegistry,
    n: int,
    tensors: dict[str, np.ndarray],
    fingerprint: str,
    acfg: AdapterConfig,
    version: int = 1,
    chunk: int = 1_000,
    start: int = 0,
) -> dict[str, Ed25519PrivateKey]:
    """Enroll ``n`` users with their own signing keys and store one signed package each."""
    keys: dict[str, Ed25519PrivateKey] = {}
    fields = {"base_fingerprint": fingerprint, "adapter_config": acfg.to_dict(), "service": _SVC}
    for s in range(start, start + n, chunk):
        ids = [f"u{i:07d}" for i in range(s, min(s + chunk, start + n))]
        ks = [Ed25519PrivateKey.generate() for _ in ids]
        reg.enroll_many([(_SVC, u, k.public_key()) for u, k in zip(ids, ks, strict=True)])
        out = reg.put_many(
            [
                (_SVC, u, seal_package({**fields, "user_id": u, "version": version}, tensors, k))
                for u, k in zip(ids, ks, strict=True)
            ]
        )
        bad = [o for o in out if isinstance(o, Exception)]
        if bad:
            raise ToolsError(f"registration refused: {bad[0]}")
        keys.update(zip(ids, ks, strict=True))
    return keys


def _pcts(xs: Sequence[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100) if len(xs) > 1 else [xs[0]] * 99
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "n": len(xs)}


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def random_adapter(
    shapes: Mapping[str, tuple[int, ...]], seed: int | Sequence[int], scale: float = 0.01
) -> dict[str, np.ndarray]:
    """A user layer of small random float32 tensors of ``shapes`` (a pure function of ``seed``)."""
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _serving_path(e: Engine, reg: AdapterRegistry, cfg: AdaptersBenchConfig) -> dict[str, Any]:
    rng = np.random.default_rng(cfg.seed)
    tensors = random_adapter(e.shapes, cfg.seed)
    t0 = time.perf_counter()
    keys = register_users(reg, cfg.users, tensors, e.fingerprint, e.acfg)
    reg_s = time.perf_counter() - t0
    ids = sorted(keys)
    sample = [ids[int(i)] for i in rng.choice(len(ids), size=cfg.samples, replace=False)]
    # cold: RAM tier empty (cache_size 0), a fresh slot per user
    cold_reg, cold_total = [], []
    for u in sample:
        t0 = time.perf_counter()
        got = reg.get(_SVC, u)
        t1 = time.perf_counter()
        assert got is not None
        e.slab.load((_SVC, u, got.info.version), got.tensors)
        cold_reg.append(t1 - t0)
        cold_total.append(time.perf_counter() - t0)
    # freshness: upload version 2, then the next request must be served with it
    serving = Serving(e, reg, Metrics())
    fields = {"base_fingerprint": e.fingerprint, "adapter_config": e.acfg.to_dict()}
    items = sorted(e.table.codes)
    fresh = []
    for i, u in enumerate(sample[: min(len(sample), 200)]):
        blob = seal_package(
            {**fields, "service": _SVC, "user_id": u, "version": 2},
            random_adapter(e.shapes, i + 1),
            keys[u],
        )
        req = RecommendRequest(user_id=u, service=Service(_SVC), session=[items[i % len(items)]])
        t0 = time.perf_counter()
        reg.put(_SVC, u, blob)
        resp = serving.run_batch([req])[0]
        fresh.append(time.perf_counter() - t0)
        if resp.adapter_version != 2 or not resp.personalized:
            raise ToolsError(f"user {u} was not served the new version: {resp}")
    return {
        "register_users_per_s": cfg.users / reg_s,
        "cold_registry": _pcts(cold_reg),
        "cold_to_slot": _pcts(cold_total),
        "upload_to_served": _pcts(fresh),
        "package_bytes": len(blob),
        "ids": ids,
    }


def _memory(url: Path, e: Engine, ids: Sequence[str], n: int) -> dict[str, Any]:
    """Heap held by ``n`` adapters in the RAM tier (tracemalloc sees numpy's buffers)."""
    reg = AdapterRegistry(url, e.fingerprint, e.shapes, cfg=RegistryConfig(cache_size=n))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    nbytes = 0
    for u in ids[:n]:
        got = reg.get(_SVC, u)
        assert got is not None
        nbytes += got.nbytes
        del got
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    warm = [_timed(partial(reg.get, _SVC, u)) for u in ids[:n]]  # all RAM-tier hits
    if reg.cached() != n:
        raise ToolsError(f"the RAM tier holds {reg.cached()} adapters, expected {n}")
    reg.close()
    return {
        "heap_bytes_per_adapter": held / n,
        "tensor_bytes_per_adapter": nbytes / n,
        "warm_hit": _pcts(warm),
    }


_SMALL_MODEL = ModelConfig(
    level_sizes=(8, 8), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32
)
_SMALL = AdapterConfig(rank=1, targets=("q",), n_prefix=1, film=False, n_modes=0)


def _lookups(root: Path, scales: Sequence[int], lookups: int, seed: int) -> dict[str, Any]:
    shapes = adapter_shapes(_SMALL_MODEL, _SMALL)
    tensors = {k: v.numpy() for k, v in new_adapter(_SMALL_MODEL, _SMALL).items()}
    fp = "00112233aabbccdd"
    out: dict[str, Any] = {}
    reg = AdapterRegistry(root / "lookup.db", fp, shapes, cfg=RegistryConfig(cache_size=0))
    have = 0
    rng = np.random.default_rng(seed)
    for n in sorted(scales):
        t0 = time.perf_counter()
        register_users(reg, n - have, tensors, fp, _SMALL, start=have)
        reg_s = time.perf_counter() - t0
        have = n
        ids = [f"u{int(i):07d}" for i in rng.integers(0, n, size=lookups)]
        latest = [_timed(partial(reg.latest_version, _SVC, u)) for u in ids]
        info = [_timed(partial(reg.info, _SVC, u)) for u in ids]
        out[str(n)] = {
            "latest_version": _pcts(latest),
            "info": _pcts(info),
            "register_s": reg_s,
            "db_bytes": sum(f.stat().st_size for f in root.glob("lookup.db*")),  # with the WAL
        }
    reg.close()
    return out


ADAPTERS_STEPS = 3


def bench_adapters(
    model_dir: str | Path,
    cfg: AdaptersBenchConfig,
    command: str,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the adapter benchmark in a temporary directory.

    ``on_step(name)`` reports each of its :data:`ADAPTERS_STEPS` parts.
    """
    step = on_step or (lambda name: None)
    e = Engine(model_dir, EngineConfig(backend=cfg.backend, slots=max(cfg.samples, 1) + 1, beam=20))
    with tempfile.TemporaryDirectory(prefix="userlayer-bench-") as tmp:
        root = Path(tmp)
        url = root / "registry.db"
        reg = AdapterRegistry(url, e.fingerprint, e.shapes, cfg=RegistryConfig(cache_size=0))
        path = _serving_path(e, reg, cfg)
        reg.close()
        step("cold loads and uploads")
        ids = path.pop("ids")
        mem = _memory(url, e, ids, cfg.cache)
        step("memory per cached adapter")
        scales = _lookups(root, cfg.lookup_users, cfg.lookups, cfg.seed)
        step("lookups at scale")
    cold, fresh, warm = path["cold_to_slot"], path["upload_to_served"], mem["warm_hit"]
    rows: list[list[object]] = [
        ["cold load: store -> verified -> engine slot", cold["p50_ms"], cold["p99_ms"], "< 5 ms"],
        ["warm: RAM tier hit", warm["p50_ms"], warm["p99_ms"], ""],
        ["upload -> first served request", fresh["p50_ms"], fresh["p99_ms"], "< 1000 ms"],
    ]
    for n, s in scales.items():
        rows.append(
            [
                f"newest-version lookup, {int(n):,} users",
                s["latest_version"]["p50_ms"],
                s["latest_version"]["p99_ms"],
                "",
            ]
        )
        rows.append(
            [f"metadata read, {int(n):,} users", s["info"]["p50_ms"], s["info"]["p99_ms"], ""]
        )
    notes = [
        f"{cfg.users:,} users with the model's adapter ({path['package_bytes']:,} bytes sealed), "
        f"registered at {path['register_users_per_s']:,.0f} users/s; {cfg.samples} cold loads; "
        f"slots of the {cfg.backend} engine",
        f"memory per cached adapter: {mem['heap_bytes_per_adapter'] / 1024:,.1f} KiB of heap "
        f"({mem['tensor_bytes_per_adapter'] / 1024:,.1f} KiB of tensors), {cfg.cache:,} cached",
        "lookups: small adapters registered through the real path; SQLite file sizes "
        + ", ".join(f"{int(n):,}: {s['db_bytes'] / 2**20:,.1f} MiB" for n, s in scales.items())
        + "; registration "
        + ", ".join(f"{s['register_s']:,.0f} s" for s in scales.values())
        + " (cumulative tiers)",
    ]
    return BenchReport(
        name="adapters: registry tiers, freshness, memory, lookups at scale",
        command=command,
        columns=["path", "p50 ms", "p99 ms", "target"],
        rows=rows,
        results={**path, "memory": mem, "lookups": scales},
        notes=notes,
    )
