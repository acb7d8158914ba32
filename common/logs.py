"""One logging set-up, applied only by entry points."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def log_config(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger once: INFO by default, DEBUG with -v, WARNING when quiet."""
    if quiet:
        level = logging.WARNING
    elif verbose > 0:
        level = logging.DEBUG
    else:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # redis-py and asyncio are chatty at DEBUG; keep them at WARNING unless asked twice.
    if verbose < 2:
        for name in ("asyncio", "redis"):
            logging.getLogger(name).setLevel(logging.WARNING)
