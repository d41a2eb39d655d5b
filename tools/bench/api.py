"""``userlayer bench api``: the inference API over HTTP on 127.0.0.1, under concurrent clients.

The API runs as its own process (``userlayer serve``, the ONNX Runtime
backend by default) over a registry of ``users`` users holding adapters of
the model's shape, in each of several set-ups side by side: the engine
inside the HTTP process (``inline``) and the engine core in its own process
fed by one or more API worker processes (``process:N``). Before any server
starts, the engine alone is timed on a batch of 64 users with adapters: the
most the API could deliver. For each concurrency level a fixed number of requests is
sent by that many concurrent clients (:mod:`.loadgen`: keep-alive HTTP/1.1
over asyncio streams, no retries, so every 503 is counted), from many users:
most with an adapter, some without (they are served by the base model and
flagged). The load generator stops by itself after its requests. Then,
past capacity: a server with a short queue gets more concurrent clients
than it can hold, and every 503 must carry ``Retry-After``. The client
shares the machine's cores with the server.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.engine.export import ensure_onnx
from userlayer.cloud.registry import AdapterRegistry, RegistryConfig
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.bench.adapters import random_adapter, register_users
from userlayer.tools.bench.loadgen import post_json_load
from userlayer.tools.bench.report import BenchReport
from userlayer.tools.bench.serving import engine_rows_per_s
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.procs import ApiProcess

__all__ = ["ApiBenchConfig", "bench_api", "request_bodies", "run_load"]

_MODES = ("hungry", "shopping", "health", "unspecified")


@dataclass(frozen=True)
class ApiBenchConfig:
    """Size of the run."""

    concurrency: tuple[int, ...] = (1, 32, 64, 256)
    setups: tuple[str, ...] = ("inline", "process:1", "process:2")
    requests: int = 2_000  # per concurrency level (at least 10 per client)
    users: int = 2_000  # registered with adapters
    without_share: float = 0.2  # requests from users without an adapter
    overload_clients: int = 256
    overload_queue: int = 32
    overload_requests: int = 1_500
    backend: str = "onnxruntime"
    device: str = "cpu"  # the torch backend's device (cuda on a GPU)
    max_wait_ms: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1 or self.requests < 1:
            raise ToolsError("`concurrency` levels and `requests` should be positive")
        if not 0 <= self.without_share <= 1:
            raise ToolsError("`without_share` should be in [0, 1]")
        if not self.setups:
            raise ToolsError("name at least one set-up")
        for setup in self.setups:
            _setup_env(setup)


def _setup_env(setup: str) -> dict[str, str]:
    """``inline`` or ``process:N`` as the server's environment.

    Raises:
        ToolsError: another name.
    """
    if setup == "inline":
        return {"USERLAYER_ENGINE": "inline", "USERLAYER_WORKERS": "1"}
    kind, _, n = setup.partition(":")
    if kind != "process" or not (n or "1").isdigit() or int(n or "1") < 1:
        raise ToolsError(f"set-up {setup!r}: use inline or process:N (N API workers)")
    return {"USERLAYER_ENGINE": "process", "USERLAYER_WORKERS": n or "1"}


def request_bodies(
    table: SemanticIdTable, n: int, users: int, share: float, seed: int
) -> list[dict[str, Any]]:
    """``n`` recommend bodies for megamarket; a ``share`` of them from users without adapters.

    Registered users are named as :func:`register_users` names them (``users`` of
    them); sessions are 1-4 random megamarket items; the modes cycle.
    """
    rng = np.random.default_rng(seed)
    by_svc: dict[str, list[str]] = {}
    for item, svc in table.services.items():
        by_svc.setdefault(svc.value, []).append(item)
    mm = sorted(by_svc.get("megamarket") or next(iter(by_svc.values())))
    out = []
    for i in range(n):
        with_adapter = rng.random() >= share
        user = (
            f"u{int(rng.integers(users)):07d}"
            if with_adapter
            else f"anon{int(rng.integers(10**6))}"
        )
        m = int(rng.integers(1, 5))
        session = [mm[int(j)] for j in rng.integers(0, len(mm), size=m)]
        out.append(
            {
                "user_id": user,
                "service": "megamarket",
                "context": {"mode": _MODES[i % 4]},
                "session": session,
                "k": 10,
            }
        )
    return out


async def _load(url: str, key: str, bodies: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    answers, wall = await post_json_load(url, "/v1/recommend", key, bodies, clients)
    lat: list[float] = []
    status: Counter[int] = Counter()
    personalized = 0
    missing_retry_after = 0
    errors: Counter[str] = Counter()
    for a in answers:
        status[a.status] += 1
        if a.status == 0:
            errors[a.error] += 1
        elif a.status == 200:
            lat.append(a.seconds)
            personalized += bool(json.loads(a.body)["personalized"])
        elif a.status == 503 and "retry-after" not in a.headers:
            missing_retry_after += 1
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0] if lat else 0.0] * 99
    return {
        "clients": clients,
        "sent": len(bodies),
        "ok": len(lat),
        "status": dict(status),
        "requests_per_s": len(lat) / wall,
        "p50_ms": q[49] * 1000,
        "p95_ms": q[94] * 1000,
        "p99_ms": q[98] * 1000,
        "personalized_share": personalized / max(1, len(lat)),
        "rate_503": status[503] / len(bodies),
        "missing_retry_after": missing_retry_after,
        "transport_errors": dict(errors),
    }


def run_load(url: str, key: str, bodies: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Send ``bodies`` to ``POST /v1/recommend`` from ``clients`` concurrent clients."""
    return asyncio.run(_load(url, key, bodies, clients))


