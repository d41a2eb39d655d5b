"""``userlayer bench serving``: rows/s of one engine call (forward plus beam search).

With ``rankings`` a base with a dense item head is also timed ranking by it
(``dense``: one prefill and the head over every item; ``beam+dense``: the
beam reranked; ``fused``: the beam's and the head's lists merged), each
beside the beam search in the same run.

For each backend and batch size, in the same run and interleaved: a batch
whose every row is a different user with their own adapter (drawn from
``users`` adapters, loaded into the engine's slots), and the same batch with
no adapters (the base alone). Each figure is the median over ``repeats``
timed calls after a warm-up. Requests are private-regime prompts (a session
of 1-5 items and a context) over the model's own catalog.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.cloud.engine.export import ensure_onnx
from userlayer.sdk.critique import parse_critique
from userlayer.sdk.model import new_adapter
from userlayer.sdk.model.dense_search import RANKINGS
from userlayer.sdk.schemas import Context, Daypart, Mode
from userlayer.tools.bench.naive import NaivePeftServer
from userlayer.tools.bench.report import BenchReport

__all__ = [
    "ServingBenchConfig",
    "bench_serving",
    "engine_rows_per_s",
]


@dataclass(frozen=True)
class ServingBenchConfig:
    """Size of the run."""

    batches: tuple[int, ...] = (1, 8, 32, 64)
    backends: tuple[str, ...] = ("onnxruntime", "torch")
    users: int = 10_000
    repeats: int = 7
    k: int = 10
    beam: int = 20
    threads: int | None = None
    seed: int = 0
    naive: bool = True  # also time peft with a per-request adapter swap (torch, batch 1)
    device: str = "cpu"  # the torch backend's device (cuda on a GPU)
    providers: tuple[str, ...] = ()  # ONNX Runtime's execution providers (default: CPU)
    rankings: tuple[str, ...] = ("auto",)  # EngineConfig.ranking: each one timed, side by side

    def __post_init__(self) -> None:
        for r in self.rankings:
            if r not in ("auto", *RANKINGS):
                raise ValueError(f"ranking {r!r} should be one of {('auto', *RANKINGS)}")
        if not self.rankings:
            raise ValueError("`rankings` is empty")


def _requests(e: Engine, n: int, rng: np.random.Generator) -> list[EngineRequest]:
    items = sorted(e.table.codes)
    out = []
    for _ in range(n):
        first = int(rng.integers(len(items)))
        session = tuple(
            items[(first + j * 17) % len(items)] for j in range(int(rng.integers(1, 6)))
        )
        mode = [Mode.HUNGRY, Mode.SHOPPING, Mode.HEALTH, Mode.UNSPECIFIED][int(rng.integers(4))]
        out.append(
            EngineRequest(
                service=e.table.services[session[-1]],
                context=Context(mode=mode, daypart=Daypart.EVENING, weekday=int(rng.integers(7))),
                session=session,
            )
        )
    return out


def _adapters(e: Engine, users: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``users`` distinct adapters: mixes of a small pool of random ones (cheap to make)."""
    rng = np.random.default_rng(seed)
    pool = [
        {
            k: v.numpy() + 0.02 * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in new_adapter(e.model_cfg, e.acfg, torch.Generator().manual_seed(i)).items()
        }
        for i in range(16)
    ]
    out = []
    for u in range(users):
        a, b = pool[u % 16], pool[(u * 7 + 3) % 16]
        w = np.float32((u % 97) / 97)
        out.append({k: w * a[k] + (1 - w) * b[k] for k in a})
    return out


CRITIQUES = ("подешевле", "без мяса", "другой бренд", "полезнее", "no sugar, cheaper")


def _with_critiques(e: Engine, reqs: Sequence[EngineRequest]) -> list[EngineRequest] | None:
    """The same requests, each with a critique (parsed and masked as the service does)."""
    if e.catalog is None:
        return None
    out = []
    for i, r in enumerate(reqs):
        v = e.catalog.apply(parse_critique(CRITIQUES[i % len(CRITIQUES)]), r.session)
        out.append(replace(r, allowed=v.allowed, bonus=v.steer))
    return out


