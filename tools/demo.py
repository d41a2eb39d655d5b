"""``userlayer demo``: the whole product on the embedded defaults, in one command.

Synthetic three-service world → Semantic IDs → pretrained base → ONNX export
→ federated rounds with DP (Flower simulation) writing the adapters straight
into the registry → the API started on 127.0.0.1 over that registry → requests
through the SDK client for a sample of users in different modes, one with a
critique → one explanation made on the edge → a report
(quality, privacy, serving) and a figure. Every process it starts is
stopped by its PID, also on errors.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from userlayer.tools.procs import ApiProcess

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the run (``quick`` finishes in about 3 minutes on 2 cores)."""

    users: int = 2000
    events_per_user: float = 100.0
    items_per_service: int | None = None  # default: the simulator's catalog sizes
    text_embeddings: bool = True  # MiniLM item texts; else co-occurrence
    epochs: int = 5
    rounds: int = 3
    users_per_round: int = 30
    population: int = 300
    requests: int = 600
    concurrency: int = 16
    eval_users: int = 400
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoConfig:
        """The CI size."""
        return cls(
            users=400,
            events_per_user=60.0,
            items_per_service=250,
            text_embeddings=False,
            epochs=3,
            rounds=2,
            users_per_round=6,
            population=24,
            requests=200,
            concurrency=8,
            eval_users=200,
        )


