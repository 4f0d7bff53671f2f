"""`lineinspect bench-journal` runs the real journal on the given disk and leaves nothing behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.adapters.journal_probe import probe_journal


def test_reports_durable_record_latency_and_removes_its_journal(tmp_path: Path) -> None:
    result = asyncio.run(probe_journal(tmp_path, seconds=1.0, rate_hz=20.0, frame_shape=(64, 64)))
    assert result["records"] == 20
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["over_100_ms"] <= result["over_50_ms"] <= 20
    assert list(tmp_path.iterdir()) == []
