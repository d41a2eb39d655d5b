"""The Flower ServerApp: moves messages for :class:`~userlayer.cloud.fl.rounds.RoundServer`.

The server directory (``run_config["workdir"]`` or ``$USERLAYER_FL_WORKDIR``)
holds ``fl.json`` (the run's settings, written by ``userlayer fl``),
``model/`` and ``server/`` (the checkpoint). Personal packages go straight
into the adapter registry that serves them: ``fl.json``'s ``registry``
(``{"url": <SQLite file or postgresql:// DSN>, "kek_file": ...}``; default
``registry/registry.db`` here), whose enrolled signers are the only keys
trusted for each user. A restarted server resumes after its last complete
round. Each round's summary is appended to ``progress.jsonl`` as it finishes.

Sampling: the server asks every node once how many users it hosts (a
``query`` message; ``rounds.users_per_node`` in ``fl.json`` skips that where
every node hosts the same number, as in simulation), then selects nodes each
round so that every user takes part independently at rate
``users_per_round / population`` (:meth:`RoundServer.sample`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from userlayer.cloud.exceptions import CloudError
from userlayer.cloud.fl.aggregation import AggregationConfig
from userlayer.cloud.fl.rounds import Reply, RoundConfig, RoundServer
from userlayer.cloud.registry import AdapterRegistry, RegistryConfig
from userlayer.sdk.crypto import LocalKeyFile
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.transformer import adapter_shapes, new_adapter
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT

__all__ = ["app", "open_registry", "parse_reply", "round_server", "sync_progress"]

logger = logging.getLogger(__name__)


def open_registry(workdir: str | Path, create: bool = False) -> AdapterRegistry:
    """The adapter registry a federated directory writes to (see the module docstring)."""
    wd = Path(workdir)
    setup = json.loads((wd / "fl.json").read_text("utf-8"))
    model = load_model(wd / "model")
    shapes = adapter_shapes(model.cfg, AdapterConfig.from_dict(setup["adapter"]))
    fp = json.loads((wd / "model" / "config.json").read_text("utf-8"))["fingerprint"]
    where = setup.get("registry") or {}
    url = str(where.get("url") or wd / "registry" / "registry.db")
    kek = where.get("kek_file")
    keys = None if kek is None else LocalKeyFile(kek, create=create)
    if keys is None and not create and not Path(url).exists():
        raise CloudError(f"no adapter registry at {url}: prepare the directory first")
    # the same policy as the API's: packages need a DP record made with OS randomness
    cfg = RegistryConfig(require_privacy=bool(where.get("require_privacy", True)))
    return AdapterRegistry(url, fp, shapes, keys=keys, cfg=cfg)


def round_server(workdir: str | Path) -> tuple[RoundServer, dict[str, Any]]:
    """Build the round server of a prepared directory (resuming its checkpoint)."""
    wd = Path(workdir)
    setup = json.loads((wd / "fl.json").read_text("utf-8"))
    model = load_model(wd / "model")
    acfg = AdapterConfig.from_dict(setup["adapter"])
    rc = setup["rounds"]
    cfg = RoundConfig(
        rounds=int(rc["rounds"]),
        users_per_round=int(rc["users_per_round"]),
        min_replies=int(rc["min_replies"]),
        timeout=float(rc.get("timeout", 900)),
        seed=None if rc.get("test_seed") is None else int(rc["test_seed"]),
        accountant=str(setup.get("accountant", DEFAULT_ACCOUNTANT)),
        aggregation=AggregationConfig(**setup.get("aggregation", {})),
        client=setup.get("client", {}),
    )
    # the shared initialisation is public: seeded, it is no DP randomness
    init = new_adapter(model.cfg, acfg, torch.Generator().manual_seed(int(rc.get("init_seed", 0))))
    return RoundServer(cfg, init, open_registry(wd), wd / "server"), setup


def parse_reply(msg: Message, node: int) -> list[Reply]:
    """Split a node's reply into per-user :class:`Reply` objects (errors become drop-outs)."""
    if msg.has_error():
        return [Reply(node, error=f"{msg.error.code}: {msg.error.reason}")]
    configs, metric_recs = msg.content.config_records, msg.content.metric_records
    try:
        users: list[Any] = list(configs["users"]["users"])  # type: ignore[arg-type]
    except (KeyError, TypeError):
        return [Reply(node, error="reply without a user list")]
    out = []
    for j, user in enumerate(users):
        if f"error.{j}" in configs:
            out.append(Reply(node, str(user), error=str(configs[f"error.{j}"]["error"])))
            continue
        try:
            arrays = msg.content.array_records[f"arrays.{j}"].to_torch_state_dict()
            packages: dict[str, bytes] = {}
            for k, v in configs[f"packages.{j}"].items():
                if not isinstance(v, bytes):
                    raise TypeError(f"package {k!r} is not bytes")
                packages[str(k)] = v
            metrics = {str(k): float(v) for k, v in metric_recs[f"metrics.{j}"].items()}  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            out.append(Reply(node, str(user), error=f"malformed reply: {e}"))
            continue
        out.append(Reply(node, str(user), arrays, packages, metrics))
    return out


