"""Structured logging set-up: one stream of JSON lines (or console lines for a person at a
terminal), from structlog and from the standard library alike (asyncua, Ray's driver, the
workers), to a file rotated by size or to stderr.

Logs are about transitions (link lost / recovered, alarms, health), not every poll. Our own
events (`lineinspect.*` loggers) pass from `level` up; libraries' from WARNING up.
Not here: Ray's actor processes, which log JSON into Ray's own session folder (controller/bootstrap.py).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

MAX_BYTES = 50 * 1024 * 1024
"""A log file is rotated at this size …"""
BACKUPS = 5
"""… and this many old ones are kept: at most 300 MB of logs."""


def configure(level: str = "info", *, file: Path | None = None, json: bool = True, max_bytes: int = MAX_BYTES,
              backups: int = BACKUPS) -> None:  # fmt: skip
    handler: logging.Handler
    if file is not None:
        handler = logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups,
                                                       encoding="utf-8")  # fmt: skip
    else:
        handler = logging.StreamHandler(sys.stderr)
    shared: list[structlog.types.Processor] = [
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))  # fmt: skip
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("lineinspect").setLevel(logging.getLevelName(level.upper()))
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
