"""``userlayer bench all``: every benchmark, full size or as a smoke run (``--quick``).

The quick run needs nothing: without ``--model``/``--data`` it makes a tiny
three-service world in a temporary directory (synthetic users, co-occurrence
Semantic IDs, a base pretrained for a few steps) and runs each benchmark at a
size that proves it works, not a size whose figures mean anything.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from userlayer.tools.bench.adapters import AdaptersBenchConfig, bench_adapters
from userlayer.tools.bench.api import ApiBenchConfig, bench_api
from userlayer.tools.bench.fl import FlBenchConfig, bench_fl
from userlayer.tools.bench.report import BenchReport
from userlayer.tools.bench.serving import ServingBenchConfig, bench_serving
from userlayer.tools.bench.store import StoreBenchConfig, bench_store
from userlayer.tools.exceptions import ToolsError

__all__ = ["BENCHMARKS", "bench_all", "tiny_world"]

BENCHMARKS = ("store", "serving", "adapters", "api", "fl")


@contextmanager
def tiny_world() -> Iterator[tuple[Path, Path]]:
    """A throw-away dataset and base model: ``(data_dir, model_dir)``."""
    from userlayer.tools.data.synth import SynthConfig, synthesize
    from userlayer.tools.sids import SidConfig, build_semantic_ids
    from userlayer.tools.train.pretrain import PretrainConfig, pretrain

    with tempfile.TemporaryDirectory(prefix="userlayer-bench-world-") as t:
        data, model = Path(t) / "data", Path(t) / "model"
        scfg = SynthConfig(users=120, seed=0, events_per_user=40.0)
        scfg = replace(scfg, items_samokat=100, items_kuper=100, items_megamarket=100)
        synth = synthesize(scfg)
        synth.save(data)
        table, _ = build_semantic_ids(synth.dataset, SidConfig(embedding="collaborative"))
        table.save(data / "sids.json")
        small = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64}
        pretrain(data, model, PretrainConfig(epochs=1, model=small))
        yield data, model


def _quick_configs() -> dict[str, object]:
    return {
        "store": StoreBenchConfig(events=2_000, users=20, batch=200, repeats=1),
        "serving": ServingBenchConfig(batches=(1, 4), users=50, repeats=1),
        "adapters": AdaptersBenchConfig(
            users=60, samples=20, cache=20, lookup_users=(500, 1_000), lookups=100
        ),
        "api": ApiBenchConfig(
            concurrency=(1, 4),
            requests=40,
            users=60,
            overload_clients=48,
            overload_queue=4,
            overload_requests=150,
            setups=("inline", "process:2"),
        ),
        "fl": FlBenchConfig(round_sizes=(2,), local_users=2, min_events=5),
    }


def _full_configs() -> dict[str, object]:
    return {
        "store": StoreBenchConfig(),
        "serving": ServingBenchConfig(),
        "adapters": AdaptersBenchConfig(),
        "api": ApiBenchConfig(),
        "fl": FlBenchConfig(),
    }


def bench_all(
    model_dir: Path | None,
    data_dir: Path | None,
    quick: bool,
    only: tuple[str, ...] = BENCHMARKS,
    on_report: Callable[[BenchReport], None] | None = None,
) -> dict[str, BenchReport]:
    """Run the benchmarks in ``only``; ``on_report`` sees each report as it is done.

    Raises:
        ToolsError: a full run without a model and data, or an unknown benchmark.
    """
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise ToolsError(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
    if (model_dir is None or data_dir is None) and not quick:
        raise ToolsError("a full run needs --model and --data (or use --quick)")
    if model_dir is None or data_dir is None:
        with tiny_world() as (data, model):
            return _run(model, data, quick, only, on_report)
    return _run(model_dir, data_dir, quick, only, on_report)


def _run(
    model: Path,
    data: Path,
    quick: bool,
    only: tuple[str, ...],
    on_report: Callable[[BenchReport], None] | None,
) -> dict[str, BenchReport]:
    cfgs = _quick_configs() if quick else _full_configs()
    tag = " --quick" if quick else ""
    out: dict[str, BenchReport] = {}
    for name in only:
        cfg = cfgs[name]
        cmd = f"userlayer bench all{tag} --only {name} --model {model} --data {data}"
        if isinstance(cfg, StoreBenchConfig):
            rep = bench_store(cfg, cmd)
        elif isinstance(cfg, ServingBenchConfig):
            rep = bench_serving(model, cfg, cmd)
        elif isinstance(cfg, AdaptersBenchConfig):
            rep = bench_adapters(model, cfg, cmd)
        elif isinstance(cfg, ApiBenchConfig):
            rep = bench_api(model, cfg, cmd)
        else:
            assert isinstance(cfg, FlBenchConfig)
            rep = bench_fl(data, model, cfg, cmd)
        out[name] = rep
        if on_report:
            on_report(rep)
    return out
