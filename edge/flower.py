"""The Flower ClientApp: a node trains its users' adapters where their profiles live.

A node is a directory (``workdir``) prepared by its operator:

    model/            the base model directory (weights, config, sids.json)
    fl.json           {"adapter": AdapterConfig, "budget": 8.0, "delta": 1e-5}
    store.db(.keks)   the encrypted profile store (:class:`ProfileStore`)
    ledger.db         the users' privacy ledgers
    nodes.json        simulation only: partition id -> user id
    mode_detector.json  optional population prior for mode detection

Which users a node hosts: ``node_config["users"]`` (comma separated; a
service backend hosting many users), else ``nodes.json[partition-id]`` (one
virtual node per user in simulation). The workdir comes from
``node_config["workdir"]`` or ``$USERLAYER_FL_WORKDIR``. A ``query`` message
answers how many users the node hosts (the server needs it to sample users
independently), never who they are.

Per round: the server selected this node with probability
``1 - (1 - q)^m``; the node draws which of its ``m`` users take part from
i.i.d. Bernoulli(q) given at least one (:mod:`userlayer.sdk.privacy.sampling`,
OS randomness), so every user is sampled independently at rate ``q``
(``sample-rate`` in the round config). Per sampled user: decrypt the user's
events in memory, build the examples (within the user's cross-service
consent), train the personal adapter from the shared one with DP-SGD (the
per-user budget is reserved first; noise and sampling from the OS CSPRNG),
and reply with the updated shared-part tensors (``arrays.<j>``), one sealed
package per service the user has events in (``packages.<j>``, signed by the
user's key) and metrics (``metrics.<j>``). The training clock is the wall
clock, or the simulation's ``clock`` from the round config.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from userlayer.edge.consent import SETTING, Consent
from userlayer.edge.exceptions import BudgetExceededError, EdgeError, TrainingError
from userlayer.edge.local import ALL_SERVICES, LocalTrainConfig, train_and_seal
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.profile import ModeDetector
from userlayer.edge.store import ProfileStore
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, SecureRandom, sample_given_selected
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["NodeRuntime", "UserUpdate", "app", "hosted_users"]

logger = logging.getLogger(__name__)


@dataclass
class UserUpdate:
    """What one user's training produced on this node."""

    user: str
    adapter: dict[str, torch.Tensor] | None
    packages: dict[str, bytes]
    metrics: dict[str, float]
    error: str | None = None


class NodeRuntime:
    """A node's resources, opened once per process."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir)
        try:
            setup = json.loads((self.workdir / "fl.json").read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise EdgeError(f"{self.workdir}: not a prepared node directory ({e})") from e
        torch.set_flush_denormal(True)
        torch.set_num_threads(1)
        self.model: Recommender = load_model(self.workdir / "model")
        self.table = SemanticIdTable.load(self.workdir / "model" / "sids.json")
        self.acfg = AdapterConfig.from_dict(setup["adapter"])
        self.store = ProfileStore(self.workdir / "store.db")
        self.ledger = PrivacyLedger(
            self.workdir / "ledger.db",
            self.store.ledger_key,
            budget=float(setup.get("budget", 8.0)),
            delta=float(setup.get("delta", 1e-5)),
            accountant=str(setup.get("accountant", DEFAULT_ACCOUNTANT)),
        )
        det = self.workdir / "mode_detector.json"
        self.detector = ModeDetector.from_json(det.read_text("utf-8")) if det.exists() else None
        cats = self.workdir / "categories.json"
        self.categories: dict[str, list[str]] | None = (
            json.loads(cats.read_text("utf-8")) if cats.exists() else None
        )
        # the services the node's users are customers of (packaged whatever their events)
        svcs = setup.get("services")
        self.services = tuple(svcs) if svcs else ALL_SERVICES

    def users_for(self, context: Context) -> list[str]:
        """The users this node hosts (see the module docstring)."""
        return hosted_users(self.workdir, context)

    def signing_key(self, user: str) -> Ed25519PrivateKey:
        """The user's signing key (made on first use, kept encrypted in the store)."""
        key = self.store.signing_key(user)
        assert key is not None
        return key

    def train_user(
        self, user: str, shared: dict[str, torch.Tensor], cfg: dict[str, Any], rnd: int
    ) -> UserUpdate:
        """Train one user's personal adapter from the shared one (DP-SGD) and seal it."""
        events = self.store.events(user)  # decrypted in memory only
        clock = cfg.get("clock")
        try:
            lcfg = LocalTrainConfig(
                epochs=float(cfg.get("epochs", 8.0)),
                lr=float(cfg.get("lr", 5e-3)),
                batch_size=int(cfg.get("batch-size", 16)),
                epsilon=float(cfg.get("epsilon-per-round", 2.0)),
                holdout=int(cfg.get("holdout", 1)),
                prompt=str(cfg.get("prompt", "event")),
                way=str(cfg.get("way", "dp-sgd")),
            )
            now = datetime.fromisoformat(str(clock)) if clock else datetime.now(UTC)
            if now.tzinfo is None:  # else comparing with events fails only for some users
                raise ValueError(f"the round's clock {clock!r} has no timezone")
            consent = Consent.from_dict(self.store.setting(user, SETTING))
        except (EdgeError, ValueError) as e:
            return UserUpdate(user, None, {}, {}, f"bad round config: {e}")
        try:
            res = train_and_seal(
                self.model,
                self.table,
                self.acfg,
                events,
                shared,
                lcfg,
                self.ledger,
                user,
                rnd,
                str(cfg["fingerprint"]),
                self.signing_key(user),
                self.detector,
                self.categories,
                now,
                consent,
                self.services,
            )
        except BudgetExceededError as e:
            return UserUpdate(user, None, {}, {}, f"over budget: {e}")
        except TrainingError as e:
            return UserUpdate(user, None, {}, {}, f"not trained: {e}")
        logger.debug("user trained: %s", {k: round(v, 3) for k, v in res.local.items()})
        return UserUpdate(user, res.adapter, res.packages, res.metrics)


