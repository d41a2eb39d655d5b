"""``userlayer bench fl``: federated round time and the cost of DP-SGD on the device.

- Round wall time for 10, 50 and 100 users per round on Flower's simulation
  engine: each size is its own ``userlayer fl simulate`` run (one round,
  population = the round's size, one virtual node per user with 1 CPU); the
  figure is the ServerApp's own wall time of the round (sampling, sending,
  local DP training on every node, replies, aggregation, registry writes),
  without the simulation engine's start-up, which is reported beside it.
- Local training per user with DP-SGD against the same training without DP:
  the same users, examples, starting adapter, learning rate and number of
  steps (DP's public plan: ``epochs / sample_rate`` steps; the plain run is
  capped at that many). DP adds Poisson sampling, per-example gradients,
  clipping, noise and the accountant; its batches are Poisson (``q * n``
  expected) where the plain run's are ``batch_size``, so the time per
  example processed is reported beside the time per user.
- Way (b), when the base has a profile encoder: the Gaussian release of a
  user's profile (:mod:`userlayer.edge.encoder`) over their whole history and
  for a new user's first 5 events, ledger included (no training at all).
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from userlayer.edge.encoder import release_profile
from userlayer.edge.examples import user_examples
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import build_profile
from userlayer.edge.training import DPConfig, TrainConfig, train_adapter
from userlayer.sdk.model import AdapterConfig, load_model, new_adapter
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.bench.report import BenchReport
from userlayer.tools.data.format import Dataset
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.procs import stop_groups, userlayer_command

__all__ = ["FlBenchConfig", "bench_fl"]


@dataclass(frozen=True)
class FlBenchConfig:
    """Size of the run."""

    round_sizes: tuple[int, ...] = (10, 50, 100)
    local_users: int = 20
    epsilon: float = 1.5
    min_events: int = 10
    seed: int = 0
    timeout_s: float = 1800.0  # per simulation run

    def __post_init__(self) -> None:
        if min(self.round_sizes, default=2) < 2 or self.local_users < 1:
            raise ToolsError("round sizes should be at least 2 and `local_users` positive")


def _local(data: Path, model_dir: Path, cfg: FlBenchConfig, tmp: Path) -> dict[str, Any]:
    model = load_model(model_dir).eval()
    table = SemanticIdTable.load(model_dir / "sids.json")
    ds = Dataset.load(data)
    by_user = ds.user_events()
    users = sorted(u for u, ev in by_user.items() if len(ev) >= cfg.min_events)
    users = users[: cfg.local_users]
    if not users:
        raise ToolsError(f"no user with {cfg.min_events}+ events in {data}")
    acfg = AdapterConfig()
    ledger = PrivacyLedger(tmp / "ledger.db", secrets.token_bytes(32), budget=1e6)
    base = TrainConfig()
    _, plan_steps = base.plan()
    variants = {
        "dp": replace(base, dp=DPConfig(target_epsilon=cfg.epsilon)),
        # as many steps as DP's plan, whatever the user's number of examples
        "plain": replace(base, epochs=1e9, max_steps=plan_steps, dp=DPConfig(enabled=False)),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    per_example: dict[str, list[float]] = {k: [] for k in variants}
    steps: list[int] = []
    cats = ds.categories()
    release: list[float] = []
    cold: list[float] = []
    for i, u in enumerate(users):
        if model.profile is not None:  # way (b): the whole history, then the first 5 events
            evs = by_user[u]
            now = evs[-1].timestamp
            rel = release_profile(model, acfg, table, evs, cfg.epsilon, ledger, u, now=now)
            release.append(rel.seconds)
            rel = release_profile(model, acfg, table, evs[:5], cfg.epsilon, ledger, u, now=now)
            cold.append(rel.seconds)
        ex = user_examples(build_profile(by_user[u], categories=cats), table, model.ctx_vocab)
        init = new_adapter(model.cfg, acfg, torch.Generator().manual_seed(cfg.seed + i))
        n_steps = []
        for name, tcfg in variants.items():
            res = train_adapter(model, acfg, ex, init, tcfg, ledger, u)
            times[name].append(res.seconds)
            per_example[name].append(res.seconds / max(1, sum(res.batch_sizes)))
            n_steps.append(res.steps)
        if n_steps[0] != n_steps[1]:
            raise ToolsError(f"user {u}: DP took {n_steps[0]} steps, plain {n_steps[1]}")
        steps.append(n_steps[0])
    dp, plain = statistics.median(times["dp"]), statistics.median(times["plain"])
    return {
        "users": len(users),
        "median_steps": statistics.median(steps),
        "dp_median_s": dp,
        "plain_median_s": plain,
        "dp_over_plain": dp / plain,
        "per_user_ratio_median": statistics.median(
            a / b for a, b in zip(times["dp"], times["plain"], strict=True)
        ),
        "per_example_ratio_median": statistics.median(
            a / b for a, b in zip(per_example["dp"], per_example["plain"], strict=True)
        ),
        "profile_release_median_s": statistics.median(release) if release else None,
        "profile_cold_start_median_s": statistics.median(cold) if cold else None,
    }


def _round(data: Path, model_dir: Path, n: int, cfg: FlBenchConfig, tmp: Path) -> dict[str, Any]:
    wd = tmp / f"round-{n}"
    cmd = [*userlayer_command(), "fl", "simulate", "--data", str(data)]
    cmd += ["--model", str(model_dir), "--rounds", "1", "--users-per-round", str(n)]
    cmd += ["--population", str(n), "--workdir", str(wd), "--seed", str(cfg.seed)]
    cmd += ["--epsilon-per-round", str(cfg.epsilon)]
    log = tmp / f"round-{n}.log"
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own console script
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            raise ToolsError(
                f"the {n}-user round ran past {cfg.timeout_s:.0f} s; see {log}"
            ) from None
        finally:
            stop_groups([proc], grace=10.0)
    total = time.perf_counter() - t0
    prog = wd / "progress.jsonl"
    if proc.returncode != 0 or not prog.exists():
        tail = log.read_text("utf-8", errors="replace")[-2000:]
        raise ToolsError(f"the {n}-user simulation failed ({proc.returncode}):\n{tail}")
    row = json.loads(prog.read_text("utf-8").splitlines()[-1])
    return {
        "users_per_round": n,
        "round_s": float(row["wall_seconds"]),
        "valid_replies": row["valid"],
        "process_s": total,
        "per_user_s": float(row["wall_seconds"]) / n,
    }


def fl_steps(cfg: FlBenchConfig) -> int:
    """How many times :func:`bench_fl` calls ``on_step``."""
    return 1 + len(cfg.round_sizes)


def bench_fl(
    data_dir: str | Path,
    model_dir: str | Path,
    cfg: FlBenchConfig,
    command: str,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the federated benchmark in a temporary directory.

    ``on_step(name)`` reports each part (:func:`fl_steps` of them).
    """
    step = on_step or (lambda name: None)
    data, model_dir = Path(data_dir), Path(model_dir)
    with tempfile.TemporaryDirectory(prefix="userlayer-bench-fl-") as t:
        tmp = Path(t)
        local = _local(data, model_dir, cfg, tmp)
        step("local training")
        rounds = []
        for n in cfg.round_sizes:
            rounds.append(_round(data, model_dir, n, cfg, tmp))
            step(f"a round of {n} users")
    rows: list[list[object]] = [
        [f"one round, {r['users_per_round']} users", r["round_s"], r["per_user_s"], ""]
        for r in rounds
    ]
    rows.append(["local training, DP-SGD (median user)", local["dp_median_s"], "", ""])
    rows.append(["local training, no DP (same steps)", local["plain_median_s"], "", ""])
    rows.append(["DP / no DP", f"{local['dp_over_plain']:.2f}x", "", "<= 2x"])
    rows.append(
        ["DP / no DP per example processed", f"{local['per_example_ratio_median']:.2f}x", "", ""]
    )
    if local["profile_release_median_s"] is not None:
        rows.append(
            ["profile release, whole history (median user)", local["profile_release_median_s"],
             "", "< 0.05 s"]
        )  # fmt: skip
        rows.append(
            ["profile release, new user with 5 events", local["profile_cold_start_median_s"],
             "", "< 0.1 s"]
        )  # fmt: skip
    notes = [
        "rounds: Flower simulation engine, one virtual node per user with 1 CPU; the round's "
        "wall time from the ServerApp; process start-up (Ray) not included: "
        + ", ".join(
            f"{r['users_per_round']} users {r['process_s'] - r['round_s']:.0f} s" for r in rounds
        ),
        f"local: {local['users']} users, median {local['median_steps']:.0f} steps, "
        f"DP-SGD at epsilon {cfg.epsilon} per round (target epsilon, the ledger's accountant); "
        f"per-user DP/plain ratio median {local['per_user_ratio_median']:.2f}x",
    ]
    return BenchReport(
        name="fl: round wall time and DP-SGD cost on the device",
        command=command,
        columns=["what", "seconds", "seconds per user", "target"],
        rows=rows,
        results={"rounds": rounds, "local": local},
        notes=notes,
    )