def _workdir(context: Context) -> Path:
    wd = context.run_config.get("workdir") or os.environ.get("USERLAYER_FL_WORKDIR")
    if not wd:
        raise CloudError("no server workdir: set run_config workdir or $USERLAYER_FL_WORKDIR")
    return Path(str(wd))


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n or time.monotonic() - t0 > timeout:
            return ids
        time.sleep(1.0)


def _hosted(
    grid: Grid, node_ids: list[int], setup: dict[str, Any], timeout: float
) -> dict[int, int]:
    """Users hosted per node: ``users_per_node`` from the setup, else asked of each node."""
    fixed = setup["rounds"].get("users_per_node")
    if fixed is not None:
        return dict.fromkeys(node_ids, int(fixed))
    msgs = [
        Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, group_id="hosted")
        for n in node_ids
    ]
    out: dict[int, int] = {}
    for m in grid.send_and_receive(msgs, timeout=timeout):
        if m.has_error():
            continue
        try:
            users = m.content.config_records["hosted"]["users"]
            out[int(m.metadata.src_node_id)] = max(1, int(users))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            logger.warning("node %s did not say how many users it hosts", m.metadata.src_node_id)
    return out


def sync_progress(wd: Path, rounds: list[dict[str, Any]]) -> None:
    """Make ``progress.jsonl`` list exactly the checkpointed rounds, once each.

    The log is appended after each checkpoint, so a server killed between the
    two lacks a line: it is restored from the checkpoint (which holds every
    round's summary) when the server starts again.
    """
    p = wd / "progress.jsonl"
    lines = p.read_text("utf-8").splitlines() if p.exists() else []
    logged: dict[int, str] = {}
    for x in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            logged.setdefault(int(json.loads(x)["round"]), x)
    want = [logged.get(int(r["round"])) or json.dumps(r) for r in rounds]
    if want != lines:
        tmp = p.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in want), "utf-8")
        os.replace(tmp, p)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds, resuming from the checkpoint."""
    wd = _workdir(context)
    server, setup = round_server(wd)
    try:
        _run(grid, wd, server, setup)
    finally:
        server.registry.close()


def _run(grid: Grid, wd: Path, server: RoundServer, setup: dict[str, Any]) -> None:
    sync_progress(wd, server.state.rounds)
    expected = int(setup["rounds"].get("min_nodes", server.cfg.min_replies))
    node_ids = _wait_for_nodes(grid, expected, float(setup["rounds"].get("wait_nodes_s", 120)))
    if len(node_ids) < server.cfg.min_replies:
        raise CloudError(f"only {len(node_ids)} nodes connected, fewer than min_replies")
    fp = server.fingerprint
    hosted = _hosted(grid, node_ids, setup, server.cfg.timeout)
    node_ids = [n for n in node_ids if n in hosted]  # a node that did not answer takes no part
    population = int(setup["rounds"].get("population", sum(hosted.values())))
    q = server.sample_rate(population)
    while not server.done:
        rnd = server.state.round + 1
        t0 = time.perf_counter()
        sampled = server.sample(node_ids, population, hosted)
        base = {**server.cfg.client, "round": rnd, "fingerprint": fp, "sample-rate": q}
        arrays = ArrayRecord(torch_state_dict=server.state.copy_shared())
        msgs = [  # each node is told how many users the server's sampling assumed it hosts
            Message(
                RecordDict(
                    {"arrays": arrays, "config": ConfigRecord({**base, "hosted": hosted[n]})}
                ),
                dst_node_id=n,
                message_type=MessageType.TRAIN,
                group_id=str(rnd),
            )
            for n in sampled
        ]
        replies: list[Reply] = []
        for m in grid.send_and_receive(msgs, timeout=server.cfg.timeout):
            replies.extend(parse_reply(m, int(m.metadata.src_node_id)))
        summary = server.process(rnd, len(sampled), replies, population)
        summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
        with (wd / "progress.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(summary) + "\n")
        logger.info("round %d: %s", rnd, summary)
