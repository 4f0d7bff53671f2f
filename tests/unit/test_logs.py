"""Logging never waits for the disk: a log call from the event loop returns while the file write
is stuck (an ext4 journal commit on a slow virtual disk), and the line still lands afterwards."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import structlog

from controller import logs


def test_a_log_call_returns_while_the_log_file_is_stuck_and_the_line_lands_later(tmp_path: Path) -> None:
    path = tmp_path / "controller.log"
    logs.configure("info", file=path)
    assert logs._writer is not None
    (handler,) = logs._writer.handlers
    stuck, released = threading.Event(), threading.Event()
    real_emit = handler.emit

    def emit_on_a_stalled_disk(record: logging.LogRecord) -> None:
        stuck.set()
        released.wait(5.0)
        real_emit(record)

    handler.emit = emit_on_a_stalled_disk  # type: ignore[method-assign]
    try:
        log = structlog.get_logger("lineinspect.test")
        t0 = time.perf_counter()
        log.warning("plc_link_lost", error="timed out")
        log.info("part_done", seq=7)
        spent = time.perf_counter() - t0
        assert stuck.wait(2.0)  # the writer thread is inside the stuck write …
        assert spent < 0.1, f"the log call waited {spent * 1e3:.0f} ms for the disk"  # … the caller is not
    finally:
        released.set()
        logs.flush()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [("plc_link_lost", "warning"), ("part_done", "info")]
    assert lines[0]["error"] == "timed out" and lines[1]["seq"] == 7 and lines[0]["logger"] == "lineinspect.test"


def test_a_writer_far_behind_drops_lines_and_counts_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logs, "QUEUE_LINES", 5)
    logs.configure("info", file=tmp_path / "c.log")
    assert logs._writer is not None
    (handler,) = logs._writer.handlers
    released = threading.Event()
    real_emit = handler.emit
    handler.emit = lambda record: (released.wait(5.0), real_emit(record))  # type: ignore[method-assign]
    before = logs.dropped()
    try:
        log = structlog.get_logger("lineinspect.test")
        for i in range(20):
            log.warning("flood", i=i)
        assert logs.dropped() - before >= 20 - 5 - 1  # the queue's 5, and one the writer holds
    finally:
        released.set()
        logs.flush()
