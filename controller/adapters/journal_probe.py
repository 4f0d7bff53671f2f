"""`lineinspect bench-journal`: how long the verdict path waits for a durable record on this disk.

A PASS is written to the PLC only once its record is durable (fsync), so the disk's flush latency
is on every verdict's path, and its worst case must fit the line's deadline budget. It runs the
real journal (SQLite WAL, `synchronous=FULL`, images on the lazy lane, checkpoints) at the line's
part rate with frames of the line's size, in a folder on the disk to be judged, and reports the
time each record took to become durable. On a virtual disk a flush now and then takes hundreds of
milliseconds while the host writes back; that is a property of the disk, not of the controller.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from controller.adapters.journal import SqliteJournal
from controller.core.budget import percentile
from controller.core.tracking import GateCounters
from controller.ports import PartRecord


async def probe_journal(folder: Path, *, seconds: float = 60.0, rate_hz: float = 20.0,
                        frame_shape: tuple[int, int] = (256, 256),
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Record one part every 1/rate_hz s for `seconds` (at most 100,000 parts) into a fresh journal
    in `folder` (deleted afterwards); returns the durable-record latencies in ms."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, frame_shape, dtype=np.uint8)  # incompressible, like a textured surface
    latencies: list[float] = []
    parts = min(100_000, max(1, int(seconds * rate_hz)))
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the clock starts)
    with tempfile.TemporaryDirectory(dir=folder, prefix="journal-probe-") as tmp:
        async with SqliteJournal(Path(tmp) / "journal.db") as journal:
            await journal.resume_point(1, GateCounters(0, 0, 0, 0, False))
            start = time.monotonic()
            for seq in range(1, parts + 1):
                await asyncio.sleep(max(0.0, start + seq / rate_hz - time.monotonic()))
                rec = PartRecord(1, seq, "pass", "model_pass", seq * 500, seq, 0, 0.1, "probe", "probe",
                                 written_verdict="pass", image=frame)  # fmt: skip
                t = time.perf_counter()
                await journal.record(rec)
                latencies.append((time.perf_counter() - t) * 1000)
                if progress and seq % max(1, int(rate_hz * 10)) == 0:
                    progress(f"{seq}/{parts} records, worst so far {max(latencies):.1f} ms")
    return {
        "folder": str(folder), "records": len(latencies), "rate_hz": rate_hz,
        "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
        "p999_ms": percentile(latencies, 0.999), "max_ms": max(latencies), "over_50_ms": sum(x > 50 for x in latencies),
        "over_100_ms": sum(x > 100 for x in latencies),
    }  # fmt: skip
