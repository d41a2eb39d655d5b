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
