"""An edge node joining federated rounds on Flower's Deployment Engine (run on the node's machine).

The node's directory holds the users' encrypted store, their ledgers and keys, and the base
model; `userlayer.tools.fl.prepare_workdir` makes one from an event dataset. This starts a
SuperNode for two users against a SuperLink at $SUPERLINK (TLS in production: see the README,
"Across machines"); the server side submits the rounds with `flwr run`.
"""

from __future__ import annotations

import os
import subprocess
import sys

workdir = os.environ.get("USERLAYER_NODE_DIR", "artifacts/demo/fl")
users = os.environ.get("USERLAYER_NODE_USERS", "u000001,u000002")
superlink = os.environ.get("SUPERLINK", "127.0.0.1:9093")
env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
cmd = [
    "flower-supernode",
    "--insecure",  # replace with --root-certificates ca.crt and node keys in production
    "--superlink",
    superlink,
    "--node-config",
    f"workdir='{workdir}' users='{users}'",
]
print(" ".join(cmd))
sys.exit(subprocess.call(cmd, env=env))  # noqa: S603
