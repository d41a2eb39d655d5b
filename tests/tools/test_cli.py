"""The installed `userlayer` console script, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from userlayer.sdk import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.sids.features import codes_digest, load_item_embedding

EXE = shutil.which("userlayer", path=str(Path(sys.executable).parent))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert EXE, "the userlayer console script is not installed next to this python"
    return subprocess.run(
        [EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_synth_then_sids(tmp_path: Path) -> None:
    r = _cli(
        "data", "synth", "--users", "30", "--seed", "1", "--days", "60", "--out", "d", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "simulating users" in r.stdout
    ds = Dataset.load(tmp_path / "d")
    assert ds.n_users == 30
    r = _cli(
        "sids",
        "build",
        "--data",
        "d",
        "--embedding",
        "collaborative",
        "--codebook",
        "16",
        "--report",
        "rep.json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "separated before the collision level" in r.stdout
    table = SemanticIdTable.load(tmp_path / "d" / "sids.json")
    assert len(table) == ds.items.num_rows
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["n_items"] == len(table) and "unit-norm" not in rep["method"]
    assert len(rep["largest_prefix_group"]) == 3
    r = _cli(
        "sids", "build", "--data", "d", "--embedding", "collaborative", "--codebook", "16",
        "--normalize", "--out", "unit.json", "--report", "unit_rep.json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "most items on one prefix" in r.stdout
    assert "unit-norm" in json.loads((tmp_path / "unit_rep.json").read_text())["method"]
    assert len(SemanticIdTable.load(tmp_path / "unit.json")) == len(table)
    # the embedding belongs with DATA/sids.json, the table pretraining reads
    r = _cli("sids", "build", "--data", "d", "--out", "x.json", "--save-embedding", cwd=tmp_path)
    assert r.returncode != 0 and "leave out --out" in r.stdout + r.stderr
    assert not (tmp_path / "x.json").exists()
    r = _cli("sids", "build", "--data", "d", "--embedding", "collaborative", "--codebook", "16",
             "--normalize", "--save-embedding", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = SemanticIdTable.load(tmp_path / "d" / "sids.json")
    emb = load_item_embedding(
        tmp_path / "d" / "item_embedding.safetensors", list(table.codes), codes_digest(table.codes)
    )
    assert emb.shape[0] == len(table)
    r = _cli("sids", "build", "--data", "d", "--precomputed", "unit.json", "--save-embedding",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0 and "precomputed table has no embedding" in r.stdout + r.stderr
    r = _cli("data", "info", "d", cwd=tmp_path)
    assert r.returncode == 0
    assert "synthetic" in r.stdout


def test_russian_catalog_gets_russian_text_ids(tmp_path: Path) -> None:
    pytest.importorskip("navec", reason="navec comes with the sids-text extra")
    r = _cli("data", "synth", "--users", "10", "--language", "ru", "--out", "d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    title = Dataset.load(tmp_path / "d").items.column("title")[0].as_py()
    assert any("а" <= ch <= "я" for ch in title.lower()), title
    r = _cli("sids", "build", "--data", "d", "--embedding", "text", "--report", "r", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "navec" in json.loads((tmp_path / "r").read_text())["source"]
    r = _cli("data", "synth", "--users", "10", "--language", "de", "--out", "e", cwd=tmp_path)
    assert r.returncode == 2 and "`language` should be one of" in r.stderr


def test_load_and_errors(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("1 10 11\n2 11 12\n")
    r = _cli("data", "load", "s.txt", "--format", "sasrec", "--out", "d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Dataset.load(tmp_path / "d").events.num_rows == 4
    r = _cli("data", "load", "s.txt", "--format", "xml", "--out", "d2", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown format 'xml'" in r.stderr
    r = _cli("data", "info", "nowhere", cwd=tmp_path)
    assert r.returncode == 2
    assert "not a dataset directory" in r.stderr
    r = _cli("eval", "--data", "d", "--sasrec-val-users", "0", cwd=tmp_path)
    assert r.returncode == 2
    assert "val_users" in r.stderr
    r = _cli("eval", "--data", "d", "--sasrec-lr", "0", cwd=tmp_path)
    assert r.returncode == 2
    assert "lr positive" in r.stderr
    r = _cli("eval", "--data", "d", "--sasrec-seed", "-1", cwd=tmp_path)
    assert r.returncode == 2
    assert "seed should be >= 0, got -1" in r.stderr
    r = _cli("pretrain", "--data", "d", "--out", "m", "--select", "recall", cwd=tmp_path)
    assert r.returncode == 2
    assert "`select` should be one of" in r.stderr and "'recall'" in r.stderr
    assert not (tmp_path / "m").exists()  # refused before anything is written


@pytest.mark.slow
def test_beauty_precomputed(tmp_path: Path, beauty_dir: Path) -> None:
    r = _cli(
        "data",
        "load",
        str(beauty_dir / "inter.json"),
        "--format",
        "json",
        "--out",
        "b",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    r = _cli(
        "sids",
        "build",
        "--data",
        "b",
        "--precomputed",
        str(beauty_dir / "semantic_ids_rqvae.json"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert len(SemanticIdTable.load(tmp_path / "b" / "sids.json")) == 12101


def test_progress_reports_to_a_log_when_not_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect (issue 23): a command's progress showed nothing in a log until it ended."""
    import io

    from rich.console import Console

    from userlayer.tools.progress import LoggedProgress, progress_bar

    monkeypatch.setattr(LoggedProgress, "log_every", 0.0)
    buf = io.StringIO()
    with progress_bar(Console(file=buf, force_terminal=False, width=100)) as progress:
        task = progress.add_task("stage one", total=4)
        for _ in range(4):
            progress.advance(task)
        progress.update(task, description="stage two", completed=1, total=3)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("stage")]
    assert lines[0].startswith("stage one: 1/4") and "left" in " ".join(lines[:3])
    assert sum(ln.startswith("stage one: 4/4") for ln in lines) == 1  # the end, once
    assert any(ln.startswith("stage two: 1/3") for ln in lines)  # a task reused for a stage
