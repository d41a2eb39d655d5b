"""``userlayer fl simulate``: federated rounds on Flower's simulation engine.

Prepares a work directory that is at once the server's and every virtual
node's (see :mod:`userlayer.edge.flower` and :mod:`userlayer.cloud.fl.server`):
the base model, the users' events written into one encrypted profile store
(each virtual node reads only its own user), the categories of the public
catalog and a mode-detector prior; then runs the ServerApp and the ClientApp
with one virtual node per user (1 CPU each, Ray), and finally measures each
participating user's held-out next item with their registered adapter
against the base alone (private prompts).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userlayer.cloud.fl.aggregation import AggregationConfig
from userlayer.edge.profile import ModeDetector, sessionize
from userlayer.edge.store import ProfileStore
from userlayer.sdk.model.config import AdapterConfig
from userlayer.tools.data.format import Dataset
from userlayer.tools.exceptions import ToolsError

__all__ = [
    "SimulationConfig",
    "evaluate_registry",
    "plot_rounds",
    "prepare_workdir",
    "simulate",
    "user_epsilons",
]


@dataclass(frozen=True)
class SimulationConfig:
    """A simulated federated run."""

    rounds: int = 5
    users_per_round: int = 50
    population: int | None = None  # users taking part (default: all with enough events)
    min_replies: int = 2
    min_events: int = 10
    seed: int = 0
    dropout: float = 0.0
    epsilon_per_round: float = 1.5
    epochs: float = 8.0
    lr: float = 5e-3
    budget: float = 8.0
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    cpus: int = 2
    timeout_s: float = 3600.0  # the whole run, rounds and start-up

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ToolsError(f"`dropout` should be in [0, 1), got {self.dropout}")


def prepare_workdir(
    data_dir: str | Path, model_dir: str | Path, workdir: str | Path, cfg: SimulationConfig
) -> list[str]:
    """Write the work directory (see the module docstring); returns the users (node order)."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    ds = Dataset.load(data_dir)
    by_user = ds.user_events()
    users = sorted(u for u, ev in by_user.items() if len(ev) >= cfg.min_events)
    if cfg.population is not None:
        rng = np.random.default_rng(cfg.seed)
        users = sorted(users[i] for i in rng.permutation(len(users))[: cfg.population])
    if len(users) < cfg.min_replies:
        raise ToolsError(f"only {len(users)} users with {cfg.min_events}+ events")
    if not (wd / "model").exists():
        shutil.copytree(model_dir, wd / "model")
    if not (wd / "store.db").exists():
        with ProfileStore(wd / "store.db") as store:
            for u in users:
                store.append(by_user[u])
    cats = ds.categories()
    (wd / "categories.json").write_text(json.dumps({k: list(v) for k, v in cats.items()}))
    det = ModeDetector()  # a population prior from users who are not in the run
    for u in sorted(set(by_user) - set(users))[:1000] or users[:200]:
        det.update(sessionize(by_user[u]), cats)
    (wd / "mode_detector.json").write_text(det.to_json())
    (wd / "nodes.json").write_text(json.dumps({str(i): u for i, u in enumerate(users)}))
    # the simulation's clock: the end of the data (a public setting of the run, the same for
    # every user), against which nodes weigh events by age and cut the data horizon
    clock = max(e.timestamp for u in users for e in by_user[u])
    setup = {
        "adapter": cfg.adapter.to_dict(),
        "budget": cfg.budget,
        "delta": 1e-5,
        "rounds": {
            "rounds": cfg.rounds,
            "users_per_round": min(cfg.users_per_round, len(users)),
            "min_replies": cfg.min_replies,
            "min_nodes": len(users),
            "population": len(users),
            "users_per_node": 1,
        },
        "aggregation": asdict(cfg.aggregation),
        "client": {
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "epsilon-per-round": cfg.epsilon_per_round,
            "dropout": cfg.dropout,
            "dropout-seed": cfg.seed,
            "clock": clock.isoformat(),
        },
    }
    (wd / "fl.json").write_text(json.dumps(setup, indent=1))
    _enroll(wd, users, by_user)
    return users


