"""``python -m userlayer.cloud.core --socket PATH``: the engine core (settings from USERLAYER_*)."""

from __future__ import annotations

import argparse
import logging
import os

from userlayer.cloud.components import build_engine, build_registry
from userlayer.cloud.core.server import EngineCore
from userlayer.cloud.service import Metrics, Serving
from userlayer.cloud.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Build the engine and the registry, listen on the socket, serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m userlayer.cloud.core")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s engine-core %(message)s")
    settings = Settings()  # type: ignore[call-arg]  # from the environment
    engine = build_engine(settings)
    registry = build_registry(settings, engine.fingerprint, engine.shapes)
    serving = Serving(engine, registry, Metrics(), settings.store_deadline_ms / 1000)
    core = EngineCore(serving, args.socket, settings.max_batch, parent_pid=os.getppid())
    core.install_signal_handlers()
    core.serve_forever()


if __name__ == "__main__":
    main()
