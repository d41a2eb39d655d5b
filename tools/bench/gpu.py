"""``userlayer bench gpu``: every GPU check in one run, written as one JSON.

Made for a lent GPU machine with a time budget (``tools/gpu_check.sh`` runs
it there): each part has its own time allowance, a part that cannot run
(no CUDA, no ONNX Runtime GPU provider, no FastAPI) is recorded as skipped
with the reason, and the JSON is rewritten after every part so a run cut
short still reports what it measured.

Parts:

``environment``
    torch and CUDA versions, the GPU's name and memory, ONNX Runtime's
    providers.
``parity``
    the same 64 mixed requests (every row its own user's adapter, some rows
    without) on the torch CPU engine and on each GPU engine (torch CUDA, ONNX
    Runtime's CUDA and TensorRT providers where present): share of rows with
    the same top-10 items in the same order, and the largest score gap; for the
    served ranking and for the beam (log-probabilities) and the dense head
    (scores), since a ``fused`` score is a sum of reciprocal ranks.
``serving``
    ``bench serving`` on each GPU engine: rows/s with 64 different adapters vs
    the base alone at batch 1-256.
``api``
    ``bench api`` with the engine core on the GPU (torch CUDA), 1-256 clients.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.cloud.engine.export import ensure_onnx
from userlayer.sdk.model.io import load_model
from userlayer.tools.bench.report import BenchReport
from userlayer.tools.bench.serving import ServingBenchConfig, _adapters, _requests, bench_serving

__all__ = ["GpuCheckConfig", "gpu_check"]

logger = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class GpuCheckConfig:
    """What to run and within how long."""

    parts: tuple[str, ...] = ("environment", "parity", "serving", "api")
    batches: tuple[int, ...] = (1, 8, 32, 64, 256)
    concurrency: tuple[int, ...] = (1, 32, 64, 256)
    api_requests: int = 2_000
    api_setup: str = "process:4"
    repeats: int = 5
    budget_s: float = 420.0  # the whole run; parts past it are skipped
    # with no GPU visible, run the parts on the torch CPU engine instead: a dry run of the
    # script (tests, a rehearsal before a lent machine); its figures are not GPU figures
    stand_in: bool = False
    users: int = 2_000


def _environment() -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1)}
    else:
        env["gpu"] = None
    try:
        import onnxruntime as ort

        env |= {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    except ImportError as e:
        env |= {"onnxruntime": None, "providers": [], "onnxruntime_error": str(e)}
    return env


def _gpu_engines(env: dict[str, Any], stand_in: bool) -> dict[str, EngineConfig]:
    """The GPU engines this machine can run, by name (or the CPU stand-in)."""
    out: dict[str, EngineConfig] = {}
    if stand_in and not env.get("gpu"):
        out["torch-cpu-stand-in"] = EngineConfig(backend="torch", device="cpu", slots=256)
    if env.get("gpu"):
        out["torch-cuda"] = EngineConfig(backend="torch", device="cuda", slots=256)
    for prov in _GPU_PROVIDERS:
        if prov in env.get("providers", []):
            out[f"onnxruntime-{prov.removesuffix('ExecutionProvider').lower()}"] = EngineConfig(
                backend="onnxruntime", slots=256, providers=(prov, "CPUExecutionProvider")
            )
    return out


def _parity_rankings(model_dir: Path) -> tuple[str, ...]:
    """The rankings parity compares: the served one, and each whose scores are model outputs.

    ``fused`` scores are sums of reciprocal ranks, equal wherever the order is, so
    the beam's log-probabilities and the dense head's scores are compared too.
    """
    head = bool(load_model(model_dir).cfg.n_items)
    return ("auto", "beam", "dense") if head else ("auto", "beam")


def _parity(model_dir: Path, engines: dict[str, EngineConfig]) -> dict[str, Any]:
    """Top-10 agreement and score gaps of each GPU engine against the torch CPU engine.

    One entry per engine and ranking (``auto`` is the one the model serves).
    """

    def run(cfg: EngineConfig) -> tuple[str, list[list[tuple[str, float]]]]:
        e = Engine(model_dir, cfg)
        ads = _adapters(e, 64, 0)
        reqs = [
            EngineRequest(**{**r.__dict__, "slot": e.slab.load(u, ads[u]) if u % 4 else -1})
            for u, r in enumerate(_requests(e, 64, np.random.default_rng(5)))
        ]
        return e.ranking, [[(x.item_id, x.score) for x in row] for row in e.recommend(reqs)]

    out: dict[str, Any] = {}
    for ranking in _parity_rankings(model_dir):
        served, ref = run(EngineConfig(backend="torch", device="cpu", slots=256, ranking=ranking))
        for name, cfg in engines.items():
            key = name if ranking == "auto" else f"{name}, {ranking}"
            try:  # one engine or ranking that cannot run leaves the others' figures
                gpu_served, got = run(replace(cfg, ranking=ranking))
            except Exception as e:  # an export without the head's scores, a provider failing
                out[key] = {"ranking": ranking, "error": f"{type(e).__name__}: {e}"}
                continue
            same = sum(
                [i for i, _ in g] == [i for i, _ in r] for g, r in zip(got, ref, strict=True)
            )
            gap = max(
                (
                    abs(gs - rs)
                    for g, r in zip(got, ref, strict=True)
                    for (_, gs), (_, rs) in zip(g, r, strict=False)  # rows may differ in length
                ),
                default=0.0,
            )
            out[key] = {
                "ranking": served,
                "rows": len(ref),
                "same_top10": same,
                "max_score_gap": gap,
            }
            if gpu_served != served:  # e.g. an export without the head falls back to the beam
                out[key]["gpu_ranking"] = gpu_served
    return out


def _serving(model_dir: Path, engines: dict[str, EngineConfig], cfg: GpuCheckConfig) -> Any:
    out = {}
    for name, ec in engines.items():
        sc = ServingBenchConfig(
            batches=cfg.batches,
            backends=(ec.backend,),
            users=cfg.users,
            repeats=cfg.repeats,
            naive=False,
            device=ec.device,
            providers=ec.providers,
        )
        rep = bench_serving(model_dir, sc, f"bench gpu serving {name}")
        out[name] = rep.results
    return out


def _api(model_dir: Path, cfg: GpuCheckConfig, device: str) -> Any:
    from userlayer.tools.bench.api import ApiBenchConfig, bench_api

    ac = ApiBenchConfig(
        concurrency=cfg.concurrency,
        setups=(cfg.api_setup,),
        requests=cfg.api_requests,
        users=cfg.users,
        backend="torch",
        device=device,
        overload_requests=500,
    )
    return bench_api(model_dir, ac, "bench gpu api").results


def gpu_check(model_dir: str | Path, cfg: GpuCheckConfig, out_json: Path) -> BenchReport:
    """Run the parts in order within the budget; ``out_json`` is rewritten after each."""
    d = Path(model_dir)
    t0 = time.perf_counter()
    env = _environment()
    engines = _gpu_engines(env, cfg.stand_in)
    torch_dev = next((c.device for c in engines.values() if c.backend == "torch"), None)
    if any(c.backend == "onnxruntime" for c in engines.values()):
        ensure_onnx(d)
    results: dict[str, Any] = {"environment": env, "engines": sorted(engines)}
    rows: list[list[object]] = []

    def save() -> None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2, default=str), "utf-8")

    parts: dict[str, Callable[[], Any]] = {
        "parity": lambda: _parity(d, engines),
        "serving": lambda: _serving(d, engines, cfg),
        "api": lambda: _api(d, cfg, torch_dev or "cuda"),
    }
    save()
    for part in cfg.parts:
        if part == "environment":
            continue
        left = cfg.budget_s - (time.perf_counter() - t0)
        if not engines:
            results[part] = {"skipped": "no GPU engine can run here (no CUDA device visible)"}
        elif part == "api" and torch_dev is None:
            results[part] = {"skipped": "the API check serves the torch engine; none here"}
        elif left < 30:
            results[part] = {"skipped": f"out of budget ({cfg.budget_s:.0f} s)"}
        else:
            t = time.perf_counter()
            try:
                results[part] = parts[part]()
            except ImportError as e:  # a package the lent machine lacks
                results[part] = {"skipped": f"missing package: {e}"}
            except Exception as e:  # one lent run: a broken part leaves the rest to run
                logger.exception("bench gpu: part %s failed", part)
                results[part] = {
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            results[part + "_s"] = round(time.perf_counter() - t, 1)
        rows.append([part, json.dumps(results[part], default=str)[:120]])
        save()
    results["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    return BenchReport(
        "gpu",
        "userlayer bench gpu",
        ["part", "result (abridged; the JSON has it all)"],
        rows,
        results,
        [
            f"device: {env.get('gpu') or 'no GPU'}; torch {env['torch']}, CUDA {env['cuda']}"
            + ("; CPU stand-in: not GPU figures" if "torch-cpu-stand-in" in engines else "")
        ],
    )
