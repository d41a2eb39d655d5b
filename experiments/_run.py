"""What the research scripts share: their common flags, a trained base and its data."""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.transformer import Recommender
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.train.examples import UserSequences


def base_parser(doc: str) -> argparse.ArgumentParser:
    """``--data --model --beam --users --json``, described by the script's first doc line."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--users", type=int, default=0, help="first N users (0: all)")
    ap.add_argument("--json", default="")
    return ap


def load_run(data: str, model_dir: str) -> tuple[Recommender, SemanticIdTable, UserSequences]:
    """The base in eval mode, its Semantic ID table, and the data's sequences under it."""
    torch.set_flush_denormal(True)
    model = load_model(model_dir).eval()
    table = SemanticIdTable.load(f"{model_dir}/sids.json")
    seqs = UserSequences.from_dataset(Dataset.load(data), table, model.cfg.geo_buckets)
    return model, table, seqs


def training_counts(seqs: UserSequences) -> Counter[str]:
    """Each item's events in the training part (every user's events but the last two)."""
    return Counter(i for items in seqs.items for i in items[: len(items) - 2])