def hosted_users(workdir: Path, context: Context) -> list[str]:
    """The users a node hosts: ``node_config["users"]``, else ``nodes.json[partition-id]``."""
    cfg = context.node_config
    if "users" in cfg:
        return [u for u in str(cfg["users"]).split(",") if u]
    nodes = json.loads((workdir / "nodes.json").read_text("utf-8"))
    return [nodes[str(cfg["partition-id"])]]


@lru_cache(maxsize=4)
def _runtime(workdir: str) -> NodeRuntime:
    return NodeRuntime(workdir)


def _workdir(context: Context) -> str:
    wd = context.node_config.get("workdir") or os.environ.get("USERLAYER_FL_WORKDIR")
    if not wd:
        raise EdgeError("no node workdir: set node_config workdir or $USERLAYER_FL_WORKDIR")
    return str(wd)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this node's users for one round (see the module docstring)."""
    cfg: dict[str, Any] = dict(msg.content.config_records["config"])
    rnd = int(cfg["round"])
    drop = float(cfg.get("dropout", 0.0))
    if drop > 0:  # simulated drop-out (tests of the server's tolerance), seeded per node/round
        rng = random.Random(f"{context.node_id}:{rnd}:{cfg.get('dropout-seed', 0)}")
        if rng.random() < drop:
            raise RuntimeError("simulated drop-out")
    rt = _runtime(_workdir(context))
    arrays = msg.content.array_records["arrays"]
    shared = {k: v.float() for k, v in arrays.to_torch_state_dict().items()}
    users = rt.users_for(context)
    if "hosted" in cfg and int(cfg["hosted"]) != len(users):
        # the server selected this node for a count it does not have: the users' sampling
        # rate would not be the one accounted for, so nobody takes part
        raise EdgeError(f"this node hosts {len(users)} users, the server assumed {cfg['hosted']}")
    if "sample-rate" in cfg:  # this node was selected: which of its users take part
        take = sample_given_selected(len(users), float(cfg["sample-rate"]), SecureRandom())
        users = [u for u, t in zip(users, take, strict=True) if t]
    content = RecordDict()
    content["users"] = ConfigRecord({"users": users})
    for j, user in enumerate(users):
        up = rt.train_user(user, shared, cfg, rnd)
        if up.error is not None:
            content[f"error.{j}"] = ConfigRecord({"error": up.error})
            continue
        assert up.adapter is not None
        content[f"arrays.{j}"] = ArrayRecord(torch_state_dict=up.adapter)
        content[f"packages.{j}"] = ConfigRecord(dict(up.packages))
        content[f"metrics.{j}"] = MetricRecord(dict[str, Any](up.metrics))
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """How many users this node hosts (for the server's sampling); never who they are."""
    hosted = len(hosted_users(Path(_workdir(context)), context))
    return Message(content=RecordDict({"hosted": ConfigRecord({"users": hosted})}), reply_to=msg)
