"""``userlayer bench``: every benchmark writes JSON and appends a table to docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from userlayer.tools.bench.report import BenchReport, append_markdown
from userlayer.tools.progress import steps

__all__ = ["bench_app"]

console = Console()
bench_app = typer.Typer(
    help="Benchmarks (results to JSON and docs/benchmarks.md).", no_args_is_help=True
)

JsonOut = Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")]
Markdown = Annotated[
    Path | None, typer.Option(help='Append the table to this markdown file ("" for none).')
]
ModelDir = Annotated[Path, typer.Option(help="Base model directory (exported to ONNX if needed).")]
DOCS = Path("docs/benchmarks.md")


def _emit(rep: BenchReport, json_out: Path | None, markdown: Path | None) -> None:
    if json_out:
        json_out.write_text(rep.to_json(), "utf-8")
    if markdown and str(markdown) not in ("", "."):  # --markdown "" writes no table
        append_markdown(rep, markdown)
    console.print(rep.markdown())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


@bench_app.command("store")
def bench_store_cmd(
    events: Annotated[int, typer.Option(help="Events to write and read back.")] = 100_000,
    users: Annotated[int, typer.Option()] = 1_000,
    batch: Annotated[int, typer.Option(help="Events per append.")] = 1_000,
    repeats: Annotated[int, typer.Option()] = 3,
    url: Annotated[
        str | None,
        typer.Option(help="A postgresql:// database: the same rows again on PostgreSQL."),
    ] = None,
    json_out: JsonOut = None,
    markdown: Markdown = DOCS,
) -> None:
    """Edge store: append and read-back events/s and bytes per event, beside plain SQLite."""
    from userlayer.tools.bench.store import StoreBenchConfig, bench_store

    cmd = f"userlayer bench store --events {events} --users {users} --batch {batch}"
    if url:
        cmd += " --url postgresql://..."
    try:
        cfg = StoreBenchConfig(events, users, batch, repeats, url)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    with steps(console, "store benchmark", cfg.repeats) as step:
        rep = bench_store(cfg, cmd, step)
    _emit(rep, json_out, markdown)


@bench_app.command("serving")
def bench_serving_cmd(
    model: ModelDir,
    batches: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "1,8,32,64",
    backends: Annotated[str, typer.Option(help="Comma list.")] = "onnxruntime,torch",
    users: Annotated[int, typer.Option(help="Registered adapters rows are drawn from.")] = 10_000,
    repeats: Annotated[int, typer.Option()] = 7,
    threads: Annotated[int | None, typer.Option()] = None,
    naive: Annotated[bool, typer.Option(help="Also time the peft per-request swap.")] = True,
    rankings: Annotated[
        str,
        typer.Option(
            help="Comma list of rankings timed side by side: auto, beam, dense, beam+dense, "
            "fused (the last three need a base with a dense item head)."
        ),
    ] = "auto",
    json_out: JsonOut = None,
    markdown: Markdown = DOCS,
) -> None:
    """Engine rows/s: per-user adapters vs the base alone vs peft swapped per request."""
    from userlayer.tools.bench.serving import ServingBenchConfig, bench_serving

    try:
        cfg = ServingBenchConfig(
            batches=_ints(batches),
            backends=tuple(backends.split(",")),
            users=users,
            repeats=repeats,
            threads=threads,
            naive=naive,
            rankings=tuple(r for r in rankings.split(",") if r),
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    cmd = (
        f"userlayer bench serving --model {model} --batches {batches} --backends {backends} "
        f"--users {users} --repeats {repeats}"
        + ("" if rankings == "auto" else f" --rankings {rankings}")
        + ("" if naive else " --no-naive")
    )
    from userlayer.tools.bench.serving import serving_steps

    with steps(console, "serving benchmark", serving_steps(cfg)) as step:
        rep = bench_serving(model, cfg, cmd, step)
    _emit(rep, json_out, markdown)


@bench_app.command("adapters")
def bench_adapters_cmd(
    model: ModelDir,
    users: Annotated[int, typer.Option(help="Users registered with the model's adapter.")] = 2_000,
    samples: Annotated[int, typer.Option(help="Cold loads and uploads timed.")] = 500,
    cache: Annotated[int, typer.Option(help="Adapters held in RAM for the memory figure.")] = 1_000,
    lookup_users: Annotated[str, typer.Option(help="Registry sizes for lookups.")] = (
        "100000,1000000"
    ),
    backend: Annotated[str, typer.Option()] = "torch",
    json_out: JsonOut = None,
    markdown: Markdown = DOCS,
) -> None:
    """Cold load into a slot, upload-to-served, memory per cached adapter, lookups at scale."""
    from userlayer.tools.bench.adapters import AdaptersBenchConfig, bench_adapters

    cfg = AdaptersBenchConfig(
        users=users,
        samples=samples,
        cache=cache,
        lookup_users=_ints(lookup_users),
        backend=backend,
    )
    cmd = (
        f"userlayer bench adapters --model {model} --users {users} --samples {samples} "
        f"--cache {cache} --lookup-users {lookup_users} --backend {backend}"
    )
    from userlayer.tools.bench.adapters import ADAPTERS_STEPS

    with steps(console, "adapter benchmark", ADAPTERS_STEPS) as step:
        rep = bench_adapters(model, cfg, cmd, step)
    _emit(rep, json_out, markdown)


@bench_app.command("api")
def bench_api_cmd(
    model: ModelDir,
    concurrency: Annotated[str, typer.Option(help="Comma list of client counts.")] = "1,32,64,256",
    setups: Annotated[
        str, typer.Option(help="Comma list of inline | process:N (N API workers).")
    ] = "inline,process:1,process:2",
    requests: Annotated[int, typer.Option(help="Requests per level (>= 10 per client).")] = 2_000,
    users: Annotated[int, typer.Option(help="Users registered with adapters.")] = 2_000,
    backend: Annotated[str, typer.Option()] = "onnxruntime",
    json_out: JsonOut = None,
    markdown: Markdown = DOCS,
) -> None:
    """HTTP requests/s and latency percentiles at several concurrencies, and past capacity."""
    from userlayer.tools.bench.api import ApiBenchConfig, bench_api

    cfg = ApiBenchConfig(
        concurrency=_ints(concurrency),
        setups=tuple(s for s in setups.split(",") if s),
        requests=requests,
        users=users,
        backend=backend,
    )
    cmd = (
        f"userlayer bench api --model {model} --concurrency {concurrency} --setups {setups} "
        f"--requests {requests} --users {users} --backend {backend}"
    )
    from userlayer.tools.bench.api import api_steps

    with steps(console, "API benchmark", api_steps(cfg)) as step:
        rep = bench_api(model, cfg, cmd, step)
    _emit(rep, json_out, markdown)


@bench_app.command("gpu")
def bench_gpu_cmd(
    model: ModelDir,
    out: Annotated[Path, typer.Option(help="The JSON, rewritten after each part.")] = Path(
        "gpu_check.json"
    ),
    parts: Annotated[str, typer.Option(help="Comma list.")] = "environment,parity,serving,api",
    budget_s: Annotated[float, typer.Option(help="Parts past this many seconds are skipped.")] = (
        420.0
    ),
    stand_in: Annotated[
        bool, typer.Option(help="No GPU: run the parts on the CPU engine (a rehearsal).")
    ] = False,
    markdown: Markdown = None,
) -> None:
    """Every GPU check (CUDA parity, serving and API benches) in one budgeted run."""
    from userlayer.tools.bench.gpu import GpuCheckConfig, gpu_check

    cfg = GpuCheckConfig(
        parts=tuple(p for p in parts.split(",") if p), budget_s=budget_s, stand_in=stand_in
    )
    _emit(gpu_check(model, cfg, out), None, markdown)


@bench_app.command("fl")
def bench_fl_cmd(
    model: ModelDir,
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    sizes: Annotated[str, typer.Option(help="Users per round, comma list.")] = "10,50,100",
    local_users: Annotated[int, typer.Option(help="Users for the DP vs plain timing.")] = 20,
    json_out: JsonOut = None,
    markdown: Markdown = DOCS,
) -> None:
    """Round wall time on the simulation engine; DP-SGD vs plain local training."""
    from userlayer.tools.bench.fl import FlBenchConfig, bench_fl

    cfg = FlBenchConfig(round_sizes=_ints(sizes), local_users=local_users)
    cmd = (
        f"userlayer bench fl --model {model} --data {data} --sizes {sizes} "
        f"--local-users {local_users}"
    )
    from userlayer.tools.bench.fl import fl_steps

    with steps(console, "federated benchmark", fl_steps(cfg)) as step:
        rep = bench_fl(data, model, cfg, cmd, step)
    _emit(rep, json_out, markdown)


@bench_app.command("all")
def bench_all_cmd(
    quick: Annotated[
        bool, typer.Option(help="Smoke sizes (CI); a tiny world if no model.")
    ] = False,
    model: Annotated[Path | None, typer.Option(help="Base model directory.")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset directory.")] = None,
    only: Annotated[str, typer.Option(help="Comma list of benchmarks to run.")] = "",
    json_out: JsonOut = None,
    markdown: Annotated[
        Path | None,
        typer.Option(help="Append tables here (default: docs/benchmarks.md, none with --quick)."),
    ] = None,
) -> None:
    """Every benchmark: store, serving, adapters, api, fl (JSON of all of them with --json)."""
    from userlayer.tools.bench.suite import BENCHMARKS, bench_all

    md = markdown if markdown is not None else (None if quick else DOCS)
    names = tuple(x for x in only.split(",") if x) or BENCHMARKS
    with steps(console, "benchmarks", len(names)) as step:

        def done(r: BenchReport) -> None:
            _emit(r, None, md)
            step(r.name)

        reports = bench_all(model, data, quick, names, done)
    if json_out:
        payload = {k: json.loads(r.to_json()) for k, r in reports.items()}
        json_out.write_text(json.dumps(payload, indent=2), "utf-8")