def _time(e: Engine, reqs: Sequence[EngineRequest], repeats: int) -> float:
    e.recommend(reqs)  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        e.recommend(reqs)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _time_naive(
    naive: NaivePeftServer,
    jobs: Sequence[tuple[EngineRequest, dict[str, np.ndarray]]],
    repeats: int,
) -> float:
    """Median seconds to serve ``jobs`` one after another, swapping adapters per request."""
    naive.recommend(*jobs[0])  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for req, ad in jobs:
            naive.recommend(req, ad)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def engine_rows_per_s(
    model_dir: str | Path,
    backend: str,
    batch: int,
    repeats: int = 10,
    seed: int = 0,
    device: str = "cpu",
) -> float:
    """Rows/s of the engine alone on a batch of ``batch`` users, each with their own adapter.

    What the HTTP API can at best deliver with that backend and batch size
    (the serving bench's adapters row, in the caller's run).
    """
    e = Engine(Path(model_dir), EngineConfig(backend=backend, slots=batch, device=device))
    ads = _adapters(e, batch, seed)
    reqs = [
        EngineRequest(**{**r.__dict__, "k": 10, "slot": e.slab.load(("bench", u, 1), ads[u])})
        for u, r in enumerate(_requests(e, batch, np.random.default_rng([seed, batch])))
    ]
    return batch / _time(e, reqs, repeats)


def serving_steps(cfg: ServingBenchConfig) -> int:
    """How many times :func:`bench_serving` calls ``on_step``."""
    return len(cfg.backends) * len(cfg.rankings) * len(cfg.batches) + (1 if cfg.naive else 0)


def _label(backend: str, ranking: str) -> str:
    return backend if ranking == "auto" else f"{backend}, {ranking}"


