"""Edge time of the profile encoder's release (research script, not the product).

For the first ``--users`` users of a dataset: the release over the whole
history and over the first 5 events only (a new user), each including the
ledger's reservation on SQLite, one torch thread, with the favourites (the
default; ``--favourites 0`` for the prefix only). Used for
docs/personalization.md::

    python experiments/profile_release_time.py --data synth --model p_synth --users 50
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
from pathlib import Path

import torch

from userlayer.edge.encoder import release_profile
from userlayer.edge.privacy import PrivacyLedger
from userlayer.sdk.model import AdapterConfig, load_model
from userlayer.sdk.privacy.favourites import FavouritesConfig
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset


def main() -> None:
    """Print median and max release times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--favourites", type=int, default=10, help="0: the prefix only")
    args = ap.parse_args()
    favs = FavouritesConfig(k=args.favourites) if args.favourites else None
    torch.set_num_threads(1)
    model = load_model(args.model).eval()
    table = SemanticIdTable.load(Path(args.model) / "sids.json")
    by_user = Dataset.load(args.data).user_events()
    users = sorted(by_user)[: args.users]
    acfg = AdapterConfig()
    full, cold, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        led = PrivacyLedger(Path(tmp) / "ledger.db", secrets.token_bytes(32), budget=1e6)
        for u in users:
            ev = by_user[u]
            r = release_profile(
                model, acfg, table, ev, args.epsilon, led, u, now=ev[-1].timestamp, favourites=favs
            )
            full.append(r.seconds)
            sizes.append(r.events)
            r = release_profile(
                model,
                acfg,
                table,
                ev[:5],
                args.epsilon,
                led,
                u,
                now=ev[min(4, len(ev) - 1)].timestamp,
                favourites=favs,
            )
            cold.append(r.seconds)
        led.close()
    median, most = statistics.median(sizes), max(sizes)
    print(f"{len(users)} users, events per release median {median}, max {most}")
    for name, t in (("whole history", full), ("first 5 events", cold)):
        print(f"{name}: median {1000 * statistics.median(t):.2f} ms, max {1000 * max(t):.2f} ms")


if __name__ == "__main__":
    main()
