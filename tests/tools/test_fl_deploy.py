"""The rounds on Flower's Deployment Engine: real SuperLink and SuperNode processes.

One SuperLink and two SuperNodes on 127.0.0.1 (insecure transport), each
node a service backend holding two users' encrypted profiles. ``flwr run``
submits two rounds; the test reads the run's final status from the
SuperLink (``flwr run`` exits 0 even when the ServerApp fails: a run whose
ServerApp fails must be reported as failed), then checks the registry and
that every process it started is gone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from userlayer.cloud.fl.server import open_registry
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.fl import SimulationConfig, prepare_workdir
from userlayer.tools.fl_deploy import LocalFederation, NodeSpec, write_app
from userlayer.tools.procs import group_members


def test_two_rounds_on_superlink_and_two_supernodes(
    tmp_path: Path, synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    wd = tmp_path / "wd"
    # every user every round (rate 1), so that both nodes are always selected
    cfg = SimulationConfig(rounds=2, users_per_round=4, population=4, epochs=2.0, min_replies=1)
    users = prepare_workdir(synth_data_dir, tiny_model_dir, wd, cfg)
    setup = json.loads((wd / "fl.json").read_text())
    setup["rounds"]["min_nodes"] = 2  # two SuperNodes, each hosting two users
    del setup["rounds"]["users_per_node"]  # the server asks each node how many it hosts
    setup["rounds"]["wait_nodes_s"] = 60
    (wd / "fl.json").write_text(json.dumps(setup))
    app_dir = write_app(tmp_path / "app")
    nodes = [NodeSpec(wd, tuple(users[:2])), NodeSpec(wd, tuple(users[2:]))]
    with LocalFederation(tmp_path / "fed", nodes) as fed:
        pids = [p.pid for p in fed.procs]
        assert len(pids) == 3
        # a ServerApp that fails (no such work directory) is reported as failed
        bad = fed.run(app_dir, {"workdir": str(tmp_path / "missing")})
        with pytest.raises(ToolsError, match="finished:failed"):
            fed.wait(bad, timeout=120)
        run_id = fed.run(app_dir, {"workdir": str(wd)})
        st = fed.wait(run_id, timeout=300)
        assert st["status"] == "finished:completed"
    assert not any(group_members(pid) for pid in pids)  # no live process left
    rounds = [json.loads(x) for x in (wd / "progress.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        # both nodes sampled; each replies for both of its users
        assert r["sampled"] == 2 and r["valid"] + r["rejected"] + r["dropped"] >= 2
        assert r["valid"] >= 2 and r["rejected"] == 0
    assert json.loads((wd / "server" / "state.json").read_text())["round"] == 2
    reg = open_registry(wd)
    stored = {u for svc in ("samokat", "megamarket", "kuper") for u in reg.users(svc)}
    reg.close()
    assert stored and stored <= set(users)


def test_node_spec_refuses_bad_users(tmp_path: Path) -> None:
    with pytest.raises(ToolsError, match="at least one user"):
        NodeSpec(tmp_path, ())
    with pytest.raises(ToolsError, match="without"):
        NodeSpec(tmp_path, ("a,b",))
    assert "users='a,b'" in NodeSpec(tmp_path, ("a", "b")).node_config()


def test_the_project_is_the_same_flower_app_as_the_one_written() -> None:
    """`flwr run .` in a clone and `userlayer fl simulate` name the same apps and config."""
    import tomllib

    from flwr.cli.config_utils import load_and_validate

    from userlayer.tools.fl_deploy import APP_PYPROJECT

    root = Path(__file__).resolve().parents[2]
    conf, warnings = load_and_validate(root / "pyproject.toml")  # Flower's own check
    assert conf is not None and not warnings
    written = tomllib.loads(APP_PYPROJECT)["tool"]["flwr"]["app"]
    assert conf["tool"]["flwr"]["app"] == written


def test_federation_config_is_written_as_toml_values() -> None:
    from userlayer.tools.fl_deploy import _toml_args

    args = {"num-supernodes": 24, "init-args-log-to-driver": False, "backend": "ray"}
    assert _toml_args(args) == 'num-supernodes=24 init-args-log-to-driver=false backend="ray"'