def _enroll(wd: Path, users: list[str], by_user: dict[str, list[Any]]) -> None:
    """Enroll each user's signing key in the registry for each service they use."""
    from userlayer.cloud.fl.server import open_registry

    reg = open_registry(wd, create=True)
    try:
        with ProfileStore(wd / "store.db") as store:
            items = []
            for u in users:
                key = store.signing_key(u)
                assert key is not None
                for svc in sorted({e.service.value for e in by_user[u]}):
                    items.append((svc, u, key.public_key()))
        reg.enroll_many(items)
    finally:
        reg.close()


def _read_progress(wd: Path) -> list[dict[str, Any]]:
    p = wd / "progress.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text("utf-8").splitlines() if x.strip()]


def simulate(
    data_dir: str | Path,
    model_dir: str | Path,
    workdir: str | Path,
    cfg: SimulationConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Prepare, run the rounds on the simulation engine, and summarise.

    Raises:
        ToolsError: if the ServerApp did not finish every round.
    """
    from userlayer.tools import logs
    from userlayer.tools.fl_deploy import LocalFederation, write_app

    wd = Path(workdir).resolve()
    users = prepare_workdir(data_dir, model_dir, wd, cfg)
    seen = len(_read_progress(wd))
    done = threading.Event()

    def watch() -> None:
        nonlocal seen
        while not done.is_set():
            rows = _read_progress(wd)
            for r in rows[seen:]:
                if on_round:
                    on_round(r)
            seen = len(rows)
            time.sleep(0.5)

    t0 = time.perf_counter()
    app_dir = write_app(wd / "app")
    # Flower's Simulation Runtime behind a SuperLink of our own (as `flwr run` uses it):
    # one virtual SuperNode per user, 1 CPU each, on Ray; workers' output only with -v
    federation = {
        "num-supernodes": len(users),
        "client-resources-num-cpus": 1,
        "init-args-num-cpus": cfg.cpus,
        "init-args-log-to-driver": logs.verbose(),
        "init-args-logging-level": "INFO" if logs.verbose() else "ERROR",
    }
    fed = LocalFederation(wd / "flower", [], simulation=True, env={"USERLAYER_FL_WORKDIR": str(wd)})
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        with fed:  # a failed or unfinished run raises, naming the SuperLink's log
            fed.wait(fed.run(app_dir, {"workdir": str(wd)}, federation), cfg.timeout_s)
    finally:
        done.set()
        th.join()
    rows = _read_progress(wd)
    for r in rows[seen:]:
        if on_round:
            on_round(r)
    state = (
        json.loads((wd / "server" / "state.json").read_text())
        if (wd / "server" / "state.json").exists()
        else {"round": 0}
    )
    if state["round"] < cfg.rounds:
        raise ToolsError(
            f"the ServerApp stopped after round {state['round']} of {cfg.rounds}; "
            f"see {fed.home / 'superlink.log'}"
        )
    return {
        "users": len(users),
        "rounds": state["rounds"],
        "seconds": round(time.perf_counter() - t0, 1),
        "workdir": str(wd),
    }


def plot_rounds(rounds: list[dict[str, Any]], out: str | Path) -> Path:
    """PNG of replies, epsilon (shared part and per-user median) and wall time per round.

    Nodes send no training loss (a function of the user's data); the first panel shows
    the valid replies beside the users sampled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot(x, [r.get("sampled", 0) for r in rounds], marker="o", label="sampled")
    ax[0].plot(x, [r.get("valid", 0) for r in rounds], marker="s", label="valid replies")
    ax[0].set_title("users per round")
    ax[0].legend()
    ax[1].plot(
        x,
        [r.get("epsilon") or float("nan") for r in rounds],
        marker="o",
        label="shared (user-level)",
    )
    ax[1].plot(
        x,
        [r.get("epsilon_user_median", float("nan")) for r in rounds],
        marker="s",
        label="per user (median)",
    )
    ax[1].set_title("epsilon (delta 1e-5)")
    ax[1].legend()
    ax[2].bar(x, [r.get("wall_seconds", 0) for r in rounds])
    ax[2].set_title("round wall time (s)")
    for a in ax:
        a.set_xlabel("round")
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    p = Path(out)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def user_epsilons(workdir: str | Path, users: list[str]) -> dict[str, float]:
    """Each user's epsilon per event, from the node ledger, at the simulation's clock."""
    from datetime import datetime

    from userlayer.edge.privacy import PrivacyLedger

    wd = Path(workdir)
    setup = json.loads((wd / "fl.json").read_text("utf-8"))
    clock = setup.get("client", {}).get("clock")
    now = datetime.fromisoformat(clock) if clock else None
    with ProfileStore(wd / "store.db") as store:
        key = store.ledger_key()
    ledger = PrivacyLedger(wd / "ledger.db", key, delta=float(setup.get("delta", 1e-5)))
    try:
        return {u: ledger.spent(u, now) for u in users}
    finally:
        ledger.close()


def evaluate_registry(data_dir: str | Path, workdir: str | Path, beam: int = 20) -> dict[str, Any]:
    """Held-out next item of every user with a registered adapter: base alone vs with it.

    Each user's newest adapter (for the service of the held-out event) is read
    from the registry the rounds wrote into (decrypted and verified again),
    gathered into one slab, and the private prompts are ranked with and
    without it; the same users' full-history prompts (the last 20 events, not
    private) by the base alone are the reference.
    """
    from userlayer.cloud.fl.server import open_registry
    from userlayer.edge.examples import encode_prompt
    from userlayer.edge.profile import build_profile
    from userlayer.sdk.model.io import load_model
    from userlayer.sdk.model.prompt import pack_prompts
    from userlayer.sdk.model.transformer import RowAdapters
    from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie
    from userlayer.tools.eval.adapters import (
        private_prompt,
        rank_with_adapters,
    )

    wd = Path(workdir)
    model = load_model(wd / "model")
    table = SemanticIdTable.load(wd / "model" / "sids.json")
    setup = json.loads((wd / "fl.json").read_text("utf-8"))
    acfg = AdapterConfig.from_dict(setup["adapter"])
    det = ModeDetector.from_json((wd / "mode_detector.json").read_text("utf-8"))
    ds = Dataset.load(data_dir)
    cats = ds.categories()
    users = json.loads((wd / "nodes.json").read_text("utf-8")).values()
    by_user = ds.user_events(list(users))
    held, slabs, full = [], [], []
    reg = open_registry(wd)
    try:
        for u in sorted(by_user):
            evs = [e for e in build_profile(by_user[u]).events if e.item_id in table.codes]
            if len(evs) < 3:
                continue
            h = private_prompt(evs, table, model.ctx_vocab, det, cats)
            loaded = reg.get(h.service, u)
            if loaded is None:
                continue
            held.append(h)
            full.append(encode_prompt(evs[-21:-1], evs[-1], table, model.ctx_vocab))
            slabs.append({k: torch.from_numpy(v.copy()) for k, v in loaded.tensors.items()})
    finally:
        reg.close()
    if not held:
        raise ToolsError("no user has a registered adapter yet")
    tok, ctx = pack_prompts([(h.tokens, h.ctx) for h in held], len(model.ctx_vocab.sizes))
    services, targets = [h.service for h in held], [h.target for h in held]
    modes = torch.tensor([h.mode_weights for h in held], dtype=torch.float32)
    slab = {k: torch.stack([s[k] for s in slabs]) for k in slabs[0]}
    rows = RowAdapters.gather(acfg, slab, torch.arange(len(held)), modes)
    trie = SidTrie(table)
    ftok, fctx = pack_prompts(full, len(model.ctx_vocab.sizes))
    return {
        "users": len(held),
        "base only": rank_with_adapters(model, trie, tok, ctx, services, targets, None, beam),
        "with adapter": rank_with_adapters(model, trie, tok, ctx, services, targets, rows, beam),
        "full history": rank_with_adapters(model, trie, ftok, fctx, services, targets, None, beam),
    }
