"""What the CLI prints: its own progress and results; with ``-v`` also the libraries' logs.

At default verbosity, library warnings (deprecations, Ray's FutureWarning,
Opacus' RDP order notes) and library loggers below ERROR are silenced, in
this process and in the processes it starts (Ray workers, the engine core)
through the environment they inherit. ``userlayer``'s own warnings and
log records at WARNING and above still show.
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["LIBRARY_LOGGERS", "configure", "verbose"]

# loggers of the libraries the CLI drives, silenced below ERROR unless -v
LIBRARY_LOGGERS = (
    "flwr",
    "ray",
    "opacus",
    "httpx",
    "httpcore",
    "urllib3",
    "matplotlib",
    "sentence_transformers",
    "transformers",
    "uvicorn",
    "filelock",
)
_state = {"verbose": False}


def verbose() -> bool:
    """Whether the CLI was asked for library logs (``-v``)."""
    return _state["verbose"]


def configure(verbose: bool) -> None:
    """Set up warnings, library loggers and child processes' environment for a CLI run."""
    _state["verbose"] = verbose
    if verbose:
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"userlayer(\.|$)")
    # inherited by child processes (Ray workers, the engine core); a user's own setting wins
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
