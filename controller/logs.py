"""Structured logging set-up (structlog): JSON lines to a file or console lines to stderr.

Logs are about transitions (link lost / recovered, alarms, health), not every poll."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import structlog


def configure(level: str = "info", *, file: Path | None = None) -> None:
    stream: TextIO = file.open("a") if file else sys.stderr
    # Libraries (and the workers) log through the standard library: same destination, warnings up.
    logging.basicConfig(stream=stream, level=logging.WARNING, force=True)
    renderer = structlog.processors.JSONRenderer() if file else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
