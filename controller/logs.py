"""Structured logging set-up: one stream of JSON lines (or console lines for a person at a
terminal), from structlog and from the standard library alike (asyncua, Ray's driver, the
workers), to a file rotated by size or to stderr.

Logs are about transitions (link lost / recovered, alarms, health), not every poll. Our own
events (`lineinspect.*` loggers) pass from `level` up; libraries' from WARNING up.

A log call only puts the record on a bounded queue; one thread formats and writes. On ext4 a
write that grows a file waits while the file system commits its journal, and on a virtual disk
that commit now and then waits hundreds of ms for a flush: written on the caller's thread, one log
line would freeze the controller's event loop (every part in flight) for that long. When the
writer falls `QUEUE_LINES` behind, further lines are dropped and counted (`dropped`), never waited for.
Not here: Ray's actor processes, which log JSON into Ray's own session folder (controller/bootstrap.py).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import queue
import sys
from pathlib import Path

import structlog

MAX_BYTES = 50 * 1024 * 1024
"""A log file is rotated at this size …"""
BACKUPS = 5
"""… and this many old ones are kept: at most 300 MB of logs."""
QUEUE_LINES = 10_000
"""Log records waiting for the writer thread at most; more are dropped (a disk stalled that long)."""


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record itself to the writer thread (same process: structlog's event dict stays
    intact for the formatter there) and drops it when the queue is full."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _Enqueue.dropped += 1


class _Writer(logging.handlers.QueueListener):
    """The thread that formats and writes; asked to stop behind the lines already queued."""

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        # A disk stuck for seconds at exit: give up on the rest (the thread is a daemon).
        with contextlib.suppress(queue.Full):
            self.queue.put(self._sentinel, timeout=5.0)  # type: ignore[attr-defined]
            thread.join(timeout=10.0)
        self._thread = None


_writer: _Writer | None = None


def flush() -> None:
    """Write every queued line and stop the writer thread (at exit; `configure` starts a new one)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        for h in _writer.handlers:
            h.close()
        _writer = None


atexit.register(flush)


def dropped() -> int:
    """Log lines dropped because the writer was `QUEUE_LINES` behind, since the process started."""
    return _Enqueue.dropped


def configure(level: str = "info", *, file: Path | None = None, json: bool = True, max_bytes: int = MAX_BYTES,
              backups: int = BACKUPS) -> None:  # fmt: skip
    global _writer
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
    flush()
    lines: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_LINES)
    _writer = _Writer(lines, handler, respect_handler_level=True)
    _writer.start()
    root.addHandler(_Enqueue(lines))
    root.setLevel(logging.WARNING)
    logging.getLogger("lineinspect").setLevel(logging.getLevelName(level.upper()))
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
