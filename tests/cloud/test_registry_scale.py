"""100,000 registered users: lookups stay index searches and the RAM tier stays bounded.

Every user is registered through the real path (enrolled key, signed
package verified on write, encrypted at rest), with a small adapter so that
the test takes about a minute. Lookup *times* are a benchmark
(``userlayer bench adapters``); here the test checks what makes them flat:
each lookup is a primary-key search in the query plan, never a scan, and the
registry's memory holds at most ``cache_size`` adapters however many exist.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.registry import AdapterRegistry, RegistryConfig
from userlayer.sdk.adapter import seal_package
from userlayer.sdk.model import AdapterConfig, ModelConfig, adapter_shapes, new_adapter

CFG = ModelConfig(level_sizes=(8, 8), d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
ACFG = AdapterConfig(rank=1, targets=("q",), n_prefix=1, film=False, n_modes=0)
SHAPES = adapter_shapes(CFG, ACFG)
FP = "00112233aabbccdd"
USERS = 100_000
PER_ADAPTER = sum(4 * math.prod(s) for s in SHAPES.values())  # float32 bytes


def _register(reg: AdapterRegistry, start: int, n: int) -> None:
    tensors = {k: v.numpy() for k, v in new_adapter(CFG, ACFG).items()}
    for s in range(start, start + n, 1000):
        ids = [f"u{i:06d}" for i in range(s, min(s + 1000, start + n))]
        keys = [Ed25519PrivateKey.generate() for _ in ids]
        reg.enroll_many([("megamarket", u, k.public_key()) for u, k in zip(ids, keys, strict=True)])
        fields = {"base_fingerprint": FP, "adapter_config": ACFG.to_dict(), "service": "megamarket"}
        out = reg.put_many(
            [
                ("megamarket", u, seal_package({**fields, "user_id": u, "version": 1}, tensors, k))
                for u, k in zip(ids, keys, strict=True)
            ]
        )
        assert all(not isinstance(o, Exception) for o in out)


def test_hundred_thousand_users(tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "registry.db", FP, SHAPES, cfg=RegistryConfig(cache_size=256))
    _register(reg, 0, USERS)
    assert reg.count_users() == USERS
    assert reg.cached() == 256  # the RAM tier is bounded, not one entry per user
    rng = random.Random(0)
    sample = [f"u{rng.randrange(USERS):06d}" for _ in range(300)]
    for u in sample:
        got = reg.get("megamarket", u)
        assert got is not None and got.info.user_id == u
        assert got.nbytes == PER_ADAPTER
    assert reg.cached() == 256
    # every per-request query is an index search on the primary key, never a table scan
    queries = [
        "SELECT MAX(version) FROM ul_adapters WHERE service = ? AND user_id = ?",
        "SELECT info, blob FROM ul_adapters WHERE service = ? AND user_id = ? AND version = ?",
        "SELECT kek_id, dek FROM ul_users WHERE service = ? AND user_id = ?",
        "SELECT key_id, public_key FROM ul_signers WHERE service = ? AND user_id = ?",
    ]
    with reg.sql.tx() as cur:
        for q in queries:
            args = ("megamarket", "u000001", 1)[: q.count("?")]
            plan = " ".join(
                str(r[-1]) for r in cur.execute("EXPLAIN QUERY PLAN " + q, args).fetchall()
            )
            assert "SEARCH" in plan and "SCAN" not in plan, (q, plan)