def _serve_and_measure(
    api: ApiProcess, data_dir: Path, users_with: list[str], cfg: DemoConfig
) -> dict[str, Any]:
    """Requests for users with and without adapters, in four modes, concurrently."""
    import random

    from userlayer.sdk.client import Client
    from userlayer.sdk.schemas import Context, Mode
    from userlayer.tools.data.format import Dataset

    rng = random.Random(cfg.seed)
    by_user = Dataset.load(data_dir).user_events()
    without = sorted(set(by_user) - set(users_with))
    pool = users_with + without[: max(1, len(users_with) // 3)]
    modes = [Mode.HUNGRY, Mode.SHOPPING, Mode.HEALTH, Mode.UNSPECIFIED]
    jobs = []
    for i in range(cfg.requests):
        u = rng.choice(pool)
        ev = by_user[u]
        last = ev[-1]
        jobs.append((u, last.service, [e.item_id for e in ev[-3:-1]], Context(mode=modes[i % 4])))
    lat: list[float] = []
    personalized = 0
    with Client(api.url, api.key, timeout=30) as c:
        c.recommend(jobs[0][0], jobs[0][1], jobs[0][2], jobs[0][3])  # warm-up

        def one(job: tuple[Any, ...]) -> tuple[float, bool]:
            t0 = time.perf_counter()
            r = c.recommend(job[0], job[1], job[2], job[3], k=10)
            return time.perf_counter() - t0, r.personalized

        t0 = time.perf_counter()
        with ThreadPoolExecutor(cfg.concurrency) as ex:
            for dt, p in ex.map(one, jobs):
                lat.append(dt)
                personalized += p
        wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {
        "requests": len(lat),
        "concurrency": cfg.concurrency,
        "requests_per_s": len(lat) / wall,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "personalized_share": personalized / len(lat),
        "latencies_ms": [x * 1000 for x in lat],
    }


def _critique_and_explanation(
    api: ApiProcess, data_dir: Path, model_dir: Path, users_with: list[str]
) -> dict[str, Any]:
    """One critique through the SDK and one explanation made where the history lives."""
    from userlayer.edge.explain import Explainer
    from userlayer.sdk.client import Client
    from userlayer.sdk.model.io import load_model
    from userlayer.sdk.semantic_ids import SemanticIdTable
    from userlayer.tools.data.format import Dataset

    ds = Dataset.load(data_dir)
    attrs = ds.attributes()
    by_user = ds.user_events()
    user = next(
        (u for u in users_with if len(by_user[u]) >= 3 and attrs[by_user[u][-2].item_id].price),
        users_with[0],
    )
    ev = sorted(by_user[user], key=lambda e: e.timestamp)
    last, session = ev[-1], [e.item_id for e in ev[-3:-1]]
    text = "подешевле"
    with Client(api.url, api.key, timeout=30) as c:
        r = c.recommend(user, last.service, session, last.context, k=5, critique=text)

    def show(item: str) -> dict[str, Any]:
        a = attrs.get(item)
        return {"item_id": item, "title": a.title if a else "", "price": a.price if a else None}

    crit = {
        "user_id": user,
        "critique": text,
        "reacting_to": show(session[-1]),
        "applied": r.critique.applied if r.critique else [],
        "flags": r.critique.flags if r.critique else [],
        "items": [show(x.item_id) for x in r.items],
    }
    table = SemanticIdTable.load(model_dir / "sids.json")
    xp = Explainer(load_model(model_dir), table)
    titles = {i: a.title for i, a in attrs.items()}
    items = [x.item_id for x in r.items] or [session[-1]]
    exp = xp.explain(ev[:-1], last.service, items[:1], last.context, last.timestamp, titles)[0]
    return {
        "critique": crit,
        "explanation": {
            "user_id": user,
            "item_id": exp.item_id,
            "text": exp.text,
            "evidence": [
                {
                    "kind": e.unit.kind,
                    "item_id": e.item_id,
                    "field": e.unit.field,
                    "drop_nats": round(e.drop, 3),
                }
                for e in exp.evidence
            ],
            "where": "made on the edge from the user's own history (the base alone here)",
        },
    }


QUALITY_ROWS = (
    ("private, base only", "private,\nbase only"),
    ("private, with adapters", "private,\nwith user layer"),
    ("full history, same users (reference, not private)", "full history\n(not private)"),
)


def _figure(
    quality: dict[str, Any], rounds: list[dict[str, Any]], serving: dict[str, Any], out: Path
) -> Path:
    """The product's story first: private quality with and without the user layer, same users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8), width_ratios=[1.3, 1, 1, 1])
    n = quality["users with an adapter"]
    x = range(len(QUALITY_ROWS))
    top = 0.0
    for off, metric, label in ((-0.2, "R@10", "HR@10"), (0.2, "N@10", "NDCG@10")):
        vals = [quality[key][metric] for key, _ in QUALITY_ROWS]
        bars = ax[0].bar([i + off for i in x], vals, width=0.4, label=label)
        ax[0].bar_label(bars, fmt="%.3f", fontsize=8)
        top = max(top, *vals)
    ax[0].set_xticks(list(x), [label for _, label in QUALITY_ROWS])
    ax[0].set_ylim(0, top * 1.3 or 1.0)  # room for the labels and the legend
    ax[0].set(title=f"held-out next item, the same {n} users in every bar")
    ax[0].legend(loc="upper left", ncols=2)
    r = [x["round"] for x in rounds]
    ax[1].plot(r, [x.get("sampled", 0) for x in rounds], marker="o", label="sampled")
    ax[1].plot(r, [x.get("valid", 0) for x in rounds], marker="s", label="valid replies")
    ax[1].set(title="users per round (nodes send no loss)", xlabel="round")
    ax[1].legend()
    ax[2].plot(r, [x.get("epsilon") or 0 for x in rounds], marker="o", label="shared part")
    ax[2].plot(r, [x.get("epsilon_user_max", 0) for x in rounds], marker="s", label="user max")
    ax[2].set(title="epsilon (delta 1e-5)", xlabel="round")
    ax[2].legend()
    for a in ax[1:3]:
        a.set_xticks(r)  # rounds are whole numbers
    ax[3].hist(serving["latencies_ms"], bins=30)
    ax[3].set(title=f"API latency, {serving['concurrency']} clients", xlabel="ms")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_demo(
    out: str | Path, cfg: DemoConfig, step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every stage; returns the report (also written to ``out/report.json``)."""
    from userlayer.cloud.engine.export import export_onnx
    from userlayer.cloud.fl.server import open_registry
    from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, library
    from userlayer.tools.data.synth import SynthConfig, synthesize
    from userlayer.tools.eval.evaluate import EvalConfig, evaluate
    from userlayer.tools.fl import SimulationConfig, evaluate_registry, simulate, user_epsilons
    from userlayer.tools.sids import SidConfig, build_semantic_ids
    from userlayer.tools.train.pretrain import PretrainConfig, pretrain

    say = step or (lambda s: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str) -> Callable[[], None]:
        t0 = time.perf_counter()
        say(name)

        def done() -> None:
            timings[name] = round(time.perf_counter() - t0, 1)

        return done

    data, model_dir, wd = out / "data", out / "model", out / "fl"
    done = timed("1/8 simulating the three services")
    scfg = SynthConfig(users=cfg.users, seed=cfg.seed, events_per_user=cfg.events_per_user)
    if cfg.items_per_service:
        n = cfg.items_per_service
        scfg = replace(scfg, items_samokat=n, items_kuper=n, items_megamarket=n)
    synth = synthesize(scfg)
    synth.save(data)
    done()
    done = timed("2/8 building Semantic IDs")
    sid_cfg = SidConfig(embedding="auto" if cfg.text_embeddings else "collaborative")
    table, _ = build_semantic_ids(synth.dataset, sid_cfg)
    table.save(data / "sids.json")
    done()
    done = timed("3/8 pretraining the base")
    pretrain(data, model_dir, PretrainConfig(epochs=cfg.epochs, seed=cfg.seed))
    done()
    done = timed("4/8 exporting to ONNX")
    export_onnx(model_dir, model_dir / "onnx")
    done()
    done = timed("5/8 federated rounds with DP")
    fl = simulate(
        data,
        model_dir,
        wd,
        SimulationConfig(
            rounds=cfg.rounds,
            users_per_round=cfg.users_per_round,
            population=cfg.population,
            seed=cfg.seed,
        ),
    )
    done()
    done = timed("6/8 quality: private with and without adapters, full-history reference")
    quality = evaluate_registry(data, wd)
    ref = evaluate(data, model_dir, EvalConfig(baselines=(), max_users=cfg.eval_users))
    done()
    done = timed("7/8 API on 127.0.0.1 over the registry the rounds wrote into")
    reg = open_registry(wd)
    with_adapter = sorted({u for s in ("samokat", "megamarket", "kuper") for u in reg.users(s)})
    reg.close()
    registry_path = wd / "registry" / "registry.db"
    api = ApiProcess(model_dir, registry_path, out / "api.log", {"USERLAYER_MAX_WAIT_MS": "10"})
    try:
        api.wait_ready()
        done()
        done = timed("8/8 requests through the SDK")
        serving = _serve_and_measure(api, data, with_adapter, cfg)
        extras = _critique_and_explanation(api, data, model_dir, with_adapter)
        done()
    finally:
        api.stop()
    eps = list(user_epsilons(wd, with_adapter).values())
    quality_report = {
        "private, base only": quality["base only"],
        "private, with adapters": quality["with adapter"],
        "users with an adapter": quality["users"],
        "full history, same users (reference, not private)": quality["full history"],
        "all users, full history (base)": ref["results"]["generative"]["full"]["all"],
        "all users, private (base)": ref["results"]["generative"]["private"]["all"],
        "all users": ref["protocol"]["users"],
    }
    png = _figure(quality_report, fl["rounds"], serving, out / "demo.png")
    report = {
        "config": asdict(cfg),
        "quality": quality_report,
        "privacy": {
            "epsilon_user_median": statistics.median(eps) if eps else None,
            "epsilon_user_max": max(eps) if eps else None,
            "epsilon_shared_final": fl["rounds"][-1].get("epsilon"),
            "delta": 1e-5,
            "unit": "per event for each user's adapter; per user for the shared part",
            "accountant": f"{DEFAULT_ACCOUNTANT} ({library()}): per-user DP-SGD and the shared "
            "part's user-level Gaussian mechanism",
        },
        "serving": {k: v for k, v in serving.items() if k != "latencies_ms"},
        **extras,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - t_start, 1),
        "artifacts": {
            "data": str(data),
            "model": str(model_dir),
            "onnx": str(model_dir / "onnx"),
            "federated": str(wd),
            "registry": str(registry_path),
            "figure": str(png),
            "api_log": str(out / "api.log"),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    return report