def api_steps(cfg: ApiBenchConfig) -> int:
    """How many times :func:`bench_api` calls ``on_step``."""
    return 1 + len(cfg.setups) * len(cfg.concurrency) + 1


def bench_api(
    model_dir: str | Path,
    cfg: ApiBenchConfig,
    command: str,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Start the API on 127.0.0.1 over a fresh registry and measure it; stops what it started.

    ``on_step(name)`` reports each measured part (:func:`api_steps` of them).
    """
    step = on_step or (lambda name: None)
    d = Path(model_dir)
    if cfg.backend == "onnxruntime":
        ensure_onnx(d)  # (again, if an older export format)
    e = Engine(d, EngineConfig(backend=cfg.backend, slots=1, device=cfg.device))  # as served
    fp, shapes, acfg, table = e.fingerprint, e.shapes, e.acfg, e.table
    del e
    engine64 = engine_rows_per_s(d, cfg.backend, 64, seed=cfg.seed, device=cfg.device)
    step("engine alone")
    results: dict[str, Any] = {"engine_rows_per_s_batch64": engine64}
    rows: list[list[object]] = [["engine alone, batch 64", "", engine64, "", "", "", "", ""]]
    with tempfile.TemporaryDirectory(prefix="userlayer-bench-api-") as tmp:
        root = Path(tmp)
        reg = AdapterRegistry(root / "registry.db", fp, shapes, cfg=RegistryConfig())
        register_users(reg, cfg.users, random_adapter(shapes, cfg.seed), fp, acfg)
        reg.close()
        base_env = {  # one key sends everything here: no per-key rate limit
            "USERLAYER_BACKEND": cfg.backend,
            "USERLAYER_DEVICE": cfg.device,
            "USERLAYER_MAX_WAIT_MS": str(cfg.max_wait_ms),
            "USERLAYER_RATE_LIMIT": "0",
        }
        warm = request_bodies(table, 64, cfg.users, cfg.without_share, cfg.seed + 99)
        for setup in cfg.setups:
            env = {**base_env, **_setup_env(setup)}
            with ApiProcess(d, root / "registry.db", root / f"api-{setup}.log", env) as api:
                api.wait_ready()
                run_load(api.url, api.key, warm, 8)  # warm-up: sessions, caches, slots
                for c in cfg.concurrency:
                    n = max(cfg.requests, 10 * c)
                    bodies = request_bodies(table, n, cfg.users, cfg.without_share, cfg.seed + c)
                    res = run_load(api.url, api.key, bodies, c)
                    results[f"{setup}/c{c}"] = res
                    rows.append(_row(setup, f"{c}", res))
                    step(f"{setup}, {c} clients")
        last = cfg.setups[-1]
        env_over = {
            **base_env,
            **_setup_env(last),
            "USERLAYER_MAX_QUEUE": str(cfg.overload_queue),
        }
        with ApiProcess(d, root / "registry.db", root / "api-overload.log", env_over) as api:
            api.wait_ready()
            run_load(api.url, api.key, warm, 4)
            bodies = request_bodies(table, cfg.overload_requests, cfg.users, cfg.without_share, 7)
            res = run_load(api.url, api.key, bodies, cfg.overload_clients)
            results["overload"] = {**res, "max_queue": cfg.overload_queue, "setup": last}
            label = f"{cfg.overload_clients} (queue {cfg.overload_queue})"
            rows.append(_row(last, label, res))
            step("overload")
    levels = {k: v for k, v in results.items() if isinstance(v, dict)}
    bad = {k: v["status"] for k, v in levels.items() if set(v["status"]) - {200, 503}}
    notes = [
        f"{cfg.users:,} users with adapters; {cfg.without_share:.0%} of requests from users "
        f"without one; requests per level: max({cfg.requests:,}, 10 x clients); "
        f"backend {cfg.backend}; inline: the engine in the HTTP process behind a batcher "
        f"(max wait {cfg.max_wait_ms} ms); process:N: the engine core process fed by N API "
        "worker processes over a Unix socket, batching continuously; client and server "
        "share the machine",
        "every 503 carries Retry-After"
        if all(v["missing_retry_after"] == 0 for v in levels.values())
        else "some 503 responses lacked Retry-After",
    ]
    for setup in cfg.setups:
        r = {c: results.get(f"{setup}/c{c}", {}).get("requests_per_s") for c in cfg.concurrency}
        if r.get(64):
            notes.append(
                f"{setup}: 64 clients reach {r[64] / engine64:.0%} of the engine's rows/s at "
                "batch 64 (target >= 80%)"
            )
        if r.get(32):
            for c in (64, 256):
                if r.get(c):
                    notes.append(
                        f"{setup}: {c} clients / 32 clients req/s {r[c] / r[32]:.2f} "
                        "(target >= 0.90)"
                    )
    if bad:
        notes.append(f"unexpected statuses: {bad}")
    return BenchReport(
        name="api: HTTP on 127.0.0.1 under concurrent clients",
        command=command,
        columns=[
            "set-up",
            "clients",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "personalized",
            "503 rate",
        ],
        rows=rows,
        results=results,
        notes=notes,
    )


def _row(setup: str, label: str, r: dict[str, Any]) -> list[object]:
    return [
        setup,
        label,
        r["requests_per_s"],
        r["p50_ms"],
        r["p95_ms"],
        r["p99_ms"],
        f"{r['personalized_share']:.0%}",
        f"{r['rate_503']:.1%}",
    ]
