"""Where the API's throughput goes at 32, 64 and 256 clients: the server, or the load generator?

Starts ``userlayer serve`` (the engine core apart, ``--workers`` API workers)
over a registry of users with adapters, then for each client count sends
the same number of requests three ways, side by side in one run:

- ``healthz``: ``GET /healthz`` (no engine, no store): the HTTP path and the
  load generator alone;
- ``recommend``: ``POST /v1/recommend`` from httpx's AsyncClient (the load
  generator ``userlayer bench api`` used before), then the same bodies from
  the lean keep-alive client it uses now (``recommend_lean``);

and reads the engine's batch-size histogram from ``/metrics`` after each
recommend level (mean rows per engine call). Also records the CPU seconds
the load generator (this process) and the server's processes used.

    python experiments/api_load_limits.py --model MODEL --workers 1 --clients 32,64,256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.engine.export import export_onnx
from userlayer.cloud.registry import AdapterRegistry
from userlayer.tools.bench.adapters import random_adapter, register_users
from userlayer.tools.bench.api import request_bodies
from userlayer.tools.bench.loadgen import post_json_load
from userlayer.tools.procs import ApiProcess


async def _get_load(url: str, n: int, clients: int) -> float:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    left = n
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await c.get("/healthz")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return n / (time.perf_counter() - t0)


async def _lean(url: str, key: str, bodies: list[dict[str, Any]], c: int) -> tuple[float, float]:
    answers, wall = await post_json_load(url, "/v1/recommend", key, bodies, c)
    lat = sorted(a.seconds for a in answers if a.status == 200)
    return len(lat) / wall, lat[int(0.99 * (len(lat) - 1))] * 1000


def _batch_rows(url: str, key: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    s = re.search(r"^userlayer_batch_rows_sum (\S+)", text, re.M)
    c = re.search(r"^userlayer_batch_rows_count (\S+)", text, re.M)
    return (float(s.group(1)) if s else 0.0, float(c.group(1)) if c else 0.0)


def _httpx_recommend(
    url: str, key: str, bodies: list[dict[str, Any]], clients: int
) -> dict[str, float]:
    async def go() -> dict[str, float]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        headers = {"Authorization": f"Bearer {key}"}
        queue = list(bodies)
        lat: list[float] = []
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:

            async def worker() -> None:
                while queue:
                    body = queue.pop()
                    t = time.perf_counter()
                    r = await c.post("/v1/recommend", json=body)
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            wall = time.perf_counter() - t0
        lat.sort()
        return {"requests_per_s": len(lat) / wall, "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000}

    return asyncio.run(go())


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    """Run the comparison and print one JSON line per level."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--engine", default="process")
    ap.add_argument("--clients", default="32,64,256")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--users", type=int, default=2000)
    args = ap.parse_args()
    d = args.model
    if not (d / "onnx" / "manifest.json").exists():
        export_onnx(d, d / "onnx")
    e = Engine(d, EngineConfig(slots=1))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "registry.db"
        reg = AdapterRegistry(db, e.fingerprint, e.shapes)
        register_users(reg, args.users, random_adapter(e.shapes, 0), e.fingerprint, e.acfg)
        reg.close()
        env = {"USERLAYER_WORKERS": str(args.workers), "USERLAYER_ENGINE": args.engine}
        with ApiProcess(d, db, Path(tmp) / "api.log", env) as api:
            api.wait_ready()
            server = psutil.Process(api.proc.pid)
            me = psutil.Process()
            _httpx_recommend(api.url, api.key, request_bodies(e.table, 64, args.users, 0.2, 9), 8)
            for c in (int(x) for x in args.clients.split(",")):
                out: dict[str, Any] = {"clients": c, "workers": args.workers}
                procs = [server, *server.children(recursive=True)]
                c0, s0 = _cpu([me]), _cpu(procs)
                out["healthz_req_s"] = asyncio.run(_get_load(api.url, args.requests, c))
                c1, s1 = _cpu([me]), _cpu(procs)
                out["healthz_cpu_client_s"], out["healthz_cpu_server_s"] = c1 - c0, s1 - s0
                rows0, n0 = _batch_rows(api.url, api.key)
                bodies = request_bodies(e.table, args.requests, args.users, 0.2, c)
                res = _httpx_recommend(api.url, api.key, bodies, c)
                c2, s2 = _cpu([me]), _cpu(procs)
                rows1, n1 = _batch_rows(api.url, api.key)
                lean = asyncio.run(_lean(api.url, api.key, bodies, c))
                c3, s3 = _cpu([me]), _cpu(procs)
                rows2, n2 = _batch_rows(api.url, api.key)
                out["recommend_lean_req_s"], out["recommend_lean_p99_ms"] = lean
                out["lean_cpu_client_s"], out["lean_cpu_server_s"] = c3 - c2, s3 - s2
                out["lean_mean_batch_rows"] = (rows2 - rows1) / max(1.0, n2 - n1)
                out["recommend_req_s"] = res["requests_per_s"]
                out["recommend_p99_ms"] = res["p99_ms"]
                out["recommend_cpu_client_s"], out["recommend_cpu_server_s"] = c2 - c1, s2 - s1
                out["mean_batch_rows"] = (rows1 - rows0) / max(1.0, n1 - n0)
                print(
                    json.dumps(
                        {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
