"""``userlayer bench store`` in smoke size: it measures both stores and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from tests.pg import PgServer
from userlayer.tools.cli import app


def test_bench_store_smoke(tmp_path: Path) -> None:
    md, js = tmp_path / "bench.md", tmp_path / "store.json"
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "store",
            "--events",
            "600",
            "--users",
            "7",
            "--batch",
            "100",
            "--repeats",
            "1",
            "--json",
            str(js),
            "--markdown",
            str(md),
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())
    for name in ("encrypted", "plain"):
        assert res["results"][name]["append_events_per_s"] > 0
        assert res["results"][name]["read_events_per_s"] > 0
        assert res["results"][name]["bytes_per_event"] > 0
    # the encrypted rows carry nonce, tag, record id and a pseudonym: they are bigger
    assert (
        res["results"]["encrypted"]["bytes_per_event"] > res["results"]["plain"]["bytes_per_event"]
    )
    text = md.read_text()
    assert text.startswith("# Benchmarks") and "userlayer bench store --events 600" in text
    assert "| encrypted |" in text and "commit" in text


def test_bench_store_on_postgresql(tmp_path: Path, postgres: PgServer) -> None:
    js = tmp_path / "store.json"
    args = ["bench", "store", "--events", "300", "--users", "5", "--batch", "50"]
    args += ["--repeats", "1", "--url", postgres.dsn, "--json", str(js), "--markdown", ""]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(js.read_text())["results"]
    for name in ("encrypted postgresql", "plain postgresql"):
        assert res[name]["append_events_per_s"] > 0 and res[name]["bytes_per_event"] > 0
    assert res["encrypted postgresql"]["forget_one_user_s"] > 0
    assert postgres.dsn not in r.output  # the command line it prints hides the URL
    with psycopg.connect(postgres.dsn) as con:  # every bench schema dropped
        left = con.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'bench_%'")
        assert left.fetchone() == (0,)


def test_bench_store_refuses_a_url_that_is_not_postgresql() -> None:
    r = CliRunner().invoke(app, ["bench", "store", "--url", "mysql://x/y", "--markdown", ""])
    assert r.exit_code == 2 and "postgresql://" in r.output
