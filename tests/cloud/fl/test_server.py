"""The ServerApp's progress log is restored from the checkpoint after a restart."""

from __future__ import annotations

import json
from pathlib import Path

from userlayer.cloud.fl.server import sync_progress


def test_progress_log_follows_the_checkpoint(tmp_path: Path) -> None:
    rounds = [{"round": 1, "valid": 3}, {"round": 2, "valid": 2}]
    p = tmp_path / "progress.jsonl"
    # killed after round 2's checkpoint, before its line; round 1's line written twice
    line1 = json.dumps({"round": 1, "valid": 3, "wall_seconds": 4.0})
    p.write_text(f"{line1}\n{line1}\nnot json\n")
    sync_progress(tmp_path, rounds)
    got = [json.loads(x) for x in p.read_text().splitlines()]
    assert got == [json.loads(line1), rounds[1]]  # logged lines kept, the missing one restored
    before = p.read_text()
    sync_progress(tmp_path, rounds)
    assert p.read_text() == before
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    sync_progress(fresh, [])  # a new run: nothing to log yet
    assert not (fresh / "progress.jsonl").exists()


def test_the_round_server_keeps_the_apis_privacy_policy(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Defect (review): the federated server opened the registry without the API's policy,
    so a package without a DP record (or with seeded noise) was stored from a round."""
    import shutil

    from userlayer.cloud.fl.server import open_registry
    from userlayer.sdk.model import AdapterConfig

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    (tmp_path / "fl.json").write_text(json.dumps({"adapter": AdapterConfig().to_dict()}))
    reg = open_registry(tmp_path, create=True)
    assert reg.cfg.require_privacy
    reg.close()