def bench_serving(
    model_dir: str | Path,
    cfg: ServingBenchConfig,
    command: str,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the serving benchmark; exports ONNX into ``model_dir/onnx`` if missing.

    ``on_step(name)`` reports each measured cell (:func:`serving_steps` of them).
    """
    step = on_step or (lambda name: None)
    d = Path(model_dir)
    if "onnxruntime" in cfg.backends:
        ensure_onnx(d)  # (again, if an older export format)
    rows: list[list[object]] = []
    results: dict[str, dict[str, Any]] = {}
    ratios: dict[str, float] = {}
    for backend, ranking in [(b, r) for b in cfg.backends for r in cfg.rankings]:
        label = _label(backend, ranking)
        e = Engine(
            d,
            EngineConfig(
                backend=backend,
                beam=cfg.beam,
                slots=max(cfg.batches),
                threads=cfg.threads,
                device=cfg.device,
                providers=cfg.providers,
                ranking=ranking,
            ),
        )
        ads = _adapters(e, cfg.users, cfg.seed)
        for b in cfg.batches:
            rng = np.random.default_rng([cfg.seed, b])  # the same requests on every backend
            reqs = _requests(e, b, rng)
            users = rng.choice(cfg.users, size=b, replace=False)
            with_ad = [
                EngineRequest(
                    **{
                        **r.__dict__,
                        "k": cfg.k,
                        "slot": e.slab.load(("bench", int(u), 1), ads[int(u)]),
                    }
                )
                for r, u in zip(reqs, users, strict=True)
            ]
            base = [EngineRequest(**{**r.__dict__, "k": cfg.k, "slot": -1}) for r in reqs]
            t_base, t_ad = [], []
            for _ in range(2):  # interleave the two so drift hits both alike
                t_base.append(_time(e, base, cfg.repeats))
                t_ad.append(_time(e, with_ad, cfg.repeats))
            sb, sa = min(t_base), min(t_ad)
            res = {
                "rows_per_s_base": b / sb,
                "rows_per_s_adapters": b / sa,
                "ms_base": sb * 1000,
                "ms_adapters": sa * 1000,
                "ratio": sb / sa,
                "ranking": e.ranking,  # what "auto" resolved to
            }
            results[f"{label}/{b}"] = res
            crit = _with_critiques(e, with_ad) if b == max(cfg.batches) else None
            if crit is not None:  # what a critique adds: parsing, masks, the masked search
                t_plain, t_crit = [], []
                for _ in range(2):
                    t_plain.append(_time(e, with_ad, cfg.repeats))
                    t_start = time.perf_counter()
                    crit = _with_critiques(e, with_ad)
                    parse = time.perf_counter() - t_start
                    assert crit is not None
                    t_crit.append(_time(e, crit, cfg.repeats) + parse)
                sp, sc = min(t_plain), min(t_crit)
                results[f"{label}/{b}/critiques"] = {
                    "rows_per_s_adapters": b / sp,
                    "rows_per_s_adapters_critiques": b / sc,
                    "ms_added_per_request": (sc - sp) * 1000 / b,
                }
            rows.append(
                [
                    f"{label} ({e.ranking})"
                    if ranking == "auto" and cfg.rankings != ("auto",)
                    else label,
                    b,
                    res["rows_per_s_base"],
                    res["rows_per_s_adapters"],
                    res["ms_adapters"],
                    f"{res['ratio']:.2f}",
                ]
            )
            step(f"{label}, batch {b}")
    if cfg.naive:
        naive = NaivePeftServer(d, e, e.acfg)
        for b in cfg.batches:
            rng = np.random.default_rng([cfg.seed, b])
            reqs = [EngineRequest(**{**r.__dict__, "k": cfg.k}) for r in _requests(e, b, rng)]
            users = rng.choice(cfg.users, size=b, replace=False)
            jobs = [(r, ads[int(u)]) for r, u in zip(reqs, users, strict=True)]
            tn = _time_naive(naive, jobs, max(3, cfg.repeats // 2))
            beams = [  # peft decodes by beam search: compare it with the engine's beam
                results[f"{_label(k, r)}/{b}"]
                for k in cfg.backends
                for r in cfg.rankings
                if results[f"{_label(k, r)}/{b}"]["ranking"] == "beam"
            ]
            results[f"naive_peft/{b}"] = {
                "rows_per_s_adapters": b / tn,
                "ms_adapters": tn * 1000,
            }
            if beams:
                best = max(x["rows_per_s_adapters"] for x in beams)
                results[f"naive_peft/{b}"]["engine_vs_naive"] = best * tn / b
            rows.append(["peft swap per request (torch)", b, "", b / tn, tn * 1000, ""])
        step("peft swap per request")
    for b in cfg.batches:
        for r in cfg.rankings:
            o = results.get(f"{_label('onnxruntime', r)}/{b}")
            t = results.get(f"{_label('torch', r)}/{b}")
            if o is not None and t is not None:
                key = f"batch {b}" if r == "auto" else f"{r}, batch {b}"
                ratios[key] = o["rows_per_s_adapters"] / t["rows_per_s_adapters"]
    notes = [
        f"every row a different user drawn from {cfg.users:,} adapters in the engine's slots; "
        f"beam {cfg.beam}, k {cfg.k}; median of {cfg.repeats} calls, best of 2 interleaved rounds",
        "target: 64 users' adapters keep >= 95% of base-alone rows/s on the same backend "
        "(ratio column)",
    ]
    notes += [
        f"onnxruntime / torch rows/s with adapters, {key}: {r:.2f}x" for key, r in ratios.items()
    ]
    notes += [
        f"{ck.split('/')[0]}, batch {ck.split('/')[1]}, every row with a critique "
        f"({', '.join(CRITIQUES)}; parsed, masked and searched): "
        f"{cv['rows_per_s_adapters_critiques']:.0f} vs {cv['rows_per_s_adapters']:.0f} rows/s "
        f"without, {cv['ms_added_per_request']:+.2f} ms per request"
        for ck, cv in results.items()
        if ck.endswith("/critiques")
    ]
    if cfg.naive:
        notes.append(
            "peft swap per request: the base wrapped by peft (LoRA on the same projections), the "
            "user's LoRA written in with set_peft_model_state_dict, then that request decoded "
            "alone; b concurrent requests are served one after another (it applies only the LoRA "
            "part of the user layer). Target: the engine >= 20x its rows/s at 64 users"
        )
        notes += [
            f"best engine backend (beam search) / peft swap per request, {b} users: "
            f"{results[f'naive_peft/{b}']['engine_vs_naive']:.1f}x"
            for b in cfg.batches
            if "engine_vs_naive" in results[f"naive_peft/{b}"]
        ]
    return BenchReport(
        name="serving: one engine call, per-user adapters vs the base alone",
        command=command,
        columns=[
            "backend",
            "batch",
            "rows/s base",
            "rows/s adapters",
            "ms adapters",
            "adapters/base",
        ],
        rows=rows,
        results={**results, "ort_vs_torch": ratios},
        notes=notes,
    )
